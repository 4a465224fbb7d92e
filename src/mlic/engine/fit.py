"""``fit``: the one orchestrator. Reads data, builds the model, runs the epochs, writes the run folder.

Run folder layout (``runs/<name>/``)::

    config.yaml        the resolved config
    metrics.csv        one row per epoch
    history.png        loss and metric curves
    checkpoints/best/  chosen by validation mAP
    checkpoints/last/
    test_metrics.json  when a test set is given
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mlic.checkpoint import save_checkpoint
from mlic.config import ConfigError, ThresholdConfig, TrainConfig, save_config, to_dict
from mlic.data.dataset import MultiLabelDataset
from mlic.data.labels import build_vocabulary
from mlic.data.loader import build_loader, load_records, unknown_labels
from mlic.data.mixing import Mixer
from mlic.data.records import DataError
from mlic.data.scan import format_bad_images, scan_images
from mlic.data.splits import holdout_split
from mlic.data.transforms import Preprocessing, build_eval_transform, build_train_transform
from mlic.engine.ema import ModelEma
from mlic.engine.loop import StepOptions, evaluate, train_one_epoch
from mlic.engine.optim import build_optimizer, build_scheduler
from mlic.engine.precision import resolve_precision
from mlic.engine.runtime import seed_everything, select_device
from mlic.losses import auto_pos_weight, build_loss
from mlic.metrics import compute_metrics
from mlic.models import build_model
from mlic.thresholds import tune_thresholds

METRIC_COLUMNS = [
    "epoch", "train_loss", "val_loss", "val_mAP", "val_f1_micro", "val_f1_macro", "val_f1_samples",
    "val_hamming_loss", "val_exact_match", "val_mAP_ema", "lr", "seconds", "train_images_per_second",
]  # fmt: skip


@dataclass
class RunResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    history: list[dict[str, Any]]
    test_metrics: dict[str, Any] | None = None
    class_names: list[str] = field(default_factory=list)


def log(message: str) -> None:
    """Print without breaking an active progress bar."""
    tqdm.write(message)


def make_run_dir(output_dir: str, name: str | None, overwrite: bool) -> Path:
    name = name or datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(output_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"run folder {run_dir} already exists; choose another --name or pass --overwrite")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _load_data(cfg: TrainConfig):
    d = cfg.data
    read = dict(fmt=d.format, image_root=d.image_root, label_delimiter=d.label_delimiter)
    train_records = load_records(d.train, **read)
    if d.val:
        val_records = load_records(d.val, **read)
    elif d.val_fraction > 0:
        train_records, val_records = holdout_split(train_records, d.val_fraction, seed=cfg.seed)
        log(f"no validation file: holding out {len(val_records)} of {len(train_records) + len(val_records)} images")
    else:
        val_records = []
    test_records = load_records(d.test, **read) if d.test else []
    class_names = build_vocabulary(train_records)
    if not class_names:
        raise DataError(f"{d.train}: no labels found in the training data")
    for split, records in (("validation", val_records), ("test", test_records)):
        if unknown := unknown_labels(records, class_names):
            log(f"warning: {split} labels not in the training data (ignored): {', '.join(unknown)}")
    train_records, val_records, test_records = (
        _drop_bad_images(r, d.skip_bad_images, cfg.progress) for r in (train_records, val_records, test_records)
    )
    return train_records, val_records, test_records, class_names


def _drop_bad_images(records: list, skip: bool, progress: bool) -> list:
    """Fast header scan before training: a bad file stops the run (naming it) unless the user chose to skip."""
    bad = scan_images(records, progress=progress)
    if not bad:
        return records
    if not skip:
        raise DataError(format_bad_images(bad) + "\nfix or remove them, or pass --skip-bad-images to leave them out")
    log(format_bad_images(bad) + "\nleaving them out (--skip-bad-images)")
    bad_paths = {b.path for b in bad}
    return [r for r in records if str(r.path) not in bad_paths]


def _model_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """Constructor arguments, stored in checkpoints so the model can be rebuilt (plain JSON values)."""
    kwargs: dict[str, Any] = {"drop_rate": cfg.model.drop_rate}
    if cfg.model.name == "seed_cnn":
        kwargs |= {"widths": list(cfg.model.widths), "hidden": cfg.model.hidden}
    return kwargs


def _checkpoint_meta(
    cfg: TrainConfig, class_names, pre: Preprocessing, epoch: int, val: dict | None, tcfg: ThresholdConfig
) -> dict[str, Any]:
    """Checkpoint metadata; thresholds are tuned on this epoch's validation predictions (None: 0.5 everywhere)."""
    thresholds, info = None, None
    if val is not None and len(val["preds"].probs):
        p = val["preds"]
        tuned = tune_thresholds(
            p.probs, p.targets, p.masks, method=tcfg.method, min_positives=tcfg.min_positives, fixed=tcfg.fixed
        )
        thresholds, info = [float(x) for x in tuned.thresholds], tuned.to_dict()
    return {
        "model": {"name": cfg.model.name, "kwargs": _model_kwargs(cfg)},
        "class_names": list(class_names),
        "thresholds": thresholds,
        "threshold_info": info,
        "preprocessing": pre.to_dict(),
        "epoch": epoch,
        "metrics": _scalar_metrics(val["metrics"]) if val else {},
        "config": to_dict(cfg),
        "created": datetime.now().isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
    }


@dataclass
class Trainer:
    """Everything ``fit`` builds once and the epoch loop uses."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: torch.nn.Module
    opts: StepOptions
    ema: ModelEma | None
    mixer: Callable | None


def _build_trainer(
    cfg: TrainConfig, num_classes: int, train_ds: MultiLabelDataset, steps_per_epoch: int, device: torch.device
) -> Trainer:
    o = cfg.optim
    try:
        model = build_model(cfg.model.name, num_classes, **_model_kwargs(cfg))
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"--model {cfg.model.name}: {exc}") from None
    if cfg.model.pretrained:
        from mlic.models.pretrained import load_pretrained

        try:
            log(f"pretrained weights: {load_pretrained(model, cfg.model.pretrained).summary()}")
        except ValueError as exc:
            raise ConfigError(f"--pretrained: {exc}") from None
    precision = resolve_precision(cfg.runtime.precision, device)
    channels_last = cfg.runtime.channels_last and device.type in ("cpu", "cuda")
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = build_optimizer(model, o.optimizer, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum)
    optim_steps = math.ceil(steps_per_epoch / o.accum_steps)
    scheduler = build_scheduler(
        optimizer, o.schedule, total_steps=optim_steps * o.epochs, warmup_steps=round(o.warmup_epochs * optim_steps)
    )
    pos_weight = None
    if o.pos_weight == "auto":
        pos_weight = auto_pos_weight(train_ds.targets, train_ds.masks).to(device)
    loss_fn = build_loss(
        o.loss,
        pos_weight=pos_weight,
        gamma=o.focal_gamma,
        gamma_pos=o.asl_gamma_pos,
        gamma_neg=o.asl_gamma_neg,
        clip=o.asl_clip,
    )
    scaler = torch.amp.GradScaler(device.type) if precision.use_scaler else None
    opts = StepOptions(precision, channels_last, o.accum_steps, o.clip_grad, scaler=scaler)
    mixer = None
    if o.mixup_alpha > 0 or o.cutmix_alpha > 0:
        mixer = Mixer(
            mixup_alpha=o.mixup_alpha,
            cutmix_alpha=o.cutmix_alpha,
            prob=o.mix_prob,
            generator=torch.Generator(device="cpu").manual_seed(cfg.seed),
        )
    ema = ModelEma(model, o.ema_decay) if o.ema else None  # copied before compiling: the copy stays eager
    if cfg.runtime.compile:
        # Off by default: on CPU, inductor measured slower than eager for training (issue 5's table).
        model = torch.compile(model)
    log(
        f"precision {precision.name}, channels_last {channels_last}, optimizer {o.optimizer}, schedule {o.schedule}, "
        f"loss {o.loss}" + (", EMA" if ema else "") + (", MixUp/CutMix" if mixer else "")
    )
    return Trainer(model, optimizer, scheduler, loss_fn, opts, ema, mixer)


def fit(cfg: TrainConfig, *, overwrite: bool = False) -> RunResult:
    """Train per ``cfg`` and return where everything was written."""
    cfg.validate()
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    run_dir = make_run_dir(cfg.output_dir, cfg.name, overwrite)
    save_config(cfg, run_dir / "config.yaml")

    train_records, val_records, test_records, class_names = _load_data(cfg)
    pre = Preprocessing(image_size=cfg.data.image_size)
    bs, workers = cfg.optim.batch_size, cfg.data.num_workers
    train_ds = MultiLabelDataset(train_records, class_names, build_train_transform(pre, cfg.data.augment))
    train_loader = build_loader(train_ds, batch_size=bs, shuffle=True, num_workers=workers, seed=cfg.seed)
    val_loader = None
    if val_records:
        val_ds = MultiLabelDataset(val_records, class_names, build_eval_transform(pre))
        val_loader = build_loader(val_ds, batch_size=bs, shuffle=False, num_workers=workers)
    log(f"run folder: {run_dir}")
    log(
        f"data: {len(train_records)} train, {len(val_records)} val, {len(test_records)} test images; "
        f"{len(class_names)} classes; device {device}"
    )

    t = _build_trainer(cfg, len(class_names), train_ds, len(train_loader), device)
    max_steps = 1 if cfg.dry_run else None
    epochs = 1 if cfg.dry_run else cfg.optim.epochs
    history: list[dict[str, Any]] = []
    best = {"score": -float("inf"), "epoch": 0, "weights": "raw"}
    ckpt_dir = run_dir / "checkpoints"
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        _set_freeze(t.model, cfg.model.freeze_backbone_epochs, epoch)
        stats = train_one_epoch(
            t.model,
            train_loader,
            t.loss_fn,
            t.optimizer,
            device,
            epoch=epoch,
            opts=t.opts,
            scheduler=t.scheduler,
            ema=t.ema,
            mixer=t.mixer,
            max_steps=max_steps,
            progress=cfg.progress,
        )
        _report_bad(stats.bad_images)
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "lr": t.optimizer.param_groups[0]["lr"],
            "train_images_per_second": stats.images_per_second,
        }
        candidates = {"raw": t.model} | ({"ema": t.ema.module} if t.ema else {})
        scored = {}
        for tag, net in candidates.items():
            scored[tag] = _validate(net, val_loader, t, device, class_names, cfg, max_steps) if val_loader else None
        raw = scored["raw"]
        if raw is not None:
            row |= {"val_loss": raw["loss"]} | {f"val_{k}": raw["metrics"][k] for k in VAL_KEYS}
        if scored.get("ema") is not None:
            row["val_mAP_ema"] = scored["ema"]["metrics"]["mAP"]
        row["seconds"] = time.perf_counter() - epoch_start
        history.append(row)
        _append_metrics_row(run_dir / "metrics.csv", row)
        log(_summary_line(row, epochs))

        # Best by validation mAP over the raw and EMA weights; with no validation the latest epoch wins.
        tag, net, result = _pick(candidates, scored)
        score = float(epoch) if result is None or result["metrics"]["mAP"] is None else result["metrics"]["mAP"]
        meta = _checkpoint_meta(cfg, class_names, pre, epoch, result, cfg.thresholds) | {"weights": tag}
        save_checkpoint(ckpt_dir / "last", net, meta)
        if score > best["score"]:
            best = {"score": score, "epoch": epoch, "weights": tag}
            save_checkpoint(ckpt_dir / "best", net, meta | {"best_by": "val_mAP"})
        elif cfg.optim.early_stopping and epoch - best["epoch"] >= cfg.optim.early_stopping:
            log(f"early stopping: no better val mAP for {cfg.optim.early_stopping} epochs")
            break

    _plot_history(history, run_dir / "history.png")
    result = RunResult(run_dir, ckpt_dir / "best", ckpt_dir / "last", best["epoch"], history, class_names=class_names)
    if val_loader:
        log(f"best epoch {best['epoch']} (val mAP {best['score']:.4f}, {best['weights']} weights)")
    else:
        log(f"no validation set: kept the last epoch ({best['epoch']})")
    if test_records:
        result.test_metrics = _test(result.best_checkpoint, test_records, cfg, device, run_dir)
    return result


VAL_KEYS = ("mAP", "f1_micro", "f1_macro", "f1_samples", "hamming_loss", "exact_match")


def _validate(net, loader, t: Trainer, device, class_names, cfg: TrainConfig, max_steps) -> dict[str, Any]:
    preds = evaluate(
        net,
        loader,
        device,
        t.loss_fn,
        max_steps=max_steps,
        progress=cfg.progress,
        desc="val",
        precision=t.opts.precision,
        channels_last=t.opts.channels_last,
    )
    return {
        "loss": preds.loss,
        "preds": preds,
        "metrics": compute_metrics(preds.probs, preds.targets, preds.masks, 0.5, class_names),
    }


def _pick(candidates: dict, scored: dict) -> tuple[str, torch.nn.Module, dict | None]:
    """The candidate (raw or EMA weights) with the higher validation mAP; raw on ties or without validation."""
    tag = "raw"
    ema = scored.get("ema")
    if ema is not None and (ema["metrics"]["mAP"] or -1) > (scored["raw"]["metrics"]["mAP"] or -1):
        tag = "ema"
    return tag, candidates[tag], scored[tag]


def _set_freeze(model: torch.nn.Module, freeze_epochs: int, epoch: int) -> None:
    if freeze_epochs <= 0 or epoch not in (1, freeze_epochs + 1):
        return
    from mlic.models.pretrained import set_backbone_trainable

    set_backbone_trainable(model, epoch > freeze_epochs)
    log("backbone frozen: training the head only" if epoch == 1 else "backbone unfrozen")


def _test(checkpoint: Path, records, cfg: TrainConfig, device: torch.device, run_dir: Path) -> dict[str, Any]:
    from mlic.evaluation import evaluate_checkpoint

    report = evaluate_checkpoint(
        checkpoint,
        records,
        batch_size=cfg.optim.batch_size,
        device=device,
        num_workers=cfg.data.num_workers,
        progress=cfg.progress,
    )
    (run_dir / "test_metrics.json").write_text(json.dumps(report, indent=2))
    return report


def _report_bad(bad: list[tuple[str, str]], limit: int = 5) -> None:
    for path, reason in bad[:limit]:
        log(f"warning: skipped unreadable image {path}: {reason}")
    if len(bad) > limit:
        log(f"warning: ... and {len(bad) - limit} more unreadable images skipped")


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) or v is None}


def _summary_line(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"train_loss {row['train_loss']:.4f}"]
    for key in ("val_loss", "val_mAP", "val_f1_micro", "val_f1_macro", "val_exact_match"):
        if row.get(key) is not None:
            parts.append(f"{key} {row[key]:.4f}")
    parts.append(f"{row['train_images_per_second']:.1f} img/s")
    parts.append(f"{row['seconds']:.1f}s")
    return " | ".join(parts)


def _append_metrics_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in METRIC_COLUMNS})


def _plot_history(history: list[dict[str, Any]], path: Path) -> None:
    from mlic.plots import plot_history

    plot_history(history, path)

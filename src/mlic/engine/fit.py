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
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mlic.checkpoint import save_checkpoint
from mlic.config import TrainConfig, save_config, to_dict
from mlic.data.dataset import MultiLabelDataset
from mlic.data.labels import build_vocabulary
from mlic.data.loader import build_loader, load_records
from mlic.data.splits import holdout_split
from mlic.data.transforms import Preprocessing, build_eval_transform, build_train_transform
from mlic.engine.loop import evaluate, train_one_epoch
from mlic.engine.runtime import seed_everything, select_device
from mlic.losses import build_loss
from mlic.metrics import compute_metrics
from mlic.models import build_model

METRIC_COLUMNS = [
    "epoch", "train_loss", "val_loss", "val_mAP", "val_f1_micro", "val_f1_macro", "val_f1_samples",
    "val_hamming_loss", "val_exact_match", "lr", "seconds", "train_images_per_second",
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
        raise ValueError(f"{d.train}: no labels found in the training data")
    return train_records, val_records, test_records, class_names


def _model_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"drop_rate": cfg.model.drop_rate}
    if cfg.model.name == "seed_cnn":
        kwargs |= {"widths": list(cfg.model.widths), "hidden": cfg.model.hidden}
    return kwargs


def _checkpoint_meta(cfg: TrainConfig, class_names, pre: Preprocessing, epoch: int, metrics: dict) -> dict[str, Any]:
    return {
        "model": {"name": cfg.model.name, "kwargs": _model_kwargs(cfg)},
        "class_names": list(class_names),
        "thresholds": None,  # None: 0.5 for every class
        "preprocessing": pre.to_dict(),
        "epoch": epoch,
        "metrics": metrics,
        "config": to_dict(cfg),
        "created": datetime.now().isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
    }


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
    eval_tf = build_eval_transform(pre)
    val_loader = None
    if val_records:
        val_loader = build_loader(
            MultiLabelDataset(val_records, class_names, eval_tf), batch_size=bs, shuffle=False, num_workers=workers
        )
    log(f"run folder: {run_dir}")
    log(
        f"data: {len(train_records)} train, {len(val_records)} val, {len(test_records)} test images; "
        f"{len(class_names)} classes; device {device}"
    )

    model = build_model(cfg.model.name, len(class_names), **_model_kwargs(cfg)).to(device)
    loss_fn = build_loss(cfg.optim.loss)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)

    max_steps = 1 if cfg.dry_run else None
    epochs = 1 if cfg.dry_run else cfg.optim.epochs
    history: list[dict[str, Any]] = []
    best_score, best_epoch = -float("inf"), 0
    ckpt_dir = run_dir / "checkpoints"
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        stats = train_one_epoch(
            model, train_loader, loss_fn, optimizer, device, epoch=epoch, max_steps=max_steps, progress=cfg.progress
        )
        _report_bad(stats.bad_images)
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "lr": optimizer.param_groups[0]["lr"],
            "train_images_per_second": stats.images_per_second,
        }
        val_metrics: dict[str, Any] = {}
        if val_loader is not None:
            preds = evaluate(model, val_loader, device, loss_fn, max_steps=max_steps, progress=cfg.progress, desc="val")
            val_metrics = compute_metrics(preds.probs, preds.targets, preds.masks, 0.5, class_names)
            row |= {"val_loss": preds.loss} | {
                f"val_{k}": val_metrics[k]
                for k in ("mAP", "f1_micro", "f1_macro", "f1_samples", "hamming_loss", "exact_match")
            }
        row["seconds"] = time.perf_counter() - epoch_start
        history.append(row)
        _append_metrics_row(run_dir / "metrics.csv", row)
        log(_summary_line(row, epochs))

        # Best by validation mAP; with no validation set (or no positives in it) the latest epoch wins.
        score = row.get("val_mAP")
        score = float(epoch) if score is None else score
        meta = _checkpoint_meta(cfg, class_names, pre, epoch, _scalar_metrics(val_metrics))
        save_checkpoint(ckpt_dir / "last", model, meta)
        if score > best_score:
            best_score, best_epoch = score, epoch
            save_checkpoint(ckpt_dir / "best", model, meta | {"best_by": "val_mAP"})

    _plot_history(history, run_dir / "history.png")
    result = RunResult(run_dir, ckpt_dir / "best", ckpt_dir / "last", best_epoch, history, class_names=class_names)
    log(f"best epoch {best_epoch} (val mAP {best_score:.4f})" if val_loader else f"kept last epoch {best_epoch}")
    if test_records:
        result.test_metrics = _test(result.best_checkpoint, test_records, cfg, device, run_dir)
    return result


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

"""``fit``: the one orchestrator. Reads data, builds the trainer, runs the epochs, writes the run folder.

Run folder layout (``runs/<name>/``)::

    config.yaml        the resolved config
    metrics.csv        one row per epoch
    history.png        loss and metric curves
    checkpoints/best/  chosen by validation mAP (raw or EMA weights, whichever scored better)
    checkpoints/last/  the latest resume point: raw weights, EMA, optimizer/RNG state, progress
    predictions/       validation (and test) predictions, for reports
    test_metrics.json  when a test set is given

Under torchrun every rank runs this same code; only rank 0 writes files and prints.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlic.checkpoint import read_meta, save_checkpoint
from mlic.config import TrainConfig
from mlic.engine.budget import (
    BUDGET_WARMUP_STEPS,
    epoch_estimate,
    fit_to_budget,
    probe_span_end,
    refit_to_budget,
    replan_schedule,
)  # fmt: skip
from mlic.engine.console import log, set_main_process
from mlic.engine.data_setup import RunData, prepare_data
from mlic.engine.distributed import (
    DistInfo,
    any_rank,
    barrier,
    gather_rows,
    init_distributed,
    shutdown_distributed,
    sync_buffers,
)  # fmt: skip
from mlic.engine.loop import Predictions, Span, evaluate, train_one_epoch
from mlic.engine.resume import Progress, resolve_run_dir, restore
from mlic.engine.run_folder import (
    checkpoint_meta,
    plot_history_png,
    summary_line,
    write_metrics_csv,
)  # fmt: skip
from mlic.engine.runtime import configure_allocator, seed_everything, select_device
from mlic.engine.trainer import (
    Trainer,
    build_trainer,
    set_freeze,
    trainer_state,
)
from mlic.metrics import compute_metrics

VAL_KEYS = ("mAP", "f1_micro", "f1_macro", "f1_samples", "hamming_loss", "exact_match")


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT: the current step finished, a checkpoint was written; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class RunResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    history: list[dict[str, Any]]
    test_metrics: dict[str, Any] | None = None
    class_names: list[str] = field(default_factory=list)
    model: torch.nn.Module | None = None  # the trained (raw, last-epoch) model, in memory


def fit(cfg: TrainConfig, *, overwrite: bool = False, resume: str | None = None) -> RunResult:
    """Train per ``cfg`` and return where everything was written.

    ``resume``: a run folder, or ``"auto"`` for this config's own run folder, to continue from its last
    complete checkpoint.
    """
    cfg.validate()
    configure_allocator()
    info, device = init_distributed(select_device(cfg.device))
    set_main_process(info.is_main)
    try:
        return _fit(cfg, info, device, overwrite, resume)
    finally:
        shutdown_distributed()


def _fit(cfg: TrainConfig, info: DistInfo, device: torch.device, overwrite: bool, resume: str | None) -> RunResult:
    if cfg.runtime.deterministic:
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.seed)
    run_dir = resolve_run_dir(cfg, overwrite, resume, info)
    log(f"run folder: {run_dir} (device {device})")
    data = prepare_data(cfg, info, pin_memory=device.type == "cuda")  # pinned: non-blocking copies
    steps_per_epoch = len(data.train_loader)
    t = build_trainer(cfg, len(data.class_names), data.train_ds, steps_per_epoch, device, info)
    progress = Progress(epochs=1 if cfg.dry_run else cfg.optim.epochs)
    if resume:
        progress = restore(run_dir / "checkpoints" / "last", cfg, data, t)
        if cfg.max_minutes > 0 and progress.epochs != cfg.optim.epochs:
            # a budget's plan: a cosine schedule's length lives in a closure, not in the saved state
            done = progress.epoch * steps_per_epoch + progress.step
            replan_schedule(t, cfg, steps_per_epoch, progress.epochs, done)
    stop = _StopFlag()
    tb = None
    if cfg.tensorboard and info.is_main:
        from mlic.tensorboard_log import TensorboardWriter

        tb = TensorboardWriter(run_dir / "tensorboard")
    try:
        with stop.installed():
            _train(cfg, info, device, run_dir, data, t, progress, steps_per_epoch, stop, tb)
    finally:
        if tb is not None:
            tb.close()
    result = _finish(cfg, info, device, run_dir, data, progress)
    result.model = t.raw
    return result


def _train(
    cfg, info, device, run_dir, data: RunData, t: Trainer, p: Progress, steps_per_epoch: int, stop, tb=None
) -> None:
    train_start, first_epoch = time.perf_counter(), p.epoch
    while p.epoch < p.epochs:
        epoch = p.epoch + 1
        set_freeze(t.raw, cfg.model.freeze_backbone_epochs, epoch)
        data.train_sampler.set_position(epoch, p.step * cfg.optim.batch_size)
        total = 1 if cfg.dry_run else steps_per_epoch
        end = total if not cfg.checkpoint_every else min(total, p.step + cfg.checkpoint_every)
        # a budgeted run first times a few steps, to fit the epochs and the schedule to the budget
        probe_end = probe_span_end(cfg.max_minutes, p.epoch, p.step, total) if not p.probed else None
        if probe_end is not None:
            end = probe_end
        stats = train_one_epoch(
            t.model, data.train_loader, t.loss_fn, t.optimizer, device, epoch=epoch, opts=t.opts,
            scheduler=t.scheduler, ema=t.ema, mixer=t.mixer, span=Span(p.step, end, total),
            should_stop=lambda: any_rank(stop.signum is not None, info), progress=cfg.progress,
        )  # fmt: skip
        _report_bad(stats.bad_images)
        p.step, p.loss_sum, p.images = stats.next_step, p.loss_sum + stats.loss_sum, p.images + stats.images
        p.seconds += stats.seconds
        if probe_end is not None:
            if p.step > BUDGET_WARMUP_STEPS:  # the timed probe steps are done
                val_steps = len(data.val_loader) if data.val_loader is not None else 0
                estimate = epoch_estimate(stats.seconds, stats.next_step, total, val_steps, ema=t.ema is not None)
                p.epochs = fit_to_budget(t, cfg, total, p.epochs, estimate, stats.next_step)
                p.probed = True
            continue
        if stats.next_step < total:  # a step checkpoint, or a signal: save the resume point
            _save_last(cfg, run_dir, data, t, p, info, val=None)
            if stats.stopped:
                _raise_interrupted(stop, run_dir, p)
            continue
        row = _end_epoch(cfg, info, device, run_dir, data, t, p, epoch)
        if tb is not None:
            tb.log_epoch(row)
        if cfg.max_minutes > 0 and p.epoch < p.epochs:
            elapsed = time.perf_counter() - train_start
            p.epochs = refit_to_budget(t, cfg, steps_per_epoch, p.epoch, p.epochs, elapsed, p.epoch - first_epoch)
            if p.epoch >= p.epochs:
                break
        if stop.signum is not None:
            _raise_interrupted(stop, run_dir, p)
        if cfg.optim.early_stopping and epoch - p.best["epoch"] >= cfg.optim.early_stopping:
            log(f"early stopping: no better val mAP for {cfg.optim.early_stopping} epochs (last: {row.get('val_mAP')})")
            break


def _end_epoch(cfg, info, device, run_dir, data: RunData, t: Trainer, p: Progress, epoch: int) -> dict[str, Any]:
    """Validate raw (and EMA) weights, log the epoch, write metrics and checkpoints."""
    for net in (t.raw, t.ema.module if t.ema else None):
        if net is not None:
            sync_buffers(net, info)
    row: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": p.loss_sum / max(p.images, 1),
        "lr": t.optimizer.param_groups[0]["lr"],
        "train_images_per_second": p.images / p.seconds,
    }
    candidates = {"raw": t.raw} | ({"ema": t.ema.module} if t.ema else {})
    scored = {tag: _validate(net, data, t, device, cfg, info) for tag, net in candidates.items()}
    if scored["raw"] is not None:
        row |= {"val_loss": scored["raw"]["loss"]} | {f"val_{k}": scored["raw"]["metrics"][k] for k in VAL_KEYS}
    if scored.get("ema") is not None:
        row["val_mAP_ema"] = scored["ema"]["metrics"]["mAP"]
    row["seconds"] = p.seconds  # training time of the epoch (validation excluded), summed over resumes
    p.epoch, p.step, p.loss_sum, p.images, p.seconds = epoch, 0, 0.0, 0, 0.0
    p.history.append(row)
    log(summary_line(row, p.epochs))

    # Best by validation mAP over the raw and EMA weights; with no validation the latest epoch wins.
    tag = _pick(scored)
    chosen = scored[tag]
    score = float(epoch) if chosen is None or chosen["metrics"]["mAP"] is None else chosen["metrics"]["mAP"]
    is_best = p.best["score"] is None or score > p.best["score"]
    if is_best:
        p.best = {"score": score, "epoch": epoch, "weights": tag}
    if info.is_main:
        write_metrics_csv(run_dir / "metrics.csv", p.history)
        if is_best:
            meta = checkpoint_meta(cfg, data.class_names, data.preprocessing, epoch, chosen, cfg.thresholds)
            save_checkpoint(
                run_dir / "checkpoints" / "best", candidates[tag], meta | {"weights": tag, "best_by": "val_mAP"}
            )
            if chosen is not None:
                _save_predictions(
                    run_dir / "predictions" / "val.npz",
                    chosen["preds"],
                    data.val_records,
                    data.class_names,
                    meta["thresholds"],
                )
    _save_last(cfg, run_dir, data, t, p, info, val=scored["raw"])
    return row


def _validate(net, data: RunData, t: Trainer, device, cfg: TrainConfig, info: DistInfo) -> dict[str, Any] | None:
    if data.val_loader is None:
        return None
    preds = evaluate(
        net,
        data.val_loader,
        device,
        t.loss_fn,
        max_steps=1 if cfg.dry_run else None,
        progress=cfg.progress,
        desc="val",
        precision=t.opts.precision,
        channels_last=t.opts.channels_last,
        pre=data.preprocessing,
    )
    if info.enabled:  # every rank evaluated its shard: gather, order by index, drop the padding duplicates
        losses = np.full(len(preds.indices), preds.loss, np.float64)
        idx, probs, targets, masks, losses = gather_rows(
            info, preds.indices, preds.probs, preds.targets, preds.masks, losses
        )
        preds = Predictions(probs, targets, masks, idx, float(losses.mean()) if len(losses) else 0.0, preds.bad_images)
    metrics = compute_metrics(preds.probs, preds.targets, preds.masks, 0.5, data.class_names)
    return {"loss": preds.loss, "preds": preds, "metrics": metrics}


def _pick(scored: dict) -> str:
    """Raw or EMA weights, whichever had the higher validation mAP; raw on ties or without validation."""
    ema, raw = scored.get("ema"), scored["raw"]
    if ema is not None and (ema["metrics"]["mAP"] or -1) > (raw["metrics"]["mAP"] or -1):
        return "ema"
    return "raw"


def _save_last(cfg, run_dir: Path, data: RunData, t: Trainer, p: Progress, info: DistInfo, val) -> None:
    """The resume point: raw weights, EMA, optimizer/schedule/RNG state, progress. Rank 0 writes it."""
    barrier(info)
    if info.is_main:
        meta = checkpoint_meta(cfg, data.class_names, data.preprocessing, p.epoch, val, cfg.thresholds)
        if val is None and (old := _read_meta_or_none(run_dir / "checkpoints" / "last")):
            meta["thresholds"], meta["threshold_info"] = old.get("thresholds"), old.get("threshold_info")
        save_checkpoint(
            run_dir / "checkpoints" / "last",
            t.raw,
            meta | {"weights": "raw", "progress": asdict(p)},
            train_state=trainer_state(t),
            ema=t.ema.module if t.ema else None,
        )
    barrier(info)


def _finish(cfg, info, device, run_dir: Path, data: RunData, p: Progress) -> RunResult:
    ckpt = run_dir / "checkpoints"
    result = RunResult(run_dir, ckpt / "best", ckpt / "last", p.best["epoch"], p.history, class_names=data.class_names)
    if data.val_loader is not None:
        log(f"best epoch {p.best['epoch']} (val mAP {p.best['score']:.4f}, {p.best['weights']} weights)")
    else:
        log(f"no validation set: kept the last epoch ({p.best['epoch']})")
    if info.is_main:
        plot_history_png(p.history, run_dir / "history.png")
        if data.test_records:
            result.test_metrics = _test(result.best_checkpoint, data, cfg, device, run_dir)
        if cfg.report and not cfg.dry_run:
            _write_report(run_dir)
    barrier(info)
    return result


def _test(checkpoint: Path, data: RunData, cfg: TrainConfig, device, run_dir: Path) -> dict[str, Any]:
    from mlic.evaluation import evaluate_checkpoint

    report = evaluate_checkpoint(
        checkpoint,
        data.test_records,
        batch_size=cfg.optim.batch_size,
        device=device,
        num_workers=cfg.data.num_workers,
        progress=cfg.progress,
        keep_predictions=True,
    )
    preds = report.pop("_predictions")
    meta = read_meta(checkpoint)
    _save_predictions(
        run_dir / "predictions" / "test.npz", preds, data.test_records, data.class_names, meta.get("thresholds")
    )
    (run_dir / "test_metrics.json").write_text(json.dumps(report, indent=2))
    return report


def _save_predictions(path: Path, preds: Predictions, records, class_names, thresholds) -> None:
    try:
        from mlic.predictions_io import save_predictions
    except ImportError:  # reports are optional; training never fails for want of them
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    paths = [str(records[i].path) for i in preds.indices]
    save_predictions(
        path,
        probs=preds.probs,
        targets=preds.targets,
        masks=preds.masks,
        paths=paths,
        class_names=list(class_names),
        thresholds=thresholds,
    )


def _write_report(run_dir: Path) -> None:
    try:
        from mlic.report import build_report
    except ImportError:
        return
    try:
        log(f"report: {build_report(run_dir)}")
    except Exception as exc:  # a report must never cost the user a finished training run
        log(f"warning: could not write the report: {type(exc).__name__}: {exc}")


def _report_bad(bad: list[tuple[str, str]], limit: int = 5) -> None:
    for path, reason in bad[:limit]:
        log(f"warning: skipped unreadable image {path}: {reason}")
    if len(bad) > limit:
        log(f"warning: ... and {len(bad) - limit} more unreadable images skipped")


def _read_meta_or_none(path: Path) -> dict | None:
    try:
        return read_meta(path)
    except Exception:
        return None


def _raise_interrupted(stop: _StopFlag, run_dir: Path, p: Progress) -> None:
    name = signal.Signals(stop.signum).name
    raise TrainingInterrupted(
        f"{name}: stopped after epoch {p.epoch} step {p.step}; checkpoint written to {run_dir / 'checkpoints/last'}. "
        f"Continue with: mlic train --resume {run_dir}",
        128 + stop.signum,
    )


class _StopFlag:
    """SIGTERM / SIGINT set a flag; the loop finishes its step, checkpoints and stops (preemption-friendly)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum
        log(f"{signal.Signals(signum).name} received: finishing the current step, then writing a checkpoint")

    def installed(self):
        import contextlib
        import threading

        @contextlib.contextmanager
        def scope():
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
            try:
                yield
            finally:
                for s, handler in old.items():
                    signal.signal(s, handler)

        return scope()

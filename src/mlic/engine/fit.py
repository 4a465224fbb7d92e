"""``fit``: one training run, held as one object (``Run``), read top to bottom.

Run folder layout (``runs/<name>/``)::

    config.yaml        the resolved config
    metrics.csv        one row per epoch
    history.png        loss and metric curves
    checkpoints/best/  chosen by validation mAP (raw or EMA weights, whichever scored better)
    checkpoints/last/  the latest resume point: raw weights, EMA, optimizer/schedule/RNG state, progress
    predictions/       validation (and test) predictions, for reports
    test_metrics.json  when a test set is given

Under torchrun every rank runs this same code; only rank 0 writes files and prints. ``Run`` is the only
reader of the whole ``TrainConfig``: every helper it calls takes plain values.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mlic.checkpoint import read_meta, save_checkpoint
from mlic.config import TrainConfig, save_config, to_dict
from mlic.engine.budget import BUDGET_WARMUP_STEPS, epoch_estimate, fit_to_budget, probe_span_end, refit_to_budget
from mlic.engine.data_setup import RunData, prepare_data
from mlic.engine.loop import Span, train_one_epoch
from mlic.engine.resume import Progress, discard_unstarted, resolve_run_dir, restore
from mlic.engine.run_folder import (
    checkpoint_meta,
    plot_history_png,
    report_bad_images,
    summary_line,
    write_metrics_csv,
    write_report,
    write_test_results,
)
from mlic.engine.signals import StopFlag
from mlic.engine.tensorboard_log import tensorboard_writer
from mlic.engine.trainer import Trainer, build_trainer, model_kwargs, resolve_weights, set_freeze, trainer_state
from mlic.engine.validation import pick_weights, validate
from mlic.evaluation.calibration import Calibration
from mlic.evaluation.prediction_files import save_scored
from mlic.evaluation.scoring import BatchOptions
from mlic.runtime.console import log, set_main_process
from mlic.runtime.cpu import configure_allocator
from mlic.runtime.device import select_device
from mlic.runtime.distributed import DistInfo, any_rank, barrier, init_distributed, shutdown_distributed, sync_buffers
from mlic.runtime.seeding import seed_everything

VAL_KEYS = ("mAP", "f1_micro", "f1_macro", "f1_samples", "hamming_loss", "exact_match")


@dataclass
class RunResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    history: list[dict[str, Any]]
    test_metrics: dict[str, Any] | None = None
    class_names: list[str] = field(default_factory=list)
    last_model: torch.nn.Module | None = None  # raw weights after the last step, as saved in checkpoints/last


def fit(cfg: TrainConfig, *, overwrite: bool = False, resume: str | None = None) -> RunResult:
    """Train per ``cfg`` and return where everything was written.

    ``resume``: a run folder, or ``"auto"`` for this config's own run folder, to continue from its last
    complete checkpoint.
    """
    cfg.validate(resuming=resume is not None)
    configure_allocator()
    info, device = init_distributed(select_device(cfg.device))
    set_main_process(info.is_main)
    try:
        run = Run.start(cfg, info, device, overwrite=overwrite, resume=resume)
        run.train()
        return run.finish()
    finally:
        shutdown_distributed()


class Run:
    """A training run: its config, where it computes, its folder, its data, its trainer and where it stands."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, device: torch.device, run_dir: Path, data: RunData,
                 trainer: Trainer, progress: Progress) -> None:  # fmt: skip
        self.cfg, self.info, self.device, self.run_dir = cfg, info, device, run_dir
        self.data, self.t, self.p = data, trainer, progress
        self.steps_per_epoch = len(data.train_loader)
        self.optim_steps_per_epoch = math.ceil(self.steps_per_epoch / cfg.optim.accum_steps)
        self.model_spec = {"name": cfg.model.name, "kwargs": model_kwargs(cfg.model)}
        self.stop = StopFlag()

    @classmethod
    def start(cls, cfg: TrainConfig, info: DistInfo, device: torch.device, *, overwrite: bool, resume: str | None):
        """Seed, make (or find) the run folder, read the data, build the trainer, restore a resumed run."""
        if cfg.runtime.deterministic:
            torch.use_deterministic_algorithms(True)
        seed_everything(cfg.seed)
        run_dir = resolve_run_dir(cfg.output_dir, cfg.name, overwrite, resume, info)
        if info.is_main:
            save_config(cfg, run_dir / "config.yaml")
        log(f"run folder: {run_dir} (device {device})")
        try:
            resumed = read_meta(run_dir / "checkpoints" / "last") if resume else None
            weights = resolve_weights(cfg.model, progress=cfg.progress, resumed=resumed)
            data = prepare_data(cfg.data, seed=cfg.seed, batch_size=cfg.optim.batch_size, progress=cfg.progress,
                                info=info, pin_memory=device.type == "cuda",
                                norm=weights.normalization if weights else None, device=device)  # fmt: skip
        except BaseException:
            discard_unstarted(run_dir, resume, info)  # a typo in a path must not leave a run folder behind
            raise
        t = build_trainer(cfg.model, cfg.optim, cfg.runtime, data, seed=cfg.seed, device=device, info=info,
                          weights=weights)  # fmt: skip
        progress = Progress(epochs=1 if cfg.dry_run else cfg.optim.epochs)
        if resume:  # the schedule's plan comes back with the trainer state, a time budget's re-plan included
            progress = restore(run_dir / "checkpoints" / "last", to_dict(cfg), data.class_names, t)
        return cls(cfg, info, device, run_dir, data, t, progress)

    # ---- training ------------------------------------------------------------------------------------------

    def train(self) -> None:
        cfg, p = self.cfg, self.p
        start, first_epoch = time.perf_counter(), p.epoch
        with self.stop.installed(), tensorboard_writer(self.run_dir / "tensorboard", self._tensorboard_on) as tb:
            while p.epoch < p.epochs:
                if not self._run_span(p.epoch + 1):
                    continue  # a budget probe or a step checkpoint: the epoch goes on
                row = self._end_epoch(p.epoch + 1)
                if tb is not None:
                    tb.log_epoch(row)
                if cfg.max_minutes > 0 and p.epoch < p.epochs:
                    self._refit_budget(time.perf_counter() - start, p.epoch - first_epoch)
                    if p.epoch >= p.epochs:
                        break
                if self.stop.signum is not None:
                    self._interrupted()
                if cfg.optim.early_stopping and p.epoch - p.best["epoch"] >= cfg.optim.early_stopping:
                    log(
                        f"early stopping: no better val mAP for {cfg.optim.early_stopping} epochs "
                        f"(last: {row.get('val_mAP')})"
                    )
                    break

    def _run_span(self, epoch: int) -> bool:
        """Train the next steps of ``epoch``: to its end, to a step checkpoint or to the end of the budget
        probe. True when the epoch is complete."""
        cfg, p = self.cfg, self.p
        set_freeze(self.t.raw, cfg.model.freeze_backbone_epochs, epoch)
        self.data.train_sampler.set_position(epoch, p.step * cfg.optim.batch_size)
        total = 1 if cfg.dry_run else self.steps_per_epoch
        end = total if not cfg.checkpoint_every else min(total, p.step + cfg.checkpoint_every)
        # a budgeted run first times a few steps, to fit the epochs and the schedule to the budget
        probe_end = probe_span_end(cfg.max_minutes, p.epoch, p.step, total) if not p.probed else None
        stats = train_one_epoch(self.t, self.data.train_loader, epoch=epoch, span=Span(p.step, probe_end or end, total),
                                should_stop=lambda: any_rank(self.stop.signum is not None, self.info),
                                progress=cfg.progress)  # fmt: skip
        report_bad_images(stats.bad_images)
        p.step, p.loss_sum, p.images = stats.next_step, p.loss_sum + stats.loss_sum, p.images + stats.images
        p.seconds += stats.seconds
        if probe_end is not None:
            if p.step > BUDGET_WARMUP_STEPS:  # the timed probe steps are done
                val_steps = len(self.data.val_loader) if self.data.val_loader is not None else 0
                estimate = epoch_estimate(stats.seconds, p.step, total, val_steps, ema=self.t.ema is not None)
                self._replan(fit_to_budget(cfg.max_minutes, p.epochs, estimate))
                p.probed = True
            return False
        if stats.next_step < total:  # a step checkpoint, or a signal: save the resume point
            self._save_last(val=None)
            if stats.stopped:
                self._interrupted()
            return False
        return True

    def _refit_budget(self, elapsed: float, epochs_run: int) -> None:
        p = self.p
        fitting = refit_to_budget(self.cfg.max_minutes, self.cfg.optim.epochs, p.epoch, p.epochs, elapsed, epochs_run)
        if fitting > p.epoch:
            self._replan(fitting)
        else:
            p.epochs = fitting  # another epoch would overrun the budget: this one was the last

    def _replan(self, epochs: int) -> None:
        """The run will have ``epochs`` epochs in all: a one-cycle or cosine schedule now ends with the last."""
        if epochs != self.p.epochs:
            self.t.schedule.replan(epochs * self.optim_steps_per_epoch, self.t.optimizer)
            self.p.epochs = epochs

    def _end_epoch(self, epoch: int) -> dict[str, Any]:
        """Validate raw (and EMA) weights, log the epoch, write metrics and checkpoints."""
        t, p = self.t, self.p
        candidates = {"raw": t.raw} | ({"ema": t.ema.module} if t.ema else {})
        for net in candidates.values():
            sync_buffers(net, self.info)
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": p.loss_sum / max(p.images, 1),
            "lr": t.optimizer.param_groups[0]["lr"],
            "train_images_per_second": p.images / p.seconds,
        }
        scored = {tag: self._validate(net) for tag, net in candidates.items()}
        if scored["raw"] is not None:
            row |= {"val_loss": scored["raw"]["loss"]} | {f"val_{k}": scored["raw"]["metrics"][k] for k in VAL_KEYS}
        if scored.get("ema") is not None:
            row["val_mAP_ema"] = scored["ema"]["metrics"]["mAP"]
        row["seconds"] = p.seconds  # training time of the epoch (validation excluded), summed over resumes
        p.epoch, p.step, p.loss_sum, p.images, p.seconds = epoch, 0, 0.0, 0, 0.0
        p.history.append(row)
        log(summary_line(row, p.epochs))
        # Best by validation mAP over the raw and EMA weights; with no validation the latest epoch wins.
        tag = pick_weights(scored)
        chosen = scored[tag]
        score = float(epoch) if chosen is None or chosen["metrics"]["mAP"] is None else chosen["metrics"]["mAP"]
        is_best = p.best["score"] is None or score > p.best["score"]
        if is_best:
            p.best = {"score": score, "epoch": epoch, "weights": tag}
        if self.info.is_main:
            write_metrics_csv(self.run_dir / "metrics.csv", p.history)
            if is_best:
                self._save_best(candidates[tag], chosen, tag)
        self._save_last(val=scored["raw"])
        return row

    def _validate(self, net: torch.nn.Module) -> dict[str, Any] | None:
        if self.data.val_loader is None:
            return None
        return validate(net, self.data.val_loader, self.t.opts.forward, self.t.loss_fn, self.data.class_names,
                        self.info, max_steps=1 if self.cfg.dry_run else None, progress=self.cfg.progress)  # fmt: skip

    # ---- the run folder --------------------------------------------------------------------------------------

    def _meta(self, val: dict | None) -> dict[str, Any]:
        d = self.data
        return checkpoint_meta(self.model_spec, d.class_names, d.preprocessing, self.p.epoch, val, self.cfg.thresholds,
                               to_dict(self.cfg)) | {"initial_weights": self.t.initial_weights}  # fmt: skip

    def _save_best(self, net: torch.nn.Module, chosen: dict | None, tag: str) -> None:
        meta = self._meta(chosen)
        save_checkpoint(self.run_dir / "checkpoints" / "best", net, meta | {"weights": tag, "best_by": "val_mAP"})
        if chosen is not None:  # as the checkpoint will give them: calibrated, beside the thresholds tuned on them
            preds = chosen["preds"].calibrated(Calibration.from_dict(meta["calibration"])) if meta["calibration"] \
                else chosen["preds"]  # fmt: skip
            save_scored(self.run_dir / "predictions" / "val.npz", preds, self.data.val_records,
                        self.data.class_names, meta["thresholds"])  # fmt: skip

    def _save_last(self, val: dict | None) -> None:
        """The resume point: raw weights, EMA, optimizer/schedule/RNG state, progress. Rank 0 writes it."""
        barrier(self.info)
        if self.info.is_main:
            last = self.run_dir / "checkpoints" / "last"
            meta = self._meta(val)
            if val is None and (last / "meta.json").is_file():  # mid-epoch: keep the epoch's tuned thresholds
                old = read_meta(last)
                meta["thresholds"], meta["threshold_info"] = old.get("thresholds"), old.get("threshold_info")
            ema = self.t.ema.module if self.t.ema else None
            save_checkpoint(last, self.t.raw, meta | {"weights": "raw", "progress": asdict(self.p)},
                            train_state=trainer_state(self.t), ema=ema)  # fmt: skip
        barrier(self.info)

    def finish(self) -> RunResult:
        """History plot, the test set scored with the best checkpoint, the report."""
        ckpt, p = self.run_dir / "checkpoints", self.p
        result = RunResult(self.run_dir, ckpt / "best", ckpt / "last", p.best["epoch"], p.history,
                           class_names=self.data.class_names, last_model=self.t.raw)  # fmt: skip
        if self.data.val_loader is not None:
            log(f"best epoch {p.best['epoch']} (val mAP {p.best['score']:.4f}, {p.best['weights']} weights)")
        else:
            log(f"no validation set: kept the last epoch ({p.best['epoch']})")
        if self.info.is_main:
            plot_history_png(p.history, self.run_dir / "history.png")
            if self.data.test_records:
                result.test_metrics = self._test(result.best_checkpoint)
            if self.cfg.report and not self.cfg.dry_run:
                write_report(self.run_dir)
        barrier(self.info)
        return result

    def _test(self, checkpoint: Path) -> dict[str, Any]:
        c = self.cfg
        batch = BatchOptions(self.device, c.optim.batch_size, c.data.num_workers, c.progress)
        return write_test_results(self.run_dir, checkpoint, self.data.test_records, batch, str(c.data.test))

    @property
    def _tensorboard_on(self) -> bool:
        return self.cfg.tensorboard and self.info.is_main

    def _interrupted(self) -> None:
        last = self.run_dir / "checkpoints" / "last"
        where = f"after epoch {self.p.epoch} step {self.p.step}; checkpoint written to {last}"
        raise self.stop.interrupted(where, f"Continue with: mlic train --resume {self.run_dir}")

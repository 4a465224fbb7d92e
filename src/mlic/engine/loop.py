"""One training epoch: plain code, read top to bottom (the evaluation pass is ``evaluation.scoring``'s)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice

import torch

from mlic.data.dataset import Batch
from mlic.engine.trainer import StepOptions, Trainer, freeze_norm_statistics
from mlic.errors import UserError
from mlic.runtime.console import log, progress_bar


@dataclass
class EpochStats:
    loss_sum: float  # sum of per-image losses over the steps run
    images: int
    seconds: float
    next_step: int  # the epoch's next step to run (== span.total when the epoch is complete)
    stopped: bool = False  # ended early because should_stop() said so
    bad_images: list[tuple[str, str]] = field(default_factory=list)
    skipped_steps: int = 0  # steps whose loss was NaN/inf, skipped with the weights untouched

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.images, 1)


@dataclass(frozen=True)
class Span:
    """Which steps of an epoch to run: [first, end) of ``total``. The loader starts at ``first``."""

    first: int
    end: int
    total: int


class NonFiniteLossError(UserError, RuntimeError):
    """Too many consecutive non-finite losses: the run is diverging, not hitting one bad batch."""


def train_one_epoch(
    t: Trainer,
    loader: Iterable[Batch],
    *,
    epoch: int,
    span: Span | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = True,
) -> EpochStats:
    """Run the steps of ``span`` (default: the whole loader) with trainer ``t``; stop early, after an optimizer
    step, when ``should_stop()`` turns true (SIGTERM, step checkpoints)."""
    span = span or Span(0, len(loader), len(loader))
    opts = t.opts
    t.model.train()
    if opts.freeze_bn:  # running statistics stay as loaded; the affine scales and shifts still train
        freeze_norm_statistics(t.model)
    total_loss, seen, bad, skipped, bad_in_row, stopped = 0.0, 0, [], 0, 0, False
    step = span.first
    start = time.perf_counter()
    bar = _progress_bar(loader, span, epoch, progress)
    for batch in bar:
        step += 1  # steps are counted 1-based from here: ``step`` batches of the epoch are done
        bad += batch.errors
        if len(batch) == 0:  # every image in this batch was unreadable
            continue

        # forward, and the loss in fp32
        loss = _forward_loss(t, batch)

        # a NaN/inf loss must not reach the weights: drop this step's gradients, count, go on
        if not torch.isfinite(loss):
            t.optimizer.zero_grad(set_to_none=True)
            skipped, bad_in_row = skipped + 1, bad_in_row + 1
            _non_finite(loss, epoch, step, bad_in_row, opts.max_bad_steps)
            continue
        bad_in_row = 0

        # backward; with accumulation the loss is scaled so the summed gradient is a mean
        scaled = loss / opts.accum_steps
        (opts.scaler.scale(scaled) if opts.scaler else scaled).backward()

        # log: .item() syncs with the device, once per step is cheap enough at these batch sizes
        total_loss, seen = total_loss + loss.item() * len(batch), seen + len(batch)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", img_s=f"{seen / (time.perf_counter() - start):.1f}")

        # step every accum_steps batches and at the end of the epoch; only then may we stop early
        if step % opts.accum_steps == 0 or step == span.total:
            _optimizer_step(t.model, t.optimizer, opts)
            t.schedule.advance(t.optimizer)
            if t.ema is not None:
                t.ema.update(t.model)
            if should_stop is not None and step < span.end and should_stop():
                stopped = True
                break
    bar.close()
    return EpochStats(total_loss, seen, time.perf_counter() - start, step, stopped, bad, skipped)


def _progress_bar(loader: Iterable[Batch], span: Span, epoch: int, progress: bool):
    # islice: stop fetching at the span's end, so no batch is decoded only to be thrown away
    return progress_bar(islice(loader, span.end - span.first), progress=progress, desc=f"epoch {epoch}", unit="batch",
                        leave=False, dynamic_ncols=True, initial=span.first, total=span.total)  # fmt: skip


def _forward_loss(t: Trainer, batch: Batch) -> torch.Tensor:
    """uint8 -> flipped, normalised float on the device (MixUp/CutMix then mix that float batch and its targets),
    the model under autocast (bf16/fp16 where chosen), and the loss of the fp32 logits over the known labels."""
    device = t.opts.forward.device
    targets = batch.targets.to(device, non_blocking=True)
    masks = batch.masks.to(device, non_blocking=True)
    if t.mixer is None:
        logits = t.opts.forward.logits(t.model, batch.images, batch.flips)
    else:
        logits, targets, masks = _mixed_forward(t, batch, targets, masks)
    return t.loss_fn(logits.float(), targets, masks)


def _non_finite(loss: torch.Tensor, epoch: int, step: int, in_a_row: int, limit: int) -> None:
    """Warn about a skipped step; stop the run when the losses stay non-finite (it is diverging)."""
    log(f"warning: epoch {epoch} step {step}: non-finite loss ({loss.item()}), step skipped")
    if in_a_row >= limit:
        raise NonFiniteLossError(
            f"{in_a_row} non-finite losses in a row at epoch {epoch} step {step}; lower the learning rate or "
            "check the data"
        )


def _mixed_forward(t: Trainer, batch: Batch, targets: torch.Tensor, masks: torch.Tensor):
    """MixUp/CutMix the normalised float batch (soft targets, masks combined), then the forward pass."""
    from mlic.data.transforms import batch_inputs

    f = t.opts.forward
    images = batch_inputs(batch.images, batch.flips, f.pre, f.device, channels_last=f.channels_last)
    images, targets, masks = t.mixer(images, targets, masks)
    return f.logits(t.model, images), targets, masks


def _optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, opts: StepOptions) -> None:
    """Unscale (fp16), clip, step, zero."""
    if opts.scaler is not None:
        opts.scaler.unscale_(optimizer)
    if opts.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad)
    if opts.scaler is not None:
        opts.scaler.step(optimizer)
        opts.scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)

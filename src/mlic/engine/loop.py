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


# Steps between reads of the loss for the progress bar: on a GPU each read waits for the device to catch up.
LOG_EVERY = 20


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
    tally = LossTally(opts.forward.device, sync_free=opts.sync_free, limit=opts.max_bad_steps, epoch=epoch)
    bad, stopped = [], False
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

        # a NaN/inf loss must not reach the weights: on the host path, checked now and the step's gradients
        # dropped; sync-free, the check stays on the device and the fused optimizer skips the step itself
        if not tally.admit(loss, step):
            t.optimizer.zero_grad(set_to_none=True)
            continue

        # backward; with accumulation the loss is scaled so the summed gradient is a mean
        scaled = loss / opts.accum_steps
        (opts.scaler.scale(scaled) if opts.scaler else scaled).backward()

        # log: the loss is summed where it is (on the device) and read every LOG_EVERY steps, not every step
        tally.add(loss, len(batch))
        if step % LOG_EVERY == 0 or step == span.end:
            bar.set_postfix(loss=f"{tally.read(step) / max(tally.seen, 1):.4f}",
                            img_s=f"{tally.seen / (time.perf_counter() - start):.1f}")  # fmt: skip

        # step every accum_steps batches and at the end of the epoch; only then may we stop early
        if step % opts.accum_steps == 0 or step == span.total:
            tally.arm(t.optimizer)
            _optimizer_step(t.model, t.optimizer, opts)
            t.schedule.advance(t.optimizer)
            if t.ema is not None:
                t.ema.update(t.model)
            if should_stop is not None and step < span.end and should_stop():
                stopped = True
                break
    bar.close()
    total = tally.read(step)
    return EpochStats(total, tally.seen, time.perf_counter() - start, step, stopped, bad, tally.skipped())


class LossTally:
    """The epoch's loss sum and its non-finite steps, kept on the host, or on the device when ``sync_free``.

    Host path (CPU, fp16 with its GradScaler): each loss is checked as it comes, and a non-finite one skips its
    step before backward. Sync-free (CUDA, fused Adam/AdamW): reading a loss would make the host wait for the
    device at every step, so the sum, the skip count and the run of non-finite losses stay device tensors, the
    optimizer gets the step's verdict as ``found_inf`` (its fused kernel then leaves weights and moments as they
    were, as GradScaler's skipped steps do), and the host reads everything once per LOG_EVERY steps. The
    weights come out the same (tested on CPU); on a skipped sync-free step the schedule and EMA still advance.
    """

    def __init__(self, device: torch.device, *, sync_free: bool, limit: int, epoch: int) -> None:
        self.sync_free, self.limit, self.epoch, self.seen = sync_free, limit, epoch, 0
        zero = torch.zeros((), device=device)
        # float64, as a Python float: the sums equal the host path's bit for bit (MPS has no float64)
        self._sum = torch.zeros((), device=device, dtype=torch.float32 if device.type == "mps" else torch.float64)
        self._skipped, self._streak, self._bad_window = zero.clone(), zero.clone(), zero
        self._host_skipped, self._host_streak = 0, 0
        self._images = zero.clone()  # sync-free: images of finite steps, read into ``seen`` with the sum

    def admit(self, loss: torch.Tensor, step: int) -> bool:
        """Whether the step goes on to backward (sync-free: always, the verdict stays on the device)."""
        if self.sync_free:
            bad = (~torch.isfinite(loss.detach())).float()
            self._skipped += bad
            self._streak = (self._streak + 1) * bad
            self._bad_window = torch.maximum(self._bad_window, bad)
            return True
        if torch.isfinite(loss):
            self._host_streak = 0
            return True
        self._host_skipped, self._host_streak = self._host_skipped + 1, self._host_streak + 1
        _non_finite(loss, self.epoch, step, self._host_streak, self.limit)
        return False

    def add(self, loss: torch.Tensor, n: int) -> None:
        """Count a batch of ``n`` images; sync-free, a non-finite one adds neither its loss nor its images."""
        detached = loss.detach()
        finite = torch.isfinite(detached)
        wide = detached.to(self._sum.dtype)
        self._sum += torch.where(finite, wide * n, torch.zeros_like(wide))
        if self.sync_free:
            self._images += finite.float() * n
        else:
            self.seen += n

    def arm(self, optimizer: torch.optim.Optimizer) -> None:
        """Sync-free: tell the fused optimizer whether any loss since its last step was non-finite."""
        if self.sync_free:
            optimizer.found_inf, optimizer.grad_scale = self._bad_window, None
            self._bad_window = torch.zeros_like(self._bad_window)

    def read(self, step: int) -> float:
        """The loss sum so far (one wait for the device); stops a run whose losses stay non-finite."""
        if self.sync_free and int(self._streak.item()) >= self.limit:
            raise NonFiniteLossError(f"{self.limit}+ non-finite losses in a row at epoch {self.epoch} before step "
                                     f"{step}; lower the learning rate or check the data")  # fmt: skip
        if self.sync_free:
            self.seen = int(self._images.item())
        return float(self._sum.item())

    def skipped(self) -> int:
        return int(self._skipped.item()) if self.sync_free else self._host_skipped


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

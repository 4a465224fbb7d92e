"""One training epoch and one evaluation pass: plain code, read top to bottom."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mlic.data.dataset import Batch
from mlic.data.transforms import Preprocessing, batch_inputs
from mlic.engine.ema import ModelEma
from mlic.engine.precision import Precision


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

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


@dataclass(frozen=True)
class Span:
    """Which steps of an epoch to run: [first, end) of ``total``. The loader starts at ``first``."""

    first: int
    end: int
    total: int


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses: the run is diverging, not hitting one bad batch."""


@dataclass
class StepOptions:
    """How one optimisation step is done; plain values, resolved by ``fit``."""

    precision: Precision = field(default_factory=lambda: Precision("fp32", None, False))
    channels_last: bool = False
    accum_steps: int = 1  # optimizer step every N batches
    clip_grad: float = 0.0  # max global gradient norm; 0 = no clipping
    max_bad_steps: int = 5  # consecutive non-finite losses before giving up
    scaler: torch.amp.GradScaler | None = None  # fp16 on CUDA only
    pre: Preprocessing = field(default_factory=Preprocessing)  # normalisation of the uint8 batches


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    epoch: int,
    opts: StepOptions | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ema: ModelEma | None = None,
    mixer: Callable | None = None,
    span: Span | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = True,
) -> EpochStats:
    """Run the steps of ``span`` (default: the whole loader); stop early, after an optimizer step, when
    ``should_stop()`` turns true (SIGTERM, step checkpoints)."""
    opts = opts or StepOptions()
    span = span or Span(0, len(loader), len(loader))
    model.train()
    total_loss, seen, bad, skipped, bad_in_row, stopped = 0.0, 0, [], 0, 0, False
    step = span.first
    start = time.perf_counter()
    # islice: stop fetching at the span's end, so no batch is decoded only to be thrown away
    bar = tqdm(
        islice(loader, span.end - span.first),
        desc=f"epoch {epoch}",
        unit="batch",
        leave=False,
        disable=not progress,
        dynamic_ncols=True,
        initial=span.first,
        total=span.total,
    )
    for batch in bar:
        step += 1  # steps are counted 1-based from here: ``step`` batches of the epoch are done
        bad += batch.errors
        if len(batch) == 0:  # every image in this batch was unreadable
            continue
        # uint8 -> flipped, normalised float on the device (one batched op each instead of per-image work)
        images = batch_inputs(batch.images, batch.flips, opts.pre, device, channels_last=opts.channels_last)
        targets = batch.targets.to(device, non_blocking=True)
        masks = batch.masks.to(device, non_blocking=True)
        if mixer is not None:  # MixUp/CutMix: soft targets, masks combined
            images, targets, masks = mixer(images, targets, masks)

        # forward under autocast (bf16/fp16 where chosen); the loss is computed in fp32
        with opts.precision.autocast(device):
            logits = model(images)
        loss = loss_fn(logits.float(), targets, masks)

        # a NaN/inf loss must not reach the weights: drop this step's gradients, count, go on
        if not torch.isfinite(loss):
            optimizer.zero_grad(set_to_none=True)
            skipped, bad_in_row = skipped + 1, bad_in_row + 1
            tqdm.write(f"warning: epoch {epoch} step {step}: non-finite loss ({loss.item()}), step skipped")
            if bad_in_row >= opts.max_bad_steps:
                raise NonFiniteLossError(
                    f"{bad_in_row} non-finite losses in a row at epoch {epoch} step {step}; "
                    "lower the learning rate or check the data"
                )
            continue
        bad_in_row = 0

        # backward; with accumulation the loss is scaled so the summed gradient is a mean
        scaled = loss / opts.accum_steps
        (opts.scaler.scale(scaled) if opts.scaler else scaled).backward()

        # log: .item() syncs with the device, once per step is cheap enough at these batch sizes
        n = images.shape[0]
        total_loss += loss.item() * n
        seen += n
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", img_s=f"{seen / (time.perf_counter() - start):.1f}")

        # step every accum_steps batches and at the end of the epoch; only then may we stop early
        if step % opts.accum_steps == 0 or step == span.total:
            _optimizer_step(model, optimizer, opts)
            if scheduler is not None:
                scheduler.step()
            if ema is not None:
                ema.update(model)
            if should_stop is not None and step < span.end and should_stop():
                stopped = True
                break
    bar.close()
    return EpochStats(total_loss, seen, time.perf_counter() - start, step, stopped, bad, skipped)


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, opts: StepOptions) -> None:
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


@dataclass
class Predictions:
    probs: np.ndarray  # (N, C) sigmoid probabilities
    targets: np.ndarray  # (N, C) 0/1
    masks: np.ndarray  # (N, C) 1 = known
    indices: np.ndarray  # (N,) dataset positions of the rows (unreadable images are absent)
    loss: float
    bad_images: list[tuple[str, str]]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    loss_fn: nn.Module | None = None,
    *,
    max_steps: int | None = None,
    progress: bool = True,
    desc: str = "eval",
    precision: Precision | None = None,
    channels_last: bool = False,
    pre: Preprocessing | None = None,
) -> Predictions:
    """Run the model over ``loader`` and collect probabilities with their targets and masks."""
    model.eval()
    probs, targets, masks, indices, bad = [], [], [], [], []
    total_loss, seen = 0.0, 0
    for step, batch in enumerate(tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress)):
        if max_steps is not None and step >= max_steps:
            break
        bad += batch.errors
        if len(batch) == 0:
            continue
        images = batch_inputs(batch.images, None, pre or Preprocessing(), device, channels_last=channels_last)
        with precision.autocast(device) if precision else contextlib.nullcontext():
            logits = model(images).float()
        if loss_fn is not None:
            loss = loss_fn(logits, batch.targets.to(device), batch.masks.to(device))
            total_loss += loss.item() * len(batch)
        seen += len(batch)
        probs.append(torch.sigmoid(logits).cpu().numpy())
        targets.append(batch.targets.numpy())
        masks.append(batch.masks.numpy())
        indices.append(batch.indices.numpy())
    c = _num_outputs(model)
    return Predictions(
        probs=np.concatenate(probs) if probs else np.zeros((0, c), np.float32),
        targets=np.concatenate(targets) if targets else np.zeros((0, c), np.float32),
        masks=np.concatenate(masks) if masks else np.zeros((0, c), np.float32),
        indices=np.concatenate(indices) if indices else np.zeros(0, np.int64),
        loss=total_loss / max(seen, 1),
        bad_images=bad,
    )


def _num_outputs(model: nn.Module) -> int:
    return int(getattr(model, "num_classes", 0))

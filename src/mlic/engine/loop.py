"""One training epoch and one evaluation pass: plain code, read top to bottom."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mlic.data.dataset import Batch


@dataclass
class EpochStats:
    loss: float
    images: int
    seconds: float
    bad_images: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    epoch: int,
    max_steps: int | None = None,
    progress: bool = True,
) -> EpochStats:
    model.train()
    total_loss, seen, bad = 0.0, 0, []
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        if max_steps is not None and step >= max_steps:
            break
        bad += batch.errors
        if len(batch) == 0:  # every image in this batch was unreadable
            continue
        images = batch.images.to(device, non_blocking=True)
        targets = batch.targets.to(device, non_blocking=True)
        masks = batch.masks.to(device, non_blocking=True)

        # forward: raw logits (B, C); the loss applies the sigmoid itself, stably
        logits = model(images)
        loss = loss_fn(logits, targets, masks)

        # backward and step; set_to_none frees gradient memory between steps
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        # log: .item() syncs with the device, once per step is cheap enough at these batch sizes
        n = images.shape[0]
        total_loss += loss.item() * n
        seen += n
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", img_s=f"{seen / elapsed:.1f}")
    return EpochStats(loss=total_loss / max(seen, 1), images=seen, seconds=time.perf_counter() - start, bad_images=bad)


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
        logits = model(batch.images.to(device, non_blocking=True)).float()
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

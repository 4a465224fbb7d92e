"""The evaluation pass: a model and labelled images -> probabilities beside their targets and masks.

``score_loader`` runs any model over a loader (validation during training uses it with the weights in
memory); ``score_checkpoint`` is the one body behind ``mlic evaluate``, the test set at the end of training
and ``mlic report --data``: load the checkpoint, fold it for inference, read the records with its own eval
preprocessing, score.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mlic.checkpoint import load_checkpoint
from mlic.data.dataset import Batch, MultiLabelDataset
from mlic.data.images import DEFAULT_MAX_PIXELS
from mlic.data.loader import build_loader
from mlic.data.records import Record
from mlic.data.transforms import Preprocessing, batch_inputs, build_eval_pipeline
from mlic.models.fold import inference_form
from mlic.runtime.device import select_device
from mlic.runtime.precision import Precision


@dataclass
class Predictions:
    probs: np.ndarray  # (N, C) sigmoid probabilities
    targets: np.ndarray  # (N, C) 0/1
    masks: np.ndarray  # (N, C) 1 = known
    indices: np.ndarray  # (N,) dataset positions of the rows (unreadable images are absent)
    loss: float
    bad_images: list[tuple[str, str]] = field(default_factory=list)

    def paths(self, records: Sequence[Record]) -> list[str]:
        """The image path of each row, from the records the dataset was built from."""
        return [str(records[i].path) for i in self.indices]


@dataclass(frozen=True)
class Forward:
    """How batches go through a model: where, in which memory layout and precision, normalised how."""

    device: torch.device
    pre: Preprocessing
    channels_last: bool = False
    precision: Precision | None = None

    def logits(self, model: nn.Module, images: torch.Tensor, flips: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (B, 3, S, S) batch -> (B, C) logits, under autocast where a precision says so."""
        x = batch_inputs(images, flips, self.pre, self.device, channels_last=self.channels_last)
        with self.precision.autocast(self.device) if self.precision else contextlib.nullcontext():
            return model(x)


@dataclass(frozen=True)
class BatchOptions:
    """How labelled images are run through a model: the ``--device``, ``--batch-size``, ``--workers`` and
    ``--progress`` of every command that does it."""

    device: str | torch.device = "auto"
    batch_size: int = 32
    num_workers: int = -1
    progress: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS


@torch.no_grad()
def score_loader(
    model: nn.Module,
    loader: Iterable[Batch],
    forward: Forward,
    *,
    loss_fn: nn.Module | None = None,
    max_steps: int | None = None,
    progress: bool = True,
    desc: str = "eval",
) -> Predictions:
    """Run ``model`` over ``loader``; collect probabilities with their targets and masks (and the mean loss)."""
    model.eval()
    probs, targets, masks, indices, bad = [], [], [], [], []
    total_loss, seen = 0.0, 0
    for step, batch in enumerate(tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress)):
        if max_steps is not None and step >= max_steps:
            break
        bad += batch.errors
        if len(batch) == 0:
            continue
        logits = forward.logits(model, batch.images).float()
        if loss_fn is not None:
            loss = loss_fn(logits, batch.targets.to(forward.device), batch.masks.to(forward.device))
            total_loss += loss.item() * len(batch)
        seen += len(batch)
        probs.append(torch.sigmoid(logits).cpu().numpy())
        targets.append(batch.targets.numpy())
        masks.append(batch.masks.numpy())
        indices.append(batch.indices.numpy())
    c = int(getattr(model, "num_classes", 0))
    return Predictions(
        probs=np.concatenate(probs) if probs else np.zeros((0, c), np.float32),
        targets=np.concatenate(targets) if targets else np.zeros((0, c), np.float32),
        masks=np.concatenate(masks) if masks else np.zeros((0, c), np.float32),
        indices=np.concatenate(indices) if indices else np.zeros(0, np.int64),
        loss=total_loss / max(seen, 1),
        bad_images=bad,
    )


@dataclass
class Scored:
    """A checkpoint's predictions on labelled records, with what they were made with."""

    checkpoint: Path
    meta: dict[str, Any]
    records: list[Record]
    preds: Predictions

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])


def score_checkpoint(
    checkpoint: str | Path, records: Sequence[Record], batch: BatchOptions | None = None, *, desc: str = "evaluate"
) -> Scored:
    """Run ``checkpoint`` over labelled ``records`` with its own eval preprocessing, BatchNorm folded."""
    batch = batch or BatchOptions()
    dev = batch.device if isinstance(batch.device, torch.device) else select_device(batch.device)
    model, meta = load_checkpoint(checkpoint, device=dev)
    model, channels_last = inference_form(model, dev)
    pre = Preprocessing.from_dict(meta["preprocessing"])
    dataset = MultiLabelDataset(records, meta["class_names"], build_eval_pipeline(pre), max_pixels=batch.max_pixels)
    loader = build_loader(dataset, batch_size=batch.batch_size, shuffle=False, num_workers=batch.num_workers)
    preds = score_loader(model, loader, Forward(dev, pre, channels_last), progress=batch.progress, desc=desc)
    return Scored(Path(checkpoint), meta, dataset.records, preds)

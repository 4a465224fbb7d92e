"""The evaluation pass: a model and labelled images -> probabilities beside their targets and masks.

``score_loader`` runs any model over a loader (validation during training uses it with the weights in
memory); ``score_checkpoint`` is the one body behind ``mlic evaluate``, the test set at the end of training
and ``mlic report --data``: load the checkpoint, fold it for inference, read the records with its own eval
preprocessing, score.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlic.checkpoint import load_checkpoint
from mlic.data.dataset import Batch, MultiLabelDataset
from mlic.data.images import DEFAULT_MAX_PIXELS
from mlic.data.loader import build_loader
from mlic.data.records import Record
from mlic.data.table import RecordTable
from mlic.data.transforms import Preprocessing, batch_inputs, build_eval_pipeline
from mlic.evaluation.cells import Cells
from mlic.models.fold import inference_form
from mlic.runtime.console import progress_bar
from mlic.runtime.device import select_device
from mlic.runtime.precision import Precision


@dataclass
class Predictions:
    """A model's probabilities on labelled images: the known cells always (every metric needs only those), and
    the dense (N, C) arrays too while they are small (the report draws from them)."""

    probs: np.ndarray | None  # (N, C) sigmoid probabilities, or None for a set too large to hold densely
    targets: np.ndarray | None  # (N, C) 0/1
    masks: np.ndarray | None  # (N, C) 1 = known
    indices: np.ndarray  # (N,) dataset positions of the rows (unreadable images are absent)
    loss: float
    bad_images: list[tuple[str, str]] = field(default_factory=list)
    cells: Cells | None = None  # derived from the dense arrays when not given

    def __post_init__(self) -> None:
        if self.cells is None:
            self.cells = Cells.from_dense(self.probs, self.targets > 0, self.masks > 0)

    @property
    def dense(self) -> bool:
        return self.probs is not None

    def calibrated(self, calibration) -> Predictions:
        """The same predictions with calibrated probabilities (``mlic.evaluation.calibration.Calibration``)."""
        from mlic.evaluation.calibration import calibrate_cells

        probs = None if self.probs is None else calibration.probs(self.probs).astype(np.float32)
        return Predictions(probs, self.targets, self.masks, self.indices, self.loss, self.bad_images,
                           calibrate_cells(self.cells, calibration))  # fmt: skip

    def paths(self, records: Sequence[Record]) -> list[str]:
        """The image path of each row, from the records the dataset was built from."""
        if isinstance(records, RecordTable):
            return [records.paths[i] for i in self.indices]
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


# Above this many (image, class) cells a scoring pass keeps only the known ones: 20,000 classes over 100,000
# images would be 8 GB of probabilities, while their Open Images labels are under a million cells.
DENSE_CELLS = 1 << 26


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
    kept = _Collected(int(getattr(model, "num_classes", 0)))
    total_loss, bad = 0.0, []
    for step, batch in enumerate(progress_bar(loader, progress=progress, desc=desc, unit="batch", leave=False)):
        if max_steps is not None and step >= max_steps:
            break
        bad += batch.errors
        if len(batch) == 0:
            continue
        logits = forward.logits(model, batch.images).float()
        if loss_fn is not None:
            loss = loss_fn(logits, batch.targets.to(forward.device), batch.masks.to(forward.device))
            total_loss += loss.item() * len(batch)
        kept.add(torch.sigmoid(logits).cpu().numpy(), batch)
    return kept.predictions(total_loss / max(kept.rows, 1), bad)


def score_probabilities(
    predict: Callable[[torch.Tensor], np.ndarray],
    loader: Iterable[Batch],
    num_classes: int,
    *,
    progress: bool = True,
    desc: str = "eval",
) -> Predictions:
    """``score_loader`` for a model that takes the uint8 (B, 3, S, S) batch itself and returns (B, C)
    probabilities: an exported model, whose graph scales, normalises and applies the sigmoid (no loss: NaN)."""
    kept, bad = _Collected(num_classes), []
    for batch in progress_bar(loader, progress=progress, desc=desc, unit="batch", leave=False):
        bad += batch.errors
        if len(batch):
            kept.add(np.asarray(predict(batch.images), np.float32), batch)
    return kept.predictions(float("nan"), bad)


class _Collected:
    """Rows of a scoring pass: dense while the set stays small, the known cells alone beyond ``DENSE_CELLS``."""

    def __init__(self, num_classes: int) -> None:
        self.c, self.rows = num_classes, 0
        self.dense: dict[str, list] | None = {"probs": [], "targets": [], "masks": []}
        self.indices, self.coo = [], {"rows": [], "cols": [], "scores": [], "targets": []}

    def add(self, probs: np.ndarray, batch: Batch) -> None:
        targets, masks = batch.targets.numpy(), batch.masks.numpy()
        if self.dense is not None and (self.rows + len(probs)) * self.c > DENSE_CELLS:
            for p, t, m, start in self._dense_batches():  # too large now: what was kept densely becomes cells
                self._add_cells(p, t, m, start)
            self.dense = None
        if self.dense is not None:
            for key, value in (("probs", probs), ("targets", targets), ("masks", masks)):
                self.dense[key].append(value)
        else:
            self._add_cells(probs, targets, masks, self.rows)
        self.rows += len(probs)
        self.indices.append(batch.indices.numpy())

    def _dense_batches(self):
        start = 0
        for p, t, m in zip(self.dense["probs"], self.dense["targets"], self.dense["masks"], strict=True):
            yield p, t, m, start
            start += len(p)

    def _add_cells(self, probs: np.ndarray, targets: np.ndarray, masks: np.ndarray, start: int) -> None:
        r, c = np.nonzero(masks > 0)
        for key, value in (("rows", r + start), ("cols", c), ("scores", probs[r, c]), ("targets", targets[r, c] > 0)):
            self.coo[key].append(value)

    def predictions(self, loss: float, bad: list) -> Predictions:
        indices = np.concatenate(self.indices) if self.indices else np.zeros(0, np.int64)
        if self.dense is not None:
            arrays = {k: np.concatenate(v) if v else np.zeros((0, self.c), np.float32) for k, v in self.dense.items()}
            return Predictions(arrays["probs"], arrays["targets"], arrays["masks"], indices, loss, bad)
        coo = {k: np.concatenate(v) for k, v in self.coo.items()}
        cells = Cells.from_coo(self.rows, self.c, coo["rows"], coo["cols"], coo["scores"], coo["targets"])
        return Predictions(None, None, None, indices, loss, bad, cells)


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

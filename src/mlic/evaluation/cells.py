"""The known (image, class) cells of an evaluation: what every metric and threshold is computed from.

A metric never looks at an unknown cell, so only the known ones are kept: for a fully labelled set that is
every cell, for Open Images (about 8 verified labels per image over 20,000 classes) a few per image. Cells are
held sorted by class, and everything class-wise (AP, ROC AUC, F1 at a threshold, the best threshold) is done
a block of classes at a time with one sort per block, so memory and time grow with the number of known
cells, never with images x classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# Cells per block of classes: each block's sort and its temporaries stay near this many elements.
BLOCK_CELLS = 4_000_000


@dataclass(frozen=True)
class Cells:
    """Known cells sorted by class: class c's cells are ``[class_ptr[c], class_ptr[c + 1])``."""

    num_images: int
    num_classes: int
    rows: np.ndarray  # (K,) int64 image of each cell
    scores: np.ndarray  # (K,) float64
    targets: np.ndarray  # (K,) bool
    class_ptr: np.ndarray  # (C + 1,) int64

    @classmethod
    def from_coo(cls, num_images: int, num_classes: int, rows, cols, scores, targets) -> Cells:
        """Cells given in any order as (image, class, score, target) arrays."""
        cols = np.asarray(cols, np.int64)
        order = np.argsort(cols, kind="stable")
        class_ptr = np.zeros(num_classes + 1, np.int64)
        np.cumsum(np.bincount(cols, minlength=num_classes), out=class_ptr[1:])
        return cls(num_images, num_classes, np.asarray(rows, np.int64)[order],
                   np.asarray(scores, np.float64)[order], np.asarray(targets, bool)[order], class_ptr)  # fmt: skip

    @classmethod
    def from_dense(cls, probs: np.ndarray, targets: np.ndarray, known: np.ndarray) -> Cells:
        """The known cells of (N, C) arrays, taken class by class (column-major), so no sort is needed."""
        n, c = probs.shape
        cols, rows = np.nonzero(known.T)
        class_ptr = np.zeros(c + 1, np.int64)
        np.cumsum(np.bincount(cols, minlength=c), out=class_ptr[1:])
        return cls(n, c, rows.astype(np.int64), probs[rows, cols].astype(np.float64), targets[rows, cols].astype(bool),
                   class_ptr)  # fmt: skip

    @property
    def cols(self) -> np.ndarray:
        return np.repeat(np.arange(self.num_classes, dtype=np.int64), np.diff(self.class_ptr))

    def blocks(self) -> Iterator[tuple[int, int]]:
        """Consecutive class ranges [c0, c1) of about BLOCK_CELLS cells each (at least one class)."""
        c0 = 0
        while c0 < self.num_classes:
            limit = self.class_ptr[c0] + BLOCK_CELLS
            c1 = max(c0 + 1, int(np.searchsorted(self.class_ptr, limit, side="right")) - 1)
            c1 = min(c1, self.num_classes)
            yield c0, c1
            c0 = c1


@dataclass(frozen=True)
class RankedBlock:
    """One block of classes with its cells sorted by (class, score descending), tie groups marked."""

    c0: int
    c1: int
    cls: np.ndarray  # (k,) local class of each sorted cell
    scores: np.ndarray
    pos: np.ndarray  # (k,) float64 1 for a positive
    tp: np.ndarray  # (k,) positives at or above this cell, within its class
    fp: np.ndarray
    is_start: np.ndarray  # (k,) bool: first cell of a tie group (same class, same score)
    is_end: np.ndarray
    order: np.ndarray | None = None  # (k,) position of each sorted cell among the block's cells

    @property
    def num_pos(self) -> np.ndarray:
        return np.bincount(self.cls, weights=self.pos, minlength=self.c1 - self.c0)

    @property
    def num_neg(self) -> np.ndarray:
        return np.bincount(self.cls, weights=1.0 - self.pos, minlength=self.c1 - self.c0)


def rank_block(cells: Cells, c0: int, c1: int) -> RankedBlock:
    """Sort the cells of classes [c0, c1) by class, then by score descending, with running counts per class."""
    lo, hi = int(cells.class_ptr[c0]), int(cells.class_ptr[c1])
    cls = np.repeat(np.arange(c1 - c0, dtype=np.int64), np.diff(cells.class_ptr[c0 : c1 + 1]))
    scores, targets = cells.scores[lo:hi], cells.targets[lo:hi]
    order = np.lexsort((-scores, cls))
    cls, scores, pos = cls[order], scores[order], targets[order].astype(np.float64)
    new_class = np.ones(len(cls), bool)
    new_class[1:] = cls[1:] != cls[:-1]
    # running counts restart with each class: subtract what the classes before had gathered
    cum_tp, cum_fp = np.cumsum(pos), np.cumsum(1.0 - pos)
    segment = np.cumsum(new_class) - 1
    starts = np.flatnonzero(new_class)
    tp = cum_tp - (cum_tp - pos)[starts][segment]
    fp = cum_fp - (cum_fp - (1.0 - pos))[starts][segment]
    differs = new_class[1:] | (scores[1:] != scores[:-1])
    is_start = np.concatenate([[True], differs]) if len(cls) else np.zeros(0, bool)
    is_end = np.concatenate([differs, [True]]) if len(cls) else np.zeros(0, bool)
    return RankedBlock(c0, c1, cls, scores, pos, tp, fp, is_start, is_end, order)


def ranking_metrics(cells: Cells) -> tuple[np.ndarray, np.ndarray]:
    """(C,) AP and ROC AUC per class over its known cells, NaN where undefined (no positive; no negative).

    AP: each positive scores the precision at the end of its tie group (scikit-learn's step-wise sum). AUC
    (Mann-Whitney): each positive scores the negatives below it plus half of those tied with it.
    """
    ap, auc = np.full(cells.num_classes, np.nan), np.full(cells.num_classes, np.nan)
    for c0, c1 in cells.blocks():
        b = rank_block(cells, c0, c1)
        if not len(b.cls):
            continue
        num_pos, num_neg = b.num_pos, b.num_neg
        group = b.cls[b.is_end]
        tp_end, fp_end = b.tp[b.is_end], b.fp[b.is_end]
        fp_before = (b.fp - (1.0 - b.pos))[b.is_start]
        pos_in_group = tp_end - (b.tp - b.pos)[b.is_start]
        precision = np.divide(tp_end, tp_end + fp_end, out=np.zeros_like(tp_end), where=(tp_end + fp_end) > 0)
        width = c1 - c0
        ap_sum = np.bincount(group, weights=pos_in_group * precision, minlength=width)
        wins = pos_in_group * (num_neg[group] - 0.5 * (fp_end + fp_before))
        auc_sum = np.bincount(group, weights=wins, minlength=width)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[c0:c1] = np.where(num_pos > 0, ap_sum / num_pos, np.nan)
            auc[c0:c1] = np.where((num_pos > 0) & (num_neg > 0), auc_sum / (num_pos * num_neg), np.nan)
    return ap, auc


def confusion(cells: Cells, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """TP/FP/FN per class (C,) and per image (N,), and known cells per image, at per-class ``thresholds``."""
    cols = cells.cols
    pred = cells.scores >= thresholds[cols]
    true = cells.targets
    out = {}
    for name, hit in (("tp", pred & true), ("fp", pred & ~true), ("fn", ~pred & true)):
        out[f"class_{name}"] = np.bincount(cols[hit], minlength=cells.num_classes).astype(np.float64)
        out[f"image_{name}"] = np.bincount(cells.rows[hit], minlength=cells.num_images).astype(np.float64)
    out["image_known"] = np.bincount(cells.rows, minlength=cells.num_images).astype(np.float64)
    out["class_support"] = np.bincount(cols[true], minlength=cells.num_classes).astype(np.int64)
    return out

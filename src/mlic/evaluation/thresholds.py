"""Decision thresholds tuned on validation predictions: per class, one global, or a fixed constant.

A sigmoid output of 0.5 is the right cut only for a calibrated model on balanced classes. Rare classes
often score low across the board, so at 0.5 they are never predicted and their F1 is 0 even when the
ranking (AP) is good. Moving each class's threshold to the point that maximises its F1 recovers that.

Tune on the validation split and then apply the frozen thresholds to the test split, never tune on the
test split itself: the search picks the best of up to N operating points, so the F1 it finds is biased
upwards by the noise it has fitted (most for rare classes). Reported test numbers are honest only when
the test labels played no part in choosing the thresholds.

Rules:

- Predictions follow ``mlic.evaluation.metrics``: a label is predicted when ``prob >= threshold``; F1 is
  scikit-learn's with ``zero_division=0``; unknown entries (mask 0) are ignored everywhere.
- Candidate operating points are the unique known scores of a class: "predict every entry scoring at
  least this". The returned threshold is the midpoint between the chosen score and the next lower known
  score, which gives exactly the same validation predictions but leaves a margin on both sides for
  unseen images. Among equally good points the highest threshold wins (fewest positive predictions).
- A class with fewer than ``min_positives`` known positives (and always one with none) gets the global
  threshold: an F1 optimum over two or three positives is mostly noise. The global threshold is the one
  value that maximises micro-F1 over all known entries; with no positive at all it is ``fixed``.
- Thresholds are clamped to [1e-6, 1]: a threshold of 0 would predict every label of every image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mlic.config import THRESHOLD_METHODS as METHODS
from mlic.evaluation.cells import Cells, confusion, rank_block
from mlic.evaluation.metrics import _prf, _validate

# The lowest threshold handed out; see the module docstring.
_MIN_THRESHOLD = 1e-6


@dataclass
class ThresholdResult:
    """Tuned thresholds and what they did on the validation set.

    ``f1_before`` is each class's validation F1 at ``baseline_threshold`` (the ``fixed`` value), ``f1_after``
    at the tuned ``thresholds``; ``fallback_classes`` lists the classes that got ``global_threshold``
    because they had too few known positives (per_class_f1 only).
    """

    thresholds: np.ndarray  # (C,) float64
    method: str
    global_threshold: float
    fallback_classes: list[int]
    f1_before: np.ndarray  # (C,)
    f1_after: np.ndarray  # (C,)
    baseline_threshold: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        """Plain Python floats, ints and lists, ready for json.dumps (e.g. into a checkpoint's meta.json)."""
        return {
            "method": self.method,
            "thresholds": [float(t) for t in self.thresholds],
            "global_threshold": float(self.global_threshold),
            "fallback_classes": [int(c) for c in self.fallback_classes],
            "baseline_threshold": float(self.baseline_threshold),
            "f1_before": [float(f) for f in self.f1_before],
            "f1_after": [float(f) for f in self.f1_after],
        }


def tune_thresholds(
    probs: ArrayLike,
    targets: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    method: str = "per_class_f1",
    min_positives: int = 5,
    fixed: float = 0.5,
) -> ThresholdResult:
    """Thresholds for (N, C) validation ``probs`` and 0/1 ``targets`` (``mask``: 1 = known; None = all known).

    method: "per_class_f1" maximises each class's F1 on its known entries, "global_f1" picks one threshold
    for all classes maximising micro-F1, "fixed" uses ``fixed`` for every class.
    """
    probs, targets, known = _validate(probs, targets, mask)
    return tune_on_cells(Cells.from_dense(probs, targets, known), method=method, min_positives=min_positives,
                         fixed=fixed)  # fmt: skip


def tune_on_cells(cells: Cells, *, method: str = "per_class_f1", min_positives: int = 5, fixed: float = 0.5):
    """``tune_thresholds`` on the known cells of a validation set (sparse labels: only those are stored)."""
    if method not in METHODS:
        raise ValueError(f"unknown threshold method {method!r}; choose one of: {', '.join(METHODS)}")
    if min_positives < 0:
        raise ValueError(f"min_positives must be >= 0, got {min_positives}")
    if not 0 < fixed <= 1:
        raise ValueError(f"fixed threshold must lie in (0, 1], got {fixed}")
    num_classes = cells.num_classes
    # Micro-F1 sums TP/FP/FN over classes, so it is the F1 of all known entries pooled into one binary problem.
    global_threshold = float(np.clip(_best_threshold(cells.scores, cells.targets, fixed), _MIN_THRESHOLD, 1.0))
    fallback: list[int] = []
    thresholds = np.full(num_classes, fixed if method == "fixed" else global_threshold, dtype=np.float64)
    if method == "per_class_f1":
        num_positives = np.bincount(cells.cols[cells.targets], minlength=num_classes)
        fallback = [int(c) for c in np.flatnonzero(num_positives < max(min_positives, 1))]
        best = _best_thresholds(cells)
        tuned = num_positives >= max(min_positives, 1)
        thresholds[tuned] = best[tuned]
        thresholds = np.clip(thresholds, _MIN_THRESHOLD, 1.0)
    return ThresholdResult(
        thresholds=thresholds,
        method=method,
        global_threshold=global_threshold,
        fallback_classes=fallback,
        f1_before=_class_f1(cells, np.full(num_classes, float(fixed))),
        f1_after=_class_f1(cells, thresholds),
        baseline_threshold=float(fixed),
    )


def _best_thresholds(cells: Cells) -> np.ndarray:
    """(C,) each class's F1-maximising threshold (``_best_threshold`` per class, from one sort per block)."""
    out = np.full(cells.num_classes, np.nan)
    for c0, c1 in cells.blocks():
        b = rank_block(cells, c0, c1)
        if not len(b.cls):
            continue
        group = b.cls[b.is_end]
        tp, fp, scores = b.tp[b.is_end], b.fp[b.is_end], b.scores[b.is_end]
        _, _, f1 = _prf(tp, fp, b.num_pos[group] - tp)
        starts = np.flatnonzero(np.concatenate([[True], group[1:] != group[:-1]]))
        best_f1 = np.maximum.reduceat(f1, starts)
        ends = np.concatenate([starts[1:], [len(group)]])
        for first, last, cls, top in zip(starts.tolist(), ends.tolist(), group[starts].tolist(), best_f1.tolist(),
                                         strict=True):  # fmt: skip
            best = first + int(np.argmax(f1[first:last] == top))  # the first maximum: the highest threshold
            hi = float(scores[best])
            out[c0 + cls] = hi if best + 1 == last else _midpoint(hi, float(scores[best + 1]))
    return out


def _best_threshold(scores: np.ndarray, positives: np.ndarray, default: float) -> float:
    """The F1-maximising threshold for 1-D scores and bool labels, from one sort and two cumulative sums.

    Sorted descending, the i-th tie group's end gives the counts of "predict everything scoring >= its
    score": TP and FP are cumulative sums, FN = total positives - TP. ``default`` when there is no positive.
    """
    num_pos = int(positives.sum())
    if num_pos == 0:
        return float(default)
    order = np.argsort(scores)[::-1]
    s, pos = scores[order], positives[order]
    tp = np.cumsum(pos, dtype=np.float64)
    fp = np.cumsum(~pos, dtype=np.float64)
    group_end = np.append(s[1:] != s[:-1], True)
    tp, fp, group_scores = tp[group_end], fp[group_end], s[group_end]
    _, _, f1 = _prf(tp, fp, num_pos - tp)
    best = int(np.argmax(f1))  # the first maximum: the highest threshold among ties
    if best + 1 == group_scores.size:
        return float(group_scores[best])  # predict all: the lowest score itself
    return _midpoint(float(group_scores[best]), float(group_scores[best + 1]))


def _midpoint(hi: float, lo: float) -> float:
    """(hi + lo) / 2 when it lies in (lo, hi] in float64 and in float32 (the Predictor compares in float32);
    else ``hi``, which keeps the validation predictions exact when hi and lo are adjacent floats."""
    mid = (hi + lo) / 2
    mid32 = float(np.float32(mid))
    if lo < mid <= hi and lo < mid32 <= hi:
        return mid
    return hi


def _class_f1(cells: Cells, thresholds: np.ndarray) -> np.ndarray:
    """Per-class F1 on known entries, with mlic.evaluation.metrics' prediction rule and F1 definition. (C,)"""
    counts = confusion(cells, thresholds)
    return _prf(counts["class_tp"], counts["class_fp"], counts["class_fn"])[2]


def resolve_thresholds(
    stored: Sequence[float] | None, n: int, override: float | None, method: str | None = None
) -> tuple[np.ndarray, str]:
    """(per-class thresholds, where they came from): ``override``, else the stored ones, else 0.5.

    The one rule evaluate, predict and serve apply to a checkpoint's or an export's thresholds.
    """
    if override is not None:
        return np.full(n, override, np.float64), f"override {override}"
    if stored is not None:
        return np.asarray(stored, np.float64), f"checkpoint ({method or 'tuned'})"
    return np.full(n, 0.5, np.float64), "0.5 (checkpoint has no tuned thresholds)"

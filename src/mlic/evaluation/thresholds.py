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
  least this". The objective (``--threshold-objective``: F1, F-beta, the best precision at a required
  recall, the best recall at a required precision) is computed at each.
- The plateau: the run of neighbouring operating points whose objective is within ``PLATEAU_TOLERANCE``
  of the best (the best with the highest threshold among ties, and its neighbours). The threshold is put in
  the middle of the plateau's threshold interval *in logit space*, not at its edge: on nearly separable
  classes every threshold between the highest negative and the lowest positive is equally good on
  validation, and the edge (0.997, 0.009 on the demo) is where a new image most easily falls on the wrong
  side; logit space because that is where a model's scores move from one sample of images to the next.
- Shrinkage: a class's threshold is then pulled toward a prior, in logit space, with weight
  K / (K + its known positives) (``--threshold-shrinkage K``): the location of an optimum over a dozen
  positives is mostly the noise of those dozen, and a class with many positives keeps its own threshold.
  For calibrated probabilities and F1 (or F-beta) the prior is the class's own: the F-beta-optimal
  threshold of a calibrated classifier is F* / (1 + beta^2), half the best F1 (Lipton, Elkan and
  Naryanaswamy, "Optimal Thresholding of Classifiers to Maximize F1 Measure", ECML PKDD 2014), and the
  value F* of a class's best F1 is far steadier over few positives than where it is reached. Otherwise
  (uncalibrated scores, or the precision/recall objectives) the prior is the global threshold, which is
  set by the frequent classes and sits too high for the rare ones of a long tail (on the long-tailed
  collages of ``benchmarks/thresholds.py``, shrinking toward it cost more macro-F1 than it saved).
- A class with fewer than ``min_positives`` known positives (and always one with none, or one where the
  objective cannot be met) gets the global threshold outright. The global threshold is the plateau middle
  of the objective over all known entries pooled (micro); with no positive at all it is ``fixed``.
- Thresholds are clamped to [1e-6, 1]: a threshold of 0 would predict every label of every image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mlic.config import THRESHOLD_METHODS as METHODS
from mlic.config import is_objective
from mlic.evaluation.cells import Cells, confusion, rank_block
from mlic.evaluation.metrics import _prf, _validate

# The lowest threshold handed out; see the module docstring.
_MIN_THRESHOLD = 1e-6
# Operating points whose objective is this close to the best count as the same plateau.
PLATEAU_TOLERANCE = 0.005
# Scores are clipped this far from 0 and 1 before taking logits (float32 probabilities saturate there).
_LOGIT_EPS = 1e-7
_LEGACY = {"per_class_f1": "per_class", "global_f1": "global"}  # method names before objectives existed


@dataclass(frozen=True)
class Objective:
    """What a threshold maximises: ``f1``, ``f_beta:B``, ``precision_at_recall:R``, ``recall_at_precision:P``."""

    kind: str
    value: float = 1.0

    @classmethod
    def parse(cls, text: str) -> Objective:
        if not is_objective(text):
            raise ValueError(f"unknown threshold objective {text!r}; use f1, f_beta:B, precision_at_recall:R or "
                             "recall_at_precision:P")  # fmt: skip
        kind, _, value = text.partition(":")
        return cls(kind, float(value) if value else 1.0)

    def __str__(self) -> str:
        return self.kind if self.kind == "f1" else f"{self.kind}:{self.value:g}"

    def calibrated_optimum(self, best: float) -> float | None:
        """The threshold that reaches ``best`` on calibrated probabilities, where theory gives one (F-beta:
        F* / (1 + beta^2), Lipton et al. 2014), else None."""
        if self.kind == "f1":
            return best / 2
        if self.kind == "f_beta":
            return best / (1 + self.value**2)
        return None

    def at(self, tp: np.ndarray, fp: np.ndarray, num_pos) -> np.ndarray:
        """The objective at operating points with these counts; -1 where a required level is not reached."""
        fn = num_pos - tp
        precision, recall, f1 = _prf(tp, fp, fn)
        if self.kind == "f1":
            return f1
        if self.kind == "f_beta":
            b2 = self.value**2
            den = (1 + b2) * tp + b2 * fn + fp
            return np.divide((1 + b2) * tp, den, out=np.zeros_like(precision), where=den > 0)
        if self.kind == "precision_at_recall":
            return np.where(recall >= self.value - 1e-12, precision, -1.0)
        return np.where(precision >= self.value - 1e-12, recall, -1.0)


@dataclass
class ThresholdResult:
    """Tuned thresholds and what they did on the validation set.

    ``f1_before`` is each class's validation F1 at ``baseline_threshold`` (the ``fixed`` value), ``f1_after``
    at the tuned ``thresholds``; ``fallback_classes`` lists the classes that got ``global_threshold``
    outright (too few known positives, or an objective they cannot meet).
    """

    thresholds: np.ndarray  # (C,) float64
    method: str
    global_threshold: float
    fallback_classes: list[int]
    f1_before: np.ndarray  # (C,)
    f1_after: np.ndarray  # (C,)
    baseline_threshold: float = 0.5
    objective: str = "f1"
    shrinkage: float = 0.0
    plateaus: list[tuple[float, float] | None] = field(default_factory=list)  # per class (low, high) edges
    prior: str = "global"  # what shrinkage pulls toward: "global" or "calibrated optimum" (see the module)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python floats, ints and lists, ready for json.dumps (e.g. into a checkpoint's meta.json)."""
        return {
            "method": self.method,
            "objective": self.objective,
            "shrinkage": float(self.shrinkage),
            "thresholds": [float(t) for t in self.thresholds],
            "global_threshold": float(self.global_threshold),
            "fallback_classes": [int(c) for c in self.fallback_classes],
            "baseline_threshold": float(self.baseline_threshold),
            "f1_before": [float(f) for f in self.f1_before],
            "f1_after": [float(f) for f in self.f1_after],
            "plateaus": [None if p is None else [float(p[0]), float(p[1])] for p in self.plateaus],
            "prior": self.prior,
        }


def tune_thresholds(probs: ArrayLike, targets: ArrayLike, mask: ArrayLike | None = None, **options) -> ThresholdResult:
    """Thresholds for (N, C) validation ``probs`` and 0/1 ``targets`` (``mask``: 1 = known; None = all known);
    ``options`` are ``tune_on_cells``'s (method, objective, min_positives, shrinkage, fixed, calibrated)."""
    probs, targets, known = _validate(probs, targets, mask)
    return tune_on_cells(Cells.from_dense(probs, targets, known), **options)


def tune_on_cells(
    cells: Cells,
    *,
    method: str = "per_class",
    objective: str = "f1",
    min_positives: int = 5,
    shrinkage: float = 0.0,
    fixed: float = 0.5,
    calibrated: bool = False,
) -> ThresholdResult:
    """Thresholds for the known cells of a validation set (sparse labels: only those are stored).

    method: "per_class" tunes each class's threshold for ``objective``, "global" one threshold for all
    classes (the objective over all known entries pooled), "fixed" uses ``fixed`` for every class.
    ``calibrated``: the scores are calibrated probabilities, so shrinkage may pull toward each class's own
    calibrated optimum (see the module docstring).
    """
    method = _LEGACY.get(method, method)
    if method not in METHODS:
        raise ValueError(f"unknown threshold method {method!r}; choose one of: {', '.join(METHODS)}")
    if min_positives < 0 or shrinkage < 0:
        raise ValueError(f"min_positives and shrinkage must be >= 0, got {min_positives} and {shrinkage}")
    if not 0 < fixed <= 1:
        raise ValueError(f"fixed threshold must lie in (0, 1], got {fixed}")
    goal = Objective.parse(objective)
    num_classes = cells.num_classes
    pooled = _pooled_plateau(cells.scores, cells.targets, goal)
    global_threshold = fixed if pooled is None else float(np.clip(pooled[0], _MIN_THRESHOLD, 1.0))
    fallback: list[int] = []
    thresholds = np.full(num_classes, fixed if method == "fixed" else global_threshold, dtype=np.float64)
    plateaus: list[tuple[float, float] | None] = [None] * num_classes
    if method == "per_class":
        num_positives = np.bincount(cells.cols[cells.targets], minlength=num_classes)
        tuned = _class_plateaus(cells, goal)
        for c in range(num_classes):
            if num_positives[c] < max(min_positives, 1) or tuned[c] is None:
                fallback.append(c)
                continue
            middle, low, high, best = tuned[c]
            plateaus[c] = (low, high)
            weight = shrinkage / (shrinkage + num_positives[c]) if shrinkage > 0 else 0.0
            own = goal.calibrated_optimum(best) if calibrated else None
            prior = global_threshold if own is None else float(np.clip(own, _MIN_THRESHOLD, 1.0))
            thresholds[c] = _shrunk(middle, prior, weight)
        thresholds = np.clip(thresholds, _MIN_THRESHOLD, 1.0)
    return ThresholdResult(
        thresholds=thresholds,
        method=method,
        global_threshold=global_threshold,
        fallback_classes=fallback,
        f1_before=_class_f1(cells, np.full(num_classes, float(fixed))),
        f1_after=_class_f1(cells, thresholds),
        baseline_threshold=float(fixed),
        objective=str(goal),
        shrinkage=float(shrinkage) if method == "per_class" else 0.0,
        plateaus=plateaus,
        prior="calibrated optimum" if calibrated and goal.calibrated_optimum(1.0) is not None else "global",
    )


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _LOGIT_EPS, 1 - _LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


def _shrunk(threshold: float, toward: float, weight: float) -> float:
    """``threshold`` moved ``weight`` of the way to ``toward``, in logit space."""
    if weight <= 0:
        return threshold
    return _sigmoid(float((1 - weight) * _logit(threshold) + weight * _logit(toward)))


def _plateau(scores: np.ndarray, tp: np.ndarray, fp: np.ndarray, num_pos: float, goal: Objective):
    """(threshold, low edge, high edge, best objective value) of the best plateau over operating points sorted
    by descending score (tie-group ends), or None where the objective is never met. See the module docstring."""
    values = goal.at(tp, fp, num_pos)
    best = float(values.max())
    if best < 0:
        return None
    top = int(np.argmax(values == best))  # the first maximum: the highest threshold
    outside = np.flatnonzero(values < best - PLATEAU_TOLERANCE)
    first = int(outside[outside < top].max()) + 1 if (outside < top).any() else 0
    last = int(outside[outside > top].min()) - 1 if (outside > top).any() else len(values) - 1
    high = float(scores[first])
    low = float(scores[last + 1]) if last + 1 < len(values) else float(scores[last])
    # thresholds in (low, high] predict one of the plateau's operating points; its middle in logit space
    middle = _sigmoid(float((_logit(high) + _logit(low)) / 2)) if low < high else high
    if not _inside(middle, low, high, last + 1 < len(values)):
        middle = _midpoint(high, low) if last + 1 < len(values) else high
    return middle, low, high, best


def _inside(t: float, low: float, high: float, open_low: bool) -> bool:
    """Whether threshold ``t`` (also as float32, as the Predictor compares) lies in (low, high] (or [low, ...])."""
    t32 = float(np.float32(t))
    above = (low < t and low < t32) if open_low else (low <= t and low <= t32)
    return above and t <= high and t32 <= high


def _pooled_plateau(scores: np.ndarray, positives: np.ndarray, goal: Objective):
    """The plateau of all known entries pooled (the global threshold's), or None without any positive."""
    num_pos = int(positives.sum())
    if num_pos == 0:
        return None
    order = np.argsort(scores, kind="stable")[::-1]
    s, pos = scores[order], positives[order]
    tp = np.cumsum(pos, dtype=np.float64)
    fp = np.cumsum(~pos, dtype=np.float64)
    group_end = np.append(s[1:] != s[:-1], True)
    return _plateau(s[group_end], tp[group_end], fp[group_end], num_pos, goal)


def _class_plateaus(cells: Cells, goal: Objective) -> list[tuple[float, float, float, float] | None]:
    """Per class, its plateau (``_plateau``), from one sort per block of classes."""
    out: list[tuple[float, float, float, float] | None] = [None] * cells.num_classes
    for c0, c1 in cells.blocks():
        b = rank_block(cells, c0, c1)
        if not len(b.cls):
            continue
        group = b.cls[b.is_end]
        tp, fp, scores, num_pos = b.tp[b.is_end], b.fp[b.is_end], b.scores[b.is_end], b.num_pos
        starts = np.flatnonzero(np.concatenate([[True], group[1:] != group[:-1]]))
        ends = np.concatenate([starts[1:], [len(group)]])
        for first, last, cls in zip(starts.tolist(), ends.tolist(), group[starts].tolist(), strict=True):
            if num_pos[cls] > 0:
                out[c0 + cls] = _plateau(scores[first:last], tp[first:last], fp[first:last], num_pos[cls], goal)
    return out


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

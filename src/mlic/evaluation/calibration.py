"""Per-class calibration of a model's probabilities, fitted on validation, applied wherever probabilities leave it.

A network trained with BCE is rarely calibrated per class: on the demo, ``circle`` scores 0.99 on negatives
and ``cross`` 0.01 on positives, so their F1-best thresholds sat at 0.997 and 0.009, where a small shift of
the scores on new images costs many errors, and a "70%" means something different for every class.

Each class gets Platt scaling (Platt 1999): calibrated logit = a * z + b, with a > 0 so the ranking (AP,
AUC) never changes, fitted by Newton's method on the class's known validation cells with Platt's smoothed
targets ((N+ + 1) / (N+ + 2) and 1 / (N- + 2), which keep a separable class's fit finite); or temperature
scaling (b = 0). A class keeps its fit only if it lowers that class's validation log-loss (with the plain
0/1 labels), else it stays as it was (a = 1, b = 0); a class without both a positive and a negative is
never fitted.

The fit is stored in the checkpoint and folded into the classifier when the checkpoint is loaded for
inference (``mlic.models.calibrate``), so ``predict``, ``evaluate``, ``serve``, the report, Grad-CAM and the
exported ONNX/TorchScript graphs all give the same calibrated probabilities, and thresholds are tuned on them.
Expected calibration error (ECE) is reported per class before and after, with 15 equal-width bins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mlic.config import CALIBRATIONS as METHODS
from mlic.evaluation.cells import Cells

ECE_BINS = 15
_EPS = 1e-15  # float64 logits stay finite and distinct: ranking ties only where the scores tie
_NEWTON_STEPS = 50


@dataclass(frozen=True)
class Calibration:
    """Per class: calibrated logit = scale * logit + shift (identity where ``fitted`` is False)."""

    method: str
    scale: np.ndarray  # (C,) > 0
    shift: np.ndarray  # (C,)
    fitted: np.ndarray  # (C,) bool

    @classmethod
    def identity(cls, num_classes: int) -> Calibration:
        return cls("none", np.ones(num_classes), np.zeros(num_classes), np.zeros(num_classes, bool))

    def logits(self, z: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        """Calibrated logits of (N, C) logits, or of 1-D logits of classes ``cols``."""
        if cols is None:
            return z * self.scale + self.shift
        return z * self.scale[cols] + self.shift[cols]

    def probs(self, p: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        return sigmoid(self.logits(logit(p), cols))

    def uncalibrated(self, p: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        """The probabilities before calibration, from calibrated ones (the fit is invertible: scale > 0)."""
        scale, shift = (self.scale, self.shift) if cols is None else (self.scale[cols], self.shift[cols])
        return sigmoid((logit(p) - shift) / scale)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "scale": [float(x) for x in self.scale],
                "shift": [float(x) for x in self.shift], "fitted": [bool(x) for x in self.fitted]}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(str(data["method"]), np.asarray(data["scale"], np.float64), np.asarray(data["shift"], np.float64),
                   np.asarray(data["fitted"], bool))  # fmt: skip


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))  # no overflow warnings at large |z|


def fit_calibration(cells: Cells, method: str = "platt") -> tuple[Calibration, dict[str, Any]]:
    """The per-class calibration of validation ``cells`` (scores = probabilities) and what it did:
    {"log_loss_before", "log_loss_after", "ece_before", "ece_after"} per class (None where no known cell)."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration {method!r}; choose one of: {', '.join(METHODS)}")
    c, cols = cells.num_classes, cells.cols
    z, y = logit(cells.scores), cells.targets.astype(np.float64)
    if method == "none":
        calibration = Calibration.identity(c)
    else:
        scale, shift = _newton(z, y, cols, c, with_shift=method == "platt")
        before, after = _log_loss(z, y, cols, c), _log_loss(scale[cols] * z + shift[cols], y, cols, c)
        npos = np.bincount(cols, weights=y, minlength=c)
        nneg = np.bincount(cols, weights=1 - y, minlength=c)
        keep = (npos > 0) & (nneg > 0) & (after < before) & (scale > 0) & np.isfinite(scale) & np.isfinite(shift)
        calibration = Calibration(method, np.where(keep, scale, 1.0), np.where(keep, shift, 0.0), keep)
    calibrated = sigmoid(calibration.logits(z, cols))
    counts = np.bincount(cols, minlength=c)
    known = counts > 0

    def per_class(values: np.ndarray) -> list[float | None]:
        return [float(v) if k else None for v, k in zip(values, known, strict=True)]

    info = {
        "log_loss_before": per_class(_log_loss(z, y, cols, c)),
        "log_loss_after": per_class(_log_loss(calibration.logits(z, cols), y, cols, c)),
        "ece_before": per_class(expected_calibration_error(cells.scores, y, cols, c)),
        "ece_after": per_class(expected_calibration_error(calibrated, y, cols, c)),
    }
    return calibration, info


def _newton(z: np.ndarray, y: np.ndarray, cols: np.ndarray, c: int, *, with_shift: bool):
    """Per class, (a, b) minimising the log-loss of sigmoid(a z + b) against Platt's smoothed targets:
    Newton steps, each halved per class until it lowers that class's loss (a plain step overshoots on
    saturated scores)."""
    npos = np.bincount(cols, weights=y, minlength=c)
    nneg = np.bincount(cols, weights=1 - y, minlength=c)
    target = np.where(y > 0, ((npos + 1) / (npos + 2))[cols], (1 / (nneg + 2))[cols])

    def loss(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        t = a[cols] * z + b[cols]
        return np.bincount(cols, np.logaddexp(0.0, t) - target * t, c)

    a, b = np.ones(c), np.zeros(c)
    current = loss(a, b)
    for _ in range(_NEWTON_STEPS):
        p = sigmoid(a[cols] * z + b[cols])
        r, w = p - target, np.maximum(p * (1 - p), 1e-12)
        ga, gb = np.bincount(cols, r * z, c), np.bincount(cols, r, c)  # gradient
        haa, hab, hbb = np.bincount(cols, w * z * z, c), np.bincount(cols, w * z, c), np.bincount(cols, w, c)
        haa, hbb = haa + 1e-9, hbb + 1e-9  # a class of one cell: a tiny ridge keeps the system solvable
        if with_shift:
            det = np.maximum(haa * hbb - hab * hab, 1e-18)
            da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        else:
            da, db = ga / haa, np.zeros(c)
        step = np.ones(c)
        for _ in range(30):  # backtracking, per class
            new_a, new_b = np.maximum(a - step * da, 1e-3), b - step * db  # a > 0 keeps the ranking
            trial = loss(new_a, new_b)
            worse = trial > current + 1e-12
            if not worse.any():
                break
            step = np.where(worse, step / 2, step)
        moved = ~worse
        a, b, current = np.where(moved, new_a, a), np.where(moved, new_b, b), np.where(moved, trial, current)
        if max(np.abs(step * da).max(initial=0), np.abs(step * db).max(initial=0)) < 1e-9:
            break
    return a, b


def _log_loss(z: np.ndarray, y: np.ndarray, cols: np.ndarray, c: int) -> np.ndarray:
    """(C,) mean binary log-loss per class of logits ``z`` against 0/1 ``y`` (NaN where a class has no cell)."""
    loss = np.logaddexp(0.0, z) - y * z  # -log sigmoid(z) for y=1, -log(1 - sigmoid(z)) for y=0; stable
    counts = np.bincount(cols, minlength=c)
    return np.divide(np.bincount(cols, loss, c), counts, out=np.full(c, np.nan), where=counts > 0)


def expected_calibration_error(p: np.ndarray, y: np.ndarray, cols: np.ndarray, c: int) -> np.ndarray:
    """(C,) ECE per class: sum over ``ECE_BINS`` equal-width bins of (share of cells) x |positive rate - mean p|."""
    bins = np.minimum((np.asarray(p) * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    key = cols * ECE_BINS + bins
    n = np.bincount(key, minlength=c * ECE_BINS).reshape(c, ECE_BINS)
    pos = np.bincount(key, weights=y, minlength=c * ECE_BINS).reshape(c, ECE_BINS)
    conf = np.bincount(key, weights=p, minlength=c * ECE_BINS).reshape(c, ECE_BINS)
    total = n.sum(axis=1)
    gap = np.abs(pos - conf)  # = n * |rate - mean p| per bin
    return np.divide(gap.sum(axis=1), total, out=np.full(c, np.nan), where=total > 0)


def reliability(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """One class's reliability diagram: per non-empty bin, its mean probability, positive rate and cell count."""
    index = np.minimum((np.asarray(p) * bins).astype(np.int64), bins - 1)
    out = []
    for k in range(bins):
        here = index == k
        if here.any():
            out.append({"mean_p": float(p[here].mean()), "rate": float(y[here].mean()), "count": int(here.sum())})
    return out


def calibrate_cells(cells: Cells, calibration: Calibration) -> Cells:
    """The same cells with calibrated scores (the order within each class is unchanged: scale > 0)."""
    scores = calibration.probs(cells.scores, cells.cols)
    return Cells(cells.num_images, cells.num_classes, cells.rows, scores, cells.targets, cells.class_ptr)

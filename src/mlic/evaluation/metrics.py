"""Multi-label metrics: pure numpy functions on (N, C) probabilities, targets and known-label masks.

Inputs: ``probs`` (N, C) in [0, 1]; ``targets`` (N, C) of 0/1; ``mask`` (N, C) of 0/1 where 0 means
"label unknown for this image and class" (None: every entry is known); ``thresholds`` a scalar or a (C,)
array. A label is predicted when ``probs >= threshold``.

Rules (the tests hold every one of them against scikit-learn):

- Precision, recall and F1 follow scikit-learn's definitions with ``zero_division=0``, so with
  ``mask=None`` they equal ``precision_recall_fscore_support`` for the micro, macro and samples averages.
  Macro P/R/F1 average over all classes, as scikit-learn does.
- Average precision is the step-wise sum used by ``average_precision_score`` (no interpolation; tied
  scores form one operating point). ROC AUC equals ``roc_auc_score``: tied scores earn half credit.
- Macro AP (``mAP``) averages only classes with at least one known positive; macro ROC AUC only classes
  with at least one known positive and one known negative. The others are listed in
  ``excluded_from_map`` / ``excluded_from_auc``, never counted as 0 or NaN. With no class left the value
  is None.
- With a mask, every metric skips unknown entries: micro averages sum known entries only; per-class
  metrics use only the images where that class is known; per-image metrics (exact match, Hamming loss,
  samples P/R/F1) use only that image's known entries, and an image with no known entry is skipped.
  So a metric with unknowns equals the same metric computed after dropping them.
- An average over an empty set (every image fully unknown) is None rather than a made-up number.

scikit-learn is used by the tests only; this module needs numpy alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mlic.evaluation.cells import Cells, confusion, ranking_metrics


def predict_labels(probs: ArrayLike, thresholds: float | ArrayLike = 0.5) -> np.ndarray:
    """Boolean predictions ``probs >= thresholds``; thresholds is a scalar or one value per class (last axis).

    The comparison is made in float64, so float32 probs meet a scalar threshold and a per-class array alike
    (numpy alone would compare float32 probs to a Python float in float32 but to a float64 array in float64).
    """
    probs = np.asarray(probs, dtype=np.float64)
    thr = _as_thresholds(thresholds, probs.shape[-1] if probs.ndim else 1)
    return probs >= thr


def average_precision(scores: ArrayLike, targets: ArrayLike) -> float:
    """Average precision of one class, equal to scikit-learn's ``average_precision_score``.

    Raises ValueError when ``targets`` holds no positive, since AP is then undefined.
    """
    scores, targets = _check_binary_problem(scores, targets)
    if not targets.any():
        raise ValueError("average precision is undefined without a positive target")
    ap, _ = ranking_metrics(Cells.from_dense(scores[:, None], targets[:, None], np.ones((targets.size, 1), bool)))
    return float(ap[0])


def roc_auc(scores: ArrayLike, targets: ArrayLike) -> float:
    """Area under the ROC curve of one class, equal to scikit-learn's ``roc_auc_score``.

    Raises ValueError unless ``targets`` holds both a positive and a negative.
    """
    scores, targets = _check_binary_problem(scores, targets)
    if targets.all() or not targets.any():
        raise ValueError("ROC AUC is undefined unless targets hold both a positive and a negative")
    _, auc = ranking_metrics(Cells.from_dense(scores[:, None], targets[:, None], np.ones((targets.size, 1), bool)))
    return float(auc[0])


def compute_metrics(
    probs: ArrayLike,
    targets: ArrayLike,
    mask: ArrayLike | None = None,
    thresholds: float | ArrayLike = 0.5,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Every multi-label metric mlic reports, as a JSON-serialisable dict (see the module docstring)."""
    probs, targets, known = _validate(probs, targets, mask)
    return metrics_from_cells(Cells.from_dense(probs, targets, known), thresholds, class_names)


def metrics_from_cells(
    cells: Cells, thresholds: float | ArrayLike = 0.5, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """``compute_metrics`` of the known cells of an evaluation (unknown cells are not even stored)."""
    num_images, num_classes = cells.num_images, cells.num_classes
    if num_classes == 0:
        raise ValueError("need at least one class")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"got {len(class_names)} class names for {num_classes} classes")
    names: list[Any] = list(class_names) if class_names is not None else list(range(num_classes))
    thr = _as_thresholds(thresholds, num_classes)
    counts = confusion(cells, np.broadcast_to(thr, (num_classes,)))

    result: dict[str, Any] = {"num_images": num_images, "num_classes": num_classes}
    result.update(_image_metrics(counts["image_tp"], counts["image_fp"], counts["image_fn"], counts["image_known"]))
    class_tp, class_fp, class_fn = counts["class_tp"], counts["class_fp"], counts["class_fn"]
    class_p, class_r, class_f1 = _prf(class_tp, class_fp, class_fn)
    micro_p, micro_r, micro_f1 = _prf(class_tp.sum(), class_fp.sum(), class_fn.sum())
    result.update(
        precision_micro=float(micro_p),
        recall_micro=float(micro_r),
        f1_micro=float(micro_f1),
        precision_macro=float(class_p.mean()),
        recall_macro=float(class_r.mean()),
        f1_macro=float(class_f1.mean()),
    )
    ap, auc = ranking_metrics(cells)
    has_ap, has_auc = ~np.isnan(ap), ~np.isnan(auc)
    result["mAP"] = float(ap[has_ap].mean()) if has_ap.any() else None
    result["roc_auc_macro"] = float(auc[has_auc].mean()) if has_auc.any() else None
    result["excluded_from_map"] = [names[c] for c in np.flatnonzero(~has_ap)]
    result["excluded_from_auc"] = [names[c] for c in np.flatnonzero(~has_auc)]
    support = counts["class_support"]
    result["per_class"] = [
        {
            "name": names[c],
            "support": int(support[c]),
            "ap": float(ap[c]) if has_ap[c] else None,
            "roc_auc": float(auc[c]) if has_auc[c] else None,
            "precision": float(class_p[c]),
            "recall": float(class_r[c]),
            "f1": float(class_f1[c]),
            "threshold": float(thr if thr.ndim == 0 else thr[c]),
        }
        for c in range(num_classes)
    ]
    return result


def _image_metrics(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, num_known: np.ndarray) -> dict[str, Any]:
    """Per-image metrics averaged over images with at least one known entry; inputs are (N,) counts."""
    rows = num_known > 0
    if not rows.any():
        keys = ("hamming_loss", "exact_match", "precision_samples", "recall_samples", "f1_samples")
        return dict.fromkeys(keys)
    tp, fp, fn, num_known = tp[rows], fp[rows], fn[rows], num_known[rows]
    errors = fp + fn
    precision, recall, f1 = _prf(tp, fp, fn)
    return {
        "hamming_loss": float((errors / num_known).mean()),
        "exact_match": float((errors == 0).mean()),
        "precision_samples": float(precision.mean()),
        "recall_samples": float(recall.mean()),
        "f1_samples": float(f1.mean()),
    }


def _prf(tp: ArrayLike, fp: ArrayLike, fn: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 from counts, 0 where a denominator is 0 (scikit-learn's zero_division=0).

    F1 is 2TP / (2TP + FP + FN), scikit-learn's form, which is also defined when precision and recall are 0.
    """
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    return _safe_div(tp, tp + fp), _safe_div(tp, tp + fn), _safe_div(2 * tp, 2 * tp + fp + fn)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _check_binary_problem(scores: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """1-D float scores and bool targets of equal length, or a ValueError."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 1 or scores.shape != targets.shape:
        raise ValueError(f"scores and targets must be 1-D of equal length, got {scores.shape} and {targets.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return scores, _as_binary(targets, "targets")


def _validate(probs: ArrayLike, targets: ArrayLike, mask: ArrayLike | None) -> tuple[np.ndarray, ...]:
    """Float64 probs and bool targets/known of one (N, C) shape; unknown targets are ignored, not checked."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    if probs.ndim != 2 or probs.shape != targets.shape:
        raise ValueError(f"probs and targets must be 2-D (N, C) of one shape, got {probs.shape} and {targets.shape}")
    if probs.shape[1] == 0:
        raise ValueError("need at least one class")
    if mask is None:
        known = np.ones(probs.shape, dtype=bool)
    else:
        mask = np.asarray(mask)
        if mask.shape != probs.shape:
            raise ValueError(f"mask must have shape {probs.shape}, got {mask.shape}")
        known = _as_binary(mask, "mask")
    if not np.isfinite(probs).all():
        raise ValueError("probs must be finite")
    if probs.size and (probs.min() < 0 or probs.max() > 1):
        raise ValueError("probs must lie in [0, 1]; apply a sigmoid to logits first")
    return probs, _as_binary(np.where(known, targets, 0), "targets"), known


def _as_binary(values: np.ndarray, what: str) -> np.ndarray:
    if values.dtype == bool:
        return values
    if not np.isin(values, (0, 1)).all():
        raise ValueError(f"{what} must contain only 0 and 1")
    return values == 1


def _as_thresholds(thresholds: float | ArrayLike, num_classes: int) -> np.ndarray:
    """A 0-d or (C,) float array; a (C,) of the wrong length is an error rather than a silent broadcast."""
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim > 1 or (thr.ndim == 1 and thr.shape[0] != num_classes):
        raise ValueError(f"thresholds must be a scalar or have shape ({num_classes},), got {thr.shape}")
    if np.isnan(thr).any():
        raise ValueError("thresholds must not be NaN")
    return thr

"""Bootstrap confidence intervals of every metric: how much the numbers would move on another sample of images.

The evaluated images are resampled with replacement (the nonparametric bootstrap, Efron 1979), B times
(``mlic evaluate --bootstrap B``), and each metric's interval is the 2.5th to 97.5th percentile of its B
values (the percentile interval). A resample is a count per image (multinomial), so each replicate is the
same cells weighted by those counts: the cells are sorted once per class, and AP, precision, recall and F1
of every replicate come from weighted cumulative sums, never from a new sort. This is exactly the
metrics module's arithmetic with counts as weights (an image drawn twice counts twice), so a replicate
with all weights 1 reproduces the point estimates.

An interval wider than ``WIDE`` (AP or F1) flags its class: its numbers rest on too few examples to
compare it with others. A class with no positive in a replicate has no AP there; its interval is taken
over the replicates where it has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlic.evaluation.cells import Cells, confusion, rank_block

LEVEL = 0.95
WIDE = 0.2  # an AP or F1 interval this wide flags the class
CHUNK_CELLS = 4_000_000  # replicates are computed this many (replicate, cell) pairs at a time (~32 MB an array)
OVERALL = ("mAP", "f1_micro", "f1_macro", "f1_samples", "precision_micro", "precision_macro", "recall_micro",
           "recall_macro", "hamming_loss", "exact_match")  # fmt: skip
PER_CLASS = ("ap", "precision", "recall", "f1")


@dataclass(frozen=True)
class Resampling:
    """How intervals are drawn: ``replicates`` resamples (0: no intervals) from ``seed``."""

    replicates: int = 0
    seed: int = 0


def bootstrap_intervals(
    cells: Cells,
    thresholds: np.ndarray | float,
    *,
    replicates: int = 1000,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """95% percentile intervals of the overall metrics and of each class's AP, precision, recall and F1."""
    if replicates < 2:
        raise ValueError(f"the bootstrap needs at least 2 replicates, got {replicates}")
    thr = np.broadcast_to(np.asarray(thresholds, np.float64), (cells.num_classes,))
    names = list(class_names) if class_names is not None else list(range(cells.num_classes))
    rng = np.random.default_rng(seed)
    n = cells.num_images
    per_chunk = max(1, CHUNK_CELLS // max(len(cells.rows), n, 1))
    values: dict[str, list[np.ndarray]] = {k: [] for k in (*OVERALL, *PER_CLASS)}
    plan = _Plan(cells, thr)
    for start in range(0, replicates, per_chunk):
        count = min(per_chunk, replicates - start)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=count).astype(np.float64)  # (R, N)
        for key, v in plan.metrics(weights).items():
            values[key].append(v)
    stacked = {k: np.concatenate(v) for k, v in values.items()}
    low, high = (1 - LEVEL) / 2 * 100, (1 + LEVEL) / 2 * 100
    overall = {k: _interval(stacked[k], low, high) for k in OVERALL}
    per_class = []
    for c, name in enumerate(names):
        entry: dict[str, Any] = {"name": name}
        for k in PER_CLASS:
            entry[k] = _interval(stacked[k][:, c], low, high)
        entry["wide"] = any(entry[k] is not None and entry[k][1] - entry[k][0] > WIDE for k in ("ap", "f1"))
        per_class.append(entry)
    return {"replicates": int(replicates), "level": LEVEL, "seed": int(seed), "method": "percentile",
            "overall": overall, "per_class": per_class,
            "wide_classes": [e["name"] for e in per_class if e["wide"]]}  # fmt: skip


def _interval(samples: np.ndarray, low: float, high: float) -> list[float] | None:
    finite = samples[np.isfinite(samples)]
    if len(finite) < 2:
        return None
    return [float(np.percentile(finite, low)), float(np.percentile(finite, high))]


class _Plan:
    """What every replicate shares: the cells sorted per class with their tie groups, and the per-cell and
    per-image outcomes at the thresholds. ``metrics(weights)`` then needs only weighted sums."""

    def __init__(self, cells: Cells, thresholds: np.ndarray) -> None:
        c = cells.num_classes
        self.c = c
        order_rows, order_pos, order_cls, group_ends = [], [], [], []
        offset = 0
        for c0, c1 in cells.blocks():  # one sort per block, as the metrics module does
            b = rank_block(cells, c0, c1)
            order_rows.append(cells.rows[int(cells.class_ptr[c0]) :][b.order])
            order_pos.append(b.pos)
            order_cls.append(b.cls + c0)
            group_ends.append(np.flatnonzero(b.is_end) + offset)
            offset += len(b.cls)
        self.rows = np.concatenate(order_rows) if order_rows else np.zeros(0, np.int64)
        self.pos = np.concatenate(order_pos) if order_pos else np.zeros(0)
        self.cls = np.concatenate(order_cls) if order_cls else np.zeros(0, np.int64)
        self.ends = np.concatenate(group_ends) if group_ends else np.zeros(0, np.int64)
        self.end_cls = self.cls[self.ends]
        # at the thresholds: per cell predicted?, and per image its counts (image metrics are means over images)
        counts = confusion(cells, thresholds)
        pred = cells.scores >= thresholds[cells.cols]
        self.cell_rows, self.cell_cols = cells.rows, cells.cols
        self.tp_cell = (pred & cells.targets).astype(np.float64)
        self.fp_cell = (pred & ~cells.targets).astype(np.float64)
        self.fn_cell = (~pred & cells.targets).astype(np.float64)
        known = counts["image_known"]
        self.image_rows = known > 0
        tp, fp, fn = (counts[f"image_{k}"] for k in ("tp", "fp", "fn"))
        errors = fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            self.image_hamming = np.where(known > 0, errors / np.maximum(known, 1), 0.0)
            self.image_exact = (errors == 0).astype(np.float64)
            self.image_f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)

    def _per_class(self, w_cells: np.ndarray, flags: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(R, C) sums of ``w_cells * flags`` per class."""
        out = np.zeros((w_cells.shape[0], self.c))
        for_sum = w_cells * flags
        order = np.argsort(cols, kind="stable")
        sorted_cols = cols[order]
        starts = np.flatnonzero(np.concatenate([[True], sorted_cols[1:] != sorted_cols[:-1]])) if len(cols) else []
        if len(starts):
            sums = np.add.reduceat(for_sum[:, order], starts, axis=1)
            out[:, sorted_cols[starts]] = sums
        return out

    def metrics(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric of each replicate; ``weights``: (R, N) times each image is drawn."""
        r = weights.shape[0]
        out: dict[str, np.ndarray] = {}
        # per class at the thresholds
        w = weights[:, self.cell_rows]
        tp, fp, fn = (self._per_class(w, f, self.cell_cols) for f in (self.tp_cell, self.fp_cell, self.fn_cell))
        precision, recall, f1 = _prf(tp, fp, fn)
        out["precision"], out["recall"], out["f1"] = precision, recall, f1
        out["precision_macro"], out["recall_macro"], out["f1_macro"] = precision.mean(1), recall.mean(1), f1.mean(1)
        micro = _prf(tp.sum(1), fp.sum(1), fn.sum(1))
        out["precision_micro"], out["recall_micro"], out["f1_micro"] = micro
        # AP per class: weighted cumulative counts along each class's cells, read at tie-group ends
        ws = weights[:, self.rows]
        tp_w, fp_w = ws * self.pos, ws * (1 - self.pos)
        cum_tp, cum_fp = np.cumsum(tp_w, axis=1), np.cumsum(fp_w, axis=1)
        class_start = np.flatnonzero(np.concatenate([[True], self.cls[1:] != self.cls[:-1]])) if len(self.cls) else []
        seg = np.cumsum(np.concatenate([[True], self.cls[1:] != self.cls[:-1]])) - 1 if len(self.cls) else []
        if len(self.cls):
            base_tp = (cum_tp - tp_w)[:, class_start][:, seg]
            base_fp = (cum_fp - fp_w)[:, class_start][:, seg]
            cum_tp, cum_fp = cum_tp - base_tp, cum_fp - base_fp
        g_tp, g_fp = cum_tp[:, self.ends], cum_fp[:, self.ends]
        prev = np.zeros_like(g_tp)
        same = np.concatenate([[False], self.end_cls[1:] == self.end_cls[:-1]]) if len(self.ends) else []
        if len(self.ends):
            prev[:, 1:] = np.where(same[1:], g_tp[:, :-1], 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = np.where(g_tp + g_fp > 0, g_tp / (g_tp + g_fp), 0.0)
        num_pos = self._per_class(ws, self.pos, self.cls)
        contrib = (g_tp - prev) * prec
        ap_sum = np.zeros((r, self.c))
        if len(self.ends):
            starts = np.flatnonzero(np.concatenate([[True], ~same[1:]]))
            ap_sum[:, self.end_cls[starts]] = np.add.reduceat(contrib, starts, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap = np.where(num_pos > 0, ap_sum / np.where(num_pos > 0, num_pos, 1), np.nan)
        out["ap"] = ap
        defined = ~np.isnan(ap)
        out["mAP"] = np.where(defined.any(1), np.nansum(ap, axis=1) / np.maximum(defined.sum(1), 1), np.nan)
        # image-level metrics: weighted means over the images with a known cell
        wi = weights[:, self.image_rows]
        total = wi.sum(1)
        for key, per_image in (("hamming_loss", self.image_hamming), ("exact_match", self.image_exact),
                               ("f1_samples", self.image_f1)):  # fmt: skip
            out[key] = (wi @ per_image[self.image_rows]) / np.maximum(total, 1)
        return out


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray):
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1), 0.0)
        recall = np.where(tp + fn > 0, tp / np.where(tp + fn > 0, tp + fn, 1), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.where(2 * tp + fp + fn > 0, 2 * tp + fp + fn, 1), 0.0)
    return precision, recall, f1

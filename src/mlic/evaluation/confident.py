"""Which given labels are probably wrong: confident learning per class, on out-of-fold probabilities.

Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels" (JAIR 2021),
implemented from the paper for the multi-label case, one binary problem per class (the ``cleanlab``
package is AGPL-3.0, and the binary case is a page of numpy):

1. Per-class confident thresholds: t1 = the mean probability of the cells labelled positive, t0 = the mean
   of (1 - probability) over the cells labelled negative (the model's average self-confidence per label).
2. The confident joint C[given][true]: a cell counts as confidently "true positive" when p >= t1, as
   confidently "true negative" when 1 - p >= t0 (both: the larger margin wins), else not at all.
3. Calibrated to the label counts: C~[i][j] = C[i][j] / sum_j C[i][j] * n_i, so the off-diagonal entries
   estimate how many cells carry each wrong label: likely missing positives (given 0, true 1) and likely
   spurious positives (given 1, true 0).
4. Prune by noise rate: per class, the C~[0][1] given-negative cells with the highest probability, and
   the C~[1][0] given-positive cells with the lowest, are flagged, ranked by self-confidence.

Each cell's ``score`` is the model's probability of the other label (p for a given negative, 1 - p for a
given positive). Only known cells take part: a cell marked unknown is not in ``cells`` at all, so it can
never be flagged (``mlic data audit`` enforces this again when it writes its rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mlic.evaluation.cells import Cells


@dataclass(frozen=True)
class LabelIssues:
    """Flagged cells (positions into the ``Cells`` arrays, most certain first) and per-class estimates."""

    flagged: np.ndarray  # (F,) int64 indices into cells.rows / cols / scores / targets
    score: np.ndarray  # (F,) probability of the other label
    t_pos: np.ndarray  # (C,) confident thresholds
    t_neg: np.ndarray
    missing: np.ndarray  # (C,) estimated missing positives (given 0, true 1)
    spurious: np.ndarray  # (C,) estimated spurious positives (given 1, true 0)

    def per_class(self, class_names) -> list[dict[str, Any]]:
        return [{"name": str(n), "missing": int(self.missing[c]), "spurious": int(self.spurious[c]),
                 "t_pos": _num(self.t_pos[c]), "t_neg": _num(self.t_neg[c])}
                for c, n in enumerate(class_names)]  # fmt: skip


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def find_label_issues(cells: Cells) -> LabelIssues:
    """Confident learning per class on out-of-fold ``cells`` (scores are probabilities); see the module."""
    c, cols = cells.num_classes, cells.cols
    p, y = cells.scores, cells.targets
    npos = np.bincount(cols, weights=y, minlength=c)
    nneg = np.bincount(cols, weights=~y, minlength=c)
    with np.errstate(invalid="ignore", divide="ignore"):
        t_pos = np.bincount(cols, weights=np.where(y, p, 0.0), minlength=c) / npos
        t_neg = np.bincount(cols, weights=np.where(~y, 1 - p, 0.0), minlength=c) / nneg
    margin_pos, margin_neg = p - t_pos[cols], (1 - p) - t_neg[cols]
    confident_pos = (margin_pos >= 0) & ((margin_neg < 0) | (margin_pos > margin_neg))
    confident_neg = (margin_neg >= 0) & ~confident_pos
    joint = {}
    for given, given_mask in ((0, ~y), (1, y)):
        for true, true_mask in ((0, confident_neg), (1, confident_pos)):
            joint[given, true] = np.bincount(cols, weights=given_mask & true_mask, minlength=c)
    missing, spurious = np.zeros(c, np.int64), np.zeros(c, np.int64)
    for given, n_given, out, wrong in ((0, nneg, missing, 1), (1, npos, spurious, 0)):
        row = joint[given, 0] + joint[given, 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            estimate = np.where(row > 0, joint[given, wrong] / np.where(row > 0, row, 1) * n_given, 0.0)
        out[:] = np.floor(estimate + 0.5).astype(np.int64)  # round half up: counts of cells
    flagged, score = [], []
    for j in range(c):
        lo, hi = int(cells.class_ptr[j]), int(cells.class_ptr[j + 1])
        if npos[j] == 0 or nneg[j] == 0:
            continue  # a class with one kind of label has no confident joint
        here = np.arange(lo, hi)
        for given_positive, count in ((False, missing[j]), (True, spurious[j])):
            candidates = here[y[lo:hi] == given_positive]
            other = 1 - p[candidates] if given_positive else p[candidates]
            take = candidates[np.argsort(-other, kind="stable")[: int(count)]]
            flagged.append(take)
            score.append(1 - p[take] if given_positive else p[take])
    flagged = np.concatenate(flagged) if flagged else np.zeros(0, np.int64)
    score = np.concatenate(score) if score else np.zeros(0)
    order = np.argsort(-score, kind="stable")
    return LabelIssues(flagged[order], score[order], t_pos, t_neg, missing, spurious)

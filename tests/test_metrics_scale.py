"""Metrics and thresholds of sparse, mostly-unknown labels (Open Images' shape), computed in class blocks, equal
scikit-learn's on the known cells; a scoring pass that outgrows dense arrays keeps only the known cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, precision_score, roc_auc_score

from mlic.data.dataset import Batch
from mlic.evaluation import cells as cells_module
from mlic.evaluation import scoring
from mlic.evaluation.cells import Cells
from mlic.evaluation.metrics import compute_metrics, metrics_from_cells
from mlic.evaluation.thresholds import tune_on_cells

N, C = 4000, 500


def _sparse_set(seed: int = 0):
    """About 8 known cells per image over C classes with Zipf-like frequencies, a third of them negatives."""
    rng = np.random.default_rng(seed)
    per_image = rng.integers(1, 16, N)
    zipf = 1.0 / np.arange(1, C + 1)
    cols = rng.choice(C, size=int(per_image.sum()), p=zipf / zipf.sum())
    rows = np.repeat(np.arange(N), per_image)
    key = np.unique(rows * C + cols)
    rows, cols = key // C, key % C
    targets = rng.random(len(rows)) > 1 / 3
    scores = np.clip(rng.normal(0.35 + 0.3 * targets, 0.2), 0, 1)  # informative, with ties at 0 and 1
    return rows, cols, scores, targets


@pytest.fixture(params=[64, cells_module.BLOCK_CELLS], ids=["many-blocks", "one-block"])
def block(request, monkeypatch):
    monkeypatch.setattr(cells_module, "BLOCK_CELLS", request.param)
    return request.param


def test_sparse_metrics_equal_sklearn_on_the_known_cells(block) -> None:
    rows, cols, scores, targets = _sparse_set()
    metrics = metrics_from_cells(Cells.from_coo(N, C, rows, cols, scores, targets), 0.5)
    per_class = metrics["per_class"]
    sampled = np.random.default_rng(1).choice(C, 60, replace=False)
    checked = 0
    for c in sampled:
        here = cols == c
        y, s = targets[here], scores[here]
        if y.any():
            assert per_class[c]["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-6)
            checked += 1
        if y.any() and not y.all():
            assert per_class[c]["roc_auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
        if here.any():
            assert per_class[c]["precision"] == pytest.approx(precision_score(y, s >= 0.5, zero_division=0), abs=1e-9)
    assert checked > 30
    assert metrics["f1_micro"] == pytest.approx(f1_score(targets, scores >= 0.5), abs=1e-9)


def test_block_size_changes_nothing(monkeypatch) -> None:
    rows, cols, scores, targets = _sparse_set(seed=2)
    results = []
    for size in (cells_module.BLOCK_CELLS, 50):
        monkeypatch.setattr(cells_module, "BLOCK_CELLS", size)
        cells = Cells.from_coo(N, C, rows, cols, scores, targets)
        results.append((metrics_from_cells(cells, 0.5), tune_on_cells(cells).thresholds))
    (m1, t1), (m2, t2) = results
    assert m1 == m2 and np.array_equal(t1, t2)
    assert len(list(Cells.from_coo(N, C, rows, cols, scores, targets).blocks())) > 100


def test_sparse_cells_equal_the_dense_masked_arrays() -> None:
    rows, cols, scores, targets = _sparse_set(seed=3)
    probs, dense_targets, mask = np.zeros((N, C)), np.zeros((N, C)), np.zeros((N, C))
    probs[rows, cols], dense_targets[rows, cols], mask[rows, cols] = scores, targets, 1
    probs[mask == 0] = np.random.default_rng(4).random(int((mask == 0).sum()))  # unknown cells: noise, ignored
    dense = compute_metrics(probs, dense_targets, mask)
    assert dense == metrics_from_cells(Cells.from_coo(N, C, rows, cols, scores, targets), 0.5)


def _batch(start: int, probs_rows: int, classes: int, rng) -> tuple[np.ndarray, Batch]:
    targets = (rng.random((probs_rows, classes)) > 0.6).astype(np.float32)
    masks = (rng.random((probs_rows, classes)) > 0.7).astype(np.float32)
    batch = Batch(torch.zeros(probs_rows, 3, 2, 2, dtype=torch.uint8), torch.from_numpy(targets),
                  torch.from_numpy(masks), torch.arange(start, start + probs_rows), [])  # fmt: skip
    return rng.random((probs_rows, classes)).astype(np.float32), batch


def test_a_scoring_pass_that_outgrows_dense_arrays_keeps_only_known_cells(monkeypatch) -> None:
    rng = np.random.default_rng(5)
    batches = [_batch(16 * i, 16, 30, rng) for i in range(10)]
    dense = scoring._Collected(30)
    for probs, batch in batches:
        dense.add(probs, batch)
    monkeypatch.setattr(scoring, "DENSE_CELLS", 16 * 30 * 3 + 1)  # turns sparse in the fourth batch
    sparse = scoring._Collected(30)
    for probs, batch in batches:
        sparse.add(probs, batch)
    a, b = dense.predictions(0.0, []), sparse.predictions(0.0, [])
    assert a.dense and not b.dense and np.array_equal(a.indices, b.indices)
    assert metrics_from_cells(a.cells, 0.5) == metrics_from_cells(b.cells, 0.5)
    assert np.array_equal(tune_on_cells(a.cells).thresholds, tune_on_cells(b.cells).thresholds)

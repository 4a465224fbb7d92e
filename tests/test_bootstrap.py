"""Bootstrap intervals: a weighted replicate is exactly the metrics of the resampled images; the intervals cover
a known true value about 95% of the time; mlic evaluate prints them, flags wide ones and writes them to JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mlic.cli import main
from mlic.evaluation.bootstrap import _Plan, bootstrap_intervals
from mlic.evaluation.cells import Cells
from mlic.evaluation.metrics import metrics_from_cells

KEYS = ("mAP", "f1_micro", "f1_macro", "f1_samples", "precision_micro", "precision_macro", "recall_micro",
        "recall_macro", "hamming_loss", "exact_match")  # fmt: skip


def _partial_set(seed: int, n: int = 300, c: int = 5):
    rng = np.random.default_rng(seed)
    probs = np.round(rng.random((n, c)), 2)  # ties
    targets = rng.random((n, c)) < probs
    known = rng.random((n, c)) > 0.25  # partial labels: unknown cells take no part
    return probs, targets, known


def test_a_weighted_replicate_is_the_metrics_of_the_resampled_images():
    probs, targets, known = _partial_set(0)
    thresholds = np.array([0.5, 0.3, 0.6, 0.45, 0.7])
    plan = _Plan(Cells.from_dense(probs, targets, known), thresholds)
    rng = np.random.default_rng(1)
    for _ in range(3):
        draw = rng.integers(0, len(probs), len(probs))  # a resample with replacement
        weights = np.bincount(draw, minlength=len(probs))[None, :].astype(float)
        got = plan.metrics(weights)
        again = metrics_from_cells(Cells.from_dense(probs[draw], targets[draw], known[draw]), thresholds)
        for key in KEYS:
            assert got[key][0] == pytest.approx(again[key], abs=1e-12), key
        for c, per_class in enumerate(again["per_class"]):
            for key in ("precision", "recall", "f1"):
                assert got[key][0, c] == pytest.approx(per_class[key], abs=1e-12)
            if per_class["ap"] is not None:
                assert got["ap"][0, c] == pytest.approx(per_class["ap"], abs=1e-12)
    ones = plan.metrics(np.ones((1, len(probs))))
    point = metrics_from_cells(Cells.from_dense(probs, targets, known), thresholds)
    assert all(ones[key][0] == pytest.approx(point[key], abs=1e-12) for key in KEYS)


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_intervals_cover_the_true_value_about_95_percent_of_the_time():
    """Scores: positives N(1, 1), negatives N(0, 1), as probabilities; 30% positives; threshold 0.5 (score 0).
    The population's precision, recall and F1 are known in closed form."""
    share = 0.3
    recall = 1 - _phi(-1)
    fp_rate = 1 - _phi(0)
    precision = share * recall / (share * recall + (1 - share) * fp_rate)
    f1 = 2 * precision * recall / (precision + recall)
    truth = {"recall_micro": recall, "precision_micro": precision, "f1_micro": f1}
    rng = np.random.default_rng(2)
    covered = dict.fromkeys(truth, 0)
    repetitions = 200
    for rep in range(repetitions):
        y = rng.random(400) < share
        x = rng.normal(y.astype(float), 1.0)
        p = 1 / (1 + np.exp(-x))
        cells = Cells.from_dense(p[:, None], y[:, None], np.ones((400, 1), bool))
        intervals = bootstrap_intervals(cells, 0.5, replicates=400, seed=rep)["overall"]
        for key, value in truth.items():
            low, high = intervals[key]
            covered[key] += low <= value <= high
    for key, hits in covered.items():
        assert 0.90 <= hits / repetitions <= 0.985, (key, hits)


def test_small_classes_get_wide_intervals_and_are_flagged():
    rng = np.random.default_rng(3)
    n = 600
    probs = rng.random((n, 2))
    targets = np.zeros((n, 2), bool)
    targets[:, 0] = rng.random(n) < probs[:, 0]
    rare = rng.choice(n, 6, replace=False)
    targets[rare, 1] = True  # six positives, ranked well but not perfectly
    probs[:, 1] = rng.uniform(0.0, 0.7, n)
    probs[rare, 1] = rng.uniform(0.5, 1.0, 6)
    result = bootstrap_intervals(Cells.from_dense(probs, targets, np.ones_like(targets)), 0.5, replicates=300,
                                 class_names=["common", "rare"])  # fmt: skip
    common, rare = result["per_class"]
    assert not common["wide"] and rare["wide"] and result["wide_classes"] == ["rare"]
    assert rare["ap"][1] - rare["ap"][0] > 2 * (common["ap"][1] - common["ap"][0])
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_intervals(Cells.from_dense(probs, targets, np.ones_like(targets)), 0.5, replicates=1)


def test_evaluate_prints_and_writes_intervals(tiny_checkpoint, tiny_shapes, tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["evaluate", str(tiny_checkpoint), "--data", str(tiny_shapes["test"]), "--bootstrap", "200", "--output",
            str(out), "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "95% interval" in printed and "AP 95%" in printed and "200 bootstrap resamples" in printed
    report = json.loads(out.read_text())
    ci = report["intervals"]
    assert ci["replicates"] == 200 and len(ci["per_class"]) == report["num_classes"]
    low, high = ci["overall"]["mAP"]
    assert low <= report["mAP"] <= high
    assert all("wide" in c for c in ci["per_class"])
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(tiny_checkpoint), "--data", str(tiny_shapes["test"]), "--bootstrap", "1"])
    assert stop.value.code == 2 and "--bootstrap: must be 0 (none) or at least 2" in capsys.readouterr().err

import json

import numpy as np
import pytest

from mlic.evaluation.metrics import compute_metrics
from mlic.evaluation.thresholds import ThresholdResult, tune_thresholds


def make_split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes: 0 calibrated around 0.5; 1 ranked well but squeezed into [0.05, 0.3]; 2 calibrated."""
    targets = (rng.random((n, 3)) < [0.4, 0.3, 0.5]).astype(np.int64)
    probs = np.empty((n, 3))
    noise = rng.normal(0, 0.15, size=(n, 3))
    probs[:, 0] = np.clip(0.3 + 0.4 * targets[:, 0] + noise[:, 0], 0, 1)
    probs[:, 1] = np.clip(0.1 + 0.12 * targets[:, 1] + noise[:, 1] * 0.2, 0.05, 0.3)
    probs[:, 2] = np.clip(0.3 + 0.4 * targets[:, 2] + noise[:, 2], 0, 1)
    return probs, targets


def class_f1(probs, targets, thresholds, mask=None) -> np.ndarray:
    return np.array([c["f1"] for c in compute_metrics(probs, targets, mask, thresholds)["per_class"]])


def brute_force_best_f1(scores: np.ndarray, targets: np.ndarray) -> float:
    """Try every unique score as a threshold with the metrics module itself."""
    return max(class_f1(scores[:, None], targets[:, None], t)[0] for t in np.unique(scores))


def test_tuned_thresholds_raise_held_out_f1_of_a_compressed_class():
    rng = np.random.default_rng(0)
    val_probs, val_targets = make_split(rng, 400)
    test_probs, test_targets = make_split(rng, 400)
    result = tune_thresholds(val_probs, val_targets)
    assert 0.05 < result.thresholds[1] < 0.3
    before = class_f1(test_probs, test_targets, 0.5)
    after = class_f1(test_probs, test_targets, result.thresholds)
    assert before[1] == 0.0  # nothing of class 1 reaches 0.5
    assert after[1] > before[1] + 0.5
    # Calibrated classes keep a threshold near 0.5 and lose little on held-out data.
    assert abs(result.thresholds[0] - 0.5) < 0.15 and after[0] > before[0] - 0.05
    assert result.fallback_classes == []
    assert result.f1_before[1] == 0.0 and result.f1_after[1] > 0.8


def test_per_class_search_finds_the_brute_force_optimum_and_reports_it():
    rng = np.random.default_rng(1)
    probs = np.round(rng.random((60, 4)), 2)  # rounding makes ties, which must form one operating point
    targets = (rng.random((60, 4)) < probs).astype(int)
    result = tune_thresholds(probs, targets, min_positives=1)
    for c in range(4):
        assert result.f1_after[c] == pytest.approx(brute_force_best_f1(probs[:, c], targets[:, c]))
    assert np.allclose(result.f1_after, class_f1(probs, targets, result.thresholds))
    assert np.allclose(result.f1_before, class_f1(probs, targets, 0.5))
    assert (result.f1_after >= result.f1_before).all()


def test_threshold_sits_between_operating_points_and_respects_ties():
    scores = np.array([[0.9], [0.6], [0.6], [0.2]])
    targets = np.array([[1], [1], [0], [0]])
    # Operating points: >=0.9 -> F1 2/3; >=0.6 (both tied entries) -> 4/5; >=0.2 -> 2/3.
    result = tune_thresholds(scores, targets, min_positives=1)
    logit = np.log(np.array([0.6, 0.2]) / (1 - np.array([0.6, 0.2])))
    assert result.thresholds[0] == pytest.approx(1 / (1 + np.exp(-logit.mean())))  # midway in logit space
    assert 0.2 < result.thresholds[0] < 0.6 and result.f1_after[0] == pytest.approx(0.8)
    assert result.plateaus[0] == (0.2, 0.6)


def test_class_with_too_few_positives_falls_back_to_global_threshold():
    rng = np.random.default_rng(2)
    probs, targets = make_split(rng, 300)
    targets[:, 2] = 0
    targets[[0, 1, 2], 2] = 1  # 3 known positives < min_positives=5
    probs[[0, 1, 2], 2] = 0.99
    result = tune_thresholds(probs, targets, min_positives=5)
    assert result.fallback_classes == [2]
    assert result.thresholds[2] == result.global_threshold
    # Without the guard the class gets its own (overfitted) threshold.
    free = tune_thresholds(probs, targets, min_positives=1)
    assert free.fallback_classes == [] and free.thresholds[2] != free.global_threshold


def test_global_f1_gives_one_threshold_that_maximises_micro_f1():
    rng = np.random.default_rng(3)
    probs = np.round(rng.random((50, 3)), 2)
    targets = (rng.random((50, 3)) < probs**2).astype(int)
    result = tune_thresholds(probs, targets, method="global_f1")  # the old name still works
    assert result.method == "global" and result.fallback_classes == []
    assert np.all(result.thresholds == result.global_threshold)
    micro = [compute_metrics(probs, targets, None, t)["f1_micro"] for t in np.unique(probs)]
    assert compute_metrics(probs, targets, None, result.thresholds)["f1_micro"] == pytest.approx(max(micro))
    # The per-class method computes the same global threshold (used for fallbacks).
    assert tune_thresholds(probs, targets).global_threshold == result.global_threshold


def test_fixed_gives_the_constant():
    rng = np.random.default_rng(4)
    probs, targets = make_split(rng, 100)
    result = tune_thresholds(probs, targets, method="fixed", fixed=0.35)
    assert result.thresholds.tolist() == [0.35, 0.35, 0.35]
    assert np.array_equal(result.f1_before, result.f1_after) and result.baseline_threshold == 0.35


def test_mask_ignores_unknown_entries():
    rng = np.random.default_rng(5)
    probs, targets = make_split(rng, 200)
    # Whole unknown rows: same as tuning on the known rows only.
    mask = np.ones_like(targets)
    mask[::3] = 0
    masked = tune_thresholds(probs, targets, mask)
    keep = mask[:, 0] == 1
    rows = tune_thresholds(probs[keep], targets[keep])
    assert np.array_equal(masked.thresholds, rows.thresholds)
    assert masked.global_threshold == rows.global_threshold
    assert np.allclose(masked.f1_after, rows.f1_after) and np.allclose(masked.f1_before, rows.f1_before)
    # Scattered unknowns: whatever the unknown entries hold changes nothing.
    mask = (rng.random(probs.shape) > 0.3).astype(int)
    scrambled_probs = np.where(mask == 1, probs, rng.random(probs.shape))
    scrambled_targets = np.where(mask == 1, targets, 1 - targets)
    a = tune_thresholds(probs, targets, mask)
    b = tune_thresholds(scrambled_probs, scrambled_targets, mask)
    assert a.to_dict() == b.to_dict()
    assert not np.array_equal(a.thresholds, tune_thresholds(probs, targets).thresholds)


def test_thresholds_are_json_floats_in_the_open_closed_unit_interval():
    # Class 0: every entry positive, lowest score 0 -> "predict all" must not become threshold 0.
    # Class 1: positives only at exactly 1.0. Class 2: no positive at all -> fallback.
    probs = np.array([[0.0, 1.0, 0.2], [0.3, 1.0, 0.9], [0.7, 0.4, 0.1], [0.2, 0.0, 0.5]] * 3)
    targets = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 0], [1, 0, 0]] * 3)
    result = tune_thresholds(probs, targets, min_positives=1)
    assert ((result.thresholds > 0) & (result.thresholds <= 1)).all()
    assert result.thresholds[1] > 0.4 and result.f1_after[1] == 1.0
    assert result.fallback_classes == [2]
    encoded = json.loads(json.dumps(result.to_dict()))
    assert all(type(t) is float for t in encoded["thresholds"])
    assert encoded["thresholds"] == result.thresholds.tolist() and encoded["fallback_classes"] == [2]
    assert isinstance(result, ThresholdResult)


def test_no_positives_anywhere_falls_back_to_fixed_and_bad_arguments_raise():
    probs, targets = np.full((5, 2), 0.3), np.zeros((5, 2), dtype=int)
    result = tune_thresholds(probs, targets, fixed=0.6)
    assert result.global_threshold == 0.6 and result.thresholds.tolist() == [0.6, 0.6]
    assert result.fallback_classes == [0, 1]
    with pytest.raises(ValueError, match="method"):
        tune_thresholds(probs, targets, method="youden")
    with pytest.raises(ValueError, match="fixed"):
        tune_thresholds(probs, targets, fixed=0.0)
    with pytest.raises(ValueError, match="probs"):
        tune_thresholds(probs * 5, targets)


# ---- plateaus, shrinkage, objectives ------------------------------------------------------------------------


def _logit(p):
    return np.log(p / (1 - p))


def test_a_separable_class_gets_the_middle_of_its_plateau_in_logit_space():
    rng = np.random.default_rng(7)
    positives, negatives = rng.uniform(0.8, 0.999, 60), rng.uniform(0.001, 0.05, 140)
    scores = np.concatenate([positives, negatives])[:, None]
    targets = np.concatenate([np.ones(60), np.zeros(140)])[:, None]
    result = tune_thresholds(scores, targets)
    # every threshold in (max negative, min positive] gives F1 = 1; the old rule took min positive itself
    low, high = negatives.max(), positives.min()
    assert result.plateaus[0] == (low, high)
    expected = 1 / (1 + np.exp(-(_logit(low) + _logit(high)) / 2))
    assert result.thresholds[0] == pytest.approx(expected) and low < result.thresholds[0] < high
    assert result.f1_after[0] == 1.0


def test_the_plateau_is_the_run_of_operating_points_within_the_tolerance_of_the_best():
    """Brute force: every operating point's F1 from the metrics module, the run around the first best."""
    from mlic.evaluation.thresholds import PLATEAU_TOLERANCE

    rng = np.random.default_rng(10)
    probs = np.round(rng.random((500, 5)), 3)
    targets = (rng.random((500, 5)) < probs**1.5).astype(int)
    result = tune_thresholds(probs, targets, min_positives=1, shrinkage=0)
    widened = 0
    for c in range(5):
        points = np.unique(probs[:, c])[::-1]  # operating points, highest threshold first
        f1 = np.array([class_f1(probs[:, c : c + 1], targets[:, c : c + 1], t)[0] for t in points])
        best = int(np.argmax(f1 == f1.max()))
        ok = f1 >= f1.max() - PLATEAU_TOLERANCE
        first, last = best, best
        while first > 0 and ok[first - 1]:
            first -= 1
        while last + 1 < len(points) and ok[last + 1]:
            last += 1
        low = points[last + 1] if last + 1 < len(points) else points[last]
        assert result.plateaus[c] == (low, points[first]), c
        assert low < result.thresholds[c] <= points[first]
        assert result.f1_after[c] >= f1.max() - PLATEAU_TOLERANCE
        widened += last > first
    assert widened >= 2  # the tolerance really joins neighbouring points in this data


def test_shrinkage_pulls_few_positive_classes_toward_the_global_threshold_in_logit_space():
    rng = np.random.default_rng(8)
    n = 400
    probs = rng.random((n, 2))
    targets = np.zeros((n, 2), int)
    targets[:, 0] = rng.random(n) < probs[:, 0]  # about 200 positives
    few = np.argsort(-probs[:, 1])[:12]
    targets[few, 1] = 1  # 12 positives
    free = tune_thresholds(probs, targets, shrinkage=0)
    pulled = tune_thresholds(probs, targets, shrinkage=10)
    g = _logit(pulled.global_threshold)
    for c, n_pos in ((0, targets[:, 0].sum()), (1, 12)):
        w = 10 / (10 + n_pos)
        assert _logit(pulled.thresholds[c]) == pytest.approx((1 - w) * _logit(free.thresholds[c]) + w * g)
    # the rare class moves a lot, the frequent one hardly
    moved = np.abs(_logit(pulled.thresholds) - _logit(free.thresholds))
    assert moved[1] > 5 * moved[0]


def test_calibrated_shrinkage_pulls_toward_half_the_class_best_f1():
    """On calibrated probabilities the F1-optimal threshold is F*/2 (Lipton et al. 2014): check that theory on
    a large calibrated sample, then that shrinkage pulls a few-positive class toward its own F*/2."""
    rng = np.random.default_rng(12)
    n = 200_000
    p = rng.beta(0.5, 3.0, n)  # a calibrated, rare-ish class: P(y = 1 | p) = p
    y = rng.random(n) < p
    free = tune_thresholds(p[:, None], y[:, None].astype(int), shrinkage=0)
    assert free.thresholds[0] == pytest.approx(free.f1_after[0] / 2, abs=0.01)
    # a small validation sample of the same class: 300 images, about 40 positives
    small_p, small_y = p[:300, None], y[:300, None].astype(int)
    base = tune_thresholds(small_p, small_y, shrinkage=0, calibrated=True)
    pulled = tune_thresholds(small_p, small_y, shrinkage=10, calibrated=True)
    assert pulled.prior == "calibrated optimum" and base.to_dict()["prior"] == "calibrated optimum"
    w = 10 / (10 + small_y.sum())
    prior = base.f1_after[0] / 2  # at zero shrinkage the threshold is the plateau middle, F1 there the best
    expected = (1 - w) * _logit(base.thresholds[0]) + w * _logit(prior)
    assert _logit(pulled.thresholds[0]) == pytest.approx(expected, abs=1e-6)
    # uncalibrated scores, or an objective without a calibrated optimum: toward the global threshold
    assert tune_thresholds(small_p, small_y, shrinkage=10).prior == "global"
    assert tune_thresholds(small_p, small_y, shrinkage=10, calibrated=True,
                           objective="precision_at_recall:0.5").prior == "global"  # fmt: skip


def test_objectives_beyond_f1():
    rng = np.random.default_rng(9)
    probs, targets = make_split(rng, 600)
    f1 = tune_thresholds(probs, targets, shrinkage=0)
    recall_heavy = tune_thresholds(probs, targets, objective="f_beta:3", shrinkage=0)
    assert (recall_heavy.thresholds <= f1.thresholds + 1e-12).all()  # F3 weighs recall: lower thresholds
    for required in (0.8, 0.95):
        result = tune_thresholds(probs, targets, objective=f"precision_at_recall:{required}", shrinkage=0)
        per_class = compute_metrics(probs, targets, None, result.thresholds)["per_class"]
        assert all(c["recall"] >= required for c in per_class) and result.objective == f"precision_at_recall:{required}"
    strict = tune_thresholds(probs, targets, objective="recall_at_precision:0.9", shrinkage=0)
    per_class = compute_metrics(probs, targets, None, strict.thresholds)["per_class"]
    reachable = [c for c in range(3) if c not in strict.fallback_classes]
    assert reachable and all(per_class[c]["precision"] >= 0.9 for c in reachable)
    with pytest.raises(ValueError, match="objective"):
        tune_thresholds(probs, targets, objective="precision_at_recall:1.5")


def test_an_objective_a_class_cannot_meet_falls_back_to_global():
    scores = np.array([[0.9, 0.9], [0.8, 0.8], [0.7, 0.7], [0.6, 0.6], [0.5, 0.5], [0.4, 0.4]])
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [1, 0], [0, 1]])
    result = tune_thresholds(scores, targets, objective="recall_at_precision:0.99", min_positives=1)
    assert 1 in result.fallback_classes and result.thresholds[1] == result.global_threshold
    assert 0 in result.fallback_classes or result.thresholds[0] <= 0.9


def test_old_method_names_still_read_from_a_config():
    from mlic.config import SETTINGS

    assert SETTINGS["threshold_method"].check("per_class_f1") == "per_class"
    assert SETTINGS["threshold_method"].check("global_f1") == "global"
    with pytest.raises(ValueError, match="not allowed"):
        SETTINGS["threshold_method"].check("youden")

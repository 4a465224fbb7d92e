"""mlic.evaluation.metrics against scikit-learn: random cases with ties, edge cases, and unknown (masked) labels."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    hamming_loss,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
)

from mlic.evaluation.metrics import average_precision, compute_metrics, predict_labels, roc_auc

# Our code must not emit numpy divide-by-zero or sklearn warnings; expected sklearn ones are silenced locally.
pytestmark = pytest.mark.filterwarnings("error")

TOL = 1e-6
AVERAGED = [f"{m}_{avg}" for m in ("precision", "recall", "f1") for avg in ("micro", "macro", "samples")]


def random_case(seed: int, n: int = 60, c: int = 5, decimals: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities rounded to `decimals` so that many scores tie, and sparse-ish targets."""
    rng = np.random.default_rng(seed)
    probs = np.round(rng.random((n, c)), decimals)
    targets = (rng.random((n, c)) < rng.uniform(0.1, 0.6, size=c)).astype(np.float32)
    return probs, targets


def sklearn_reference(probs: np.ndarray, targets: np.ndarray, thresholds: float | np.ndarray = 0.5) -> dict:
    """The same metrics computed with scikit-learn (C >= 2, no mask); macro AP/AUC over qualifying classes."""
    pred = (probs >= thresholds).astype(int)
    ref = {"hamming_loss": hamming_loss(targets, pred), "exact_match": accuracy_score(targets, pred)}
    for avg in ("micro", "macro", "samples"):
        p, r, f, _ = precision_recall_fscore_support(targets, pred, average=avg, zero_division=0)
        ref.update({f"precision_{avg}": p, f"recall_{avg}": r, f"f1_{avg}": f})
    p, r, f, _ = precision_recall_fscore_support(targets, pred, average=None, zero_division=0)
    ref["per_class"] = {"precision": p, "recall": r, "f1": f}
    has_pos = targets.any(0)
    has_both = has_pos & ~targets.all(0)
    ap = [average_precision_score(targets[:, c], probs[:, c]) if has_pos[c] else None for c in range(probs.shape[1])]
    auc = [roc_auc_score(targets[:, c], probs[:, c]) if has_both[c] else None for c in range(probs.shape[1])]
    ref["per_class"].update(ap=ap, roc_auc=auc)
    ref["mAP"] = float(np.mean([a for a in ap if a is not None])) if has_pos.any() else None
    ref["roc_auc_macro"] = float(np.mean([a for a in auc if a is not None])) if has_both.any() else None
    return ref


def assert_matches(result: dict, ref: dict) -> None:
    for key in ("hamming_loss", "exact_match", *AVERAGED):
        assert result[key] == pytest.approx(ref[key], abs=TOL), key
    for key in ("mAP", "roc_auc_macro"):
        if ref[key] is None:
            assert result[key] is None, key
        else:
            assert result[key] == pytest.approx(ref[key], abs=TOL), key
    for c, row in enumerate(result["per_class"]):
        for key in ("precision", "recall", "f1"):
            assert row[key] == pytest.approx(ref["per_class"][key][c], abs=TOL), (c, key)
        for key in ("ap", "roc_auc"):
            expected = ref["per_class"][key][c]
            assert (row[key] is None) if expected is None else row[key] == pytest.approx(expected, abs=TOL), (c, key)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("per_class_thresholds", [False, True])
def test_random_cases_match_sklearn(seed: int, per_class_thresholds: bool) -> None:
    probs, targets = random_case(seed, n=40 + 17 * seed, c=3 + seed)
    rng = np.random.default_rng(100 + seed)
    # Thresholds on the 0.1 grid land exactly on tied scores, which exercises the inclusive `>=`.
    thresholds = np.round(rng.uniform(0.2, 0.8, probs.shape[1]), 1) if per_class_thresholds else 0.5
    result = compute_metrics(probs, targets, thresholds=thresholds)
    assert_matches(result, sklearn_reference(probs, targets, thresholds))
    assert result["excluded_from_map"] == [] and result["excluded_from_auc"] == []
    assert result["num_images"] == probs.shape[0] and result["num_classes"] == probs.shape[1]
    expected_thr = thresholds if per_class_thresholds else [0.5] * probs.shape[1]
    assert [row["threshold"] for row in result["per_class"]] == pytest.approx(list(expected_thr))
    assert [row["support"] for row in result["per_class"]] == targets.sum(0).astype(int).tolist()
    json.dumps(result, allow_nan=False)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("decimals", [0, 1, 3])
def test_average_precision_and_roc_auc_match_sklearn(seed: int, decimals: int) -> None:
    """decimals=0 leaves only the scores 0 and 1: nearly everything ties."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 80))
    scores = np.round(rng.random(n), decimals)
    targets = (rng.random(n) < 0.4).astype(int)
    targets[:2] = [1, 0]  # both classes present
    assert average_precision(scores, targets) == pytest.approx(average_precision_score(targets, scores), abs=TOL)
    assert roc_auc(scores, targets) == pytest.approx(roc_auc_score(targets, scores), abs=TOL)


def test_ranking_metrics_known_values_and_undefined_cases() -> None:
    # sklearn's docstring example; all-tied scores give AP = prevalence and AUC = 0.5.
    assert average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.8333333333)
    assert average_precision([0.5] * 4, [1, 0, 0, 0]) == pytest.approx(0.25)
    assert roc_auc([0.5] * 4, [1, 0, 1, 0]) == pytest.approx(0.5)
    assert roc_auc([0.1, 0.9], [0, 1]) == 1.0 and roc_auc([0.1, 0.9], [1, 0]) == 0.0
    with pytest.raises(ValueError, match="positive"):
        average_precision([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="both"):
        roc_auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="equal length"):
        roc_auc([0.1, 0.2], [1, 0, 1])


def test_class_without_positives_is_excluded_and_reported() -> None:
    probs, targets = random_case(1, n=50, c=4)
    targets[:, 2] = 0  # no positives: excluded from mAP and AUC
    targets[:, 3] = 1  # no negatives: AP is defined (kept in mAP) but AUC is not
    names = ["cat", "dog", "fish", "sky"]
    result = compute_metrics(probs, targets, class_names=names)
    assert result["excluded_from_map"] == ["fish"]
    assert result["excluded_from_auc"] == ["fish", "sky"]
    keep = [0, 1, 3]
    assert result["mAP"] == pytest.approx(average_precision_score(targets[:, keep], probs[:, keep]), abs=TOL)
    assert result["roc_auc_macro"] == pytest.approx(roc_auc_score(targets[:, :2], probs[:, :2]), abs=TOL)
    fish, sky = result["per_class"][2], result["per_class"][3]
    assert fish["name"] == "fish" and fish["support"] == 0 and fish["ap"] is None and fish["roc_auc"] is None
    assert sky["ap"] == 1.0 and sky["roc_auc"] is None
    assert_matches(result, sklearn_reference(probs, targets))
    json.dumps(result, allow_nan=False)


def test_no_class_qualifies_gives_none_not_nan() -> None:
    probs, targets = random_case(2, n=10, c=3)
    result = compute_metrics(probs, np.zeros_like(targets))
    assert result["mAP"] is None and result["roc_auc_macro"] is None
    assert result["excluded_from_map"] == [0, 1, 2] and result["excluded_from_auc"] == [0, 1, 2]
    json.dumps(result, allow_nan=False)


def case_image_without_labels() -> tuple[np.ndarray, np.ndarray, float]:
    probs, targets = random_case(3, n=30, c=4)
    targets[[0, 5, 9]] = 0
    probs[5] = 0.0  # an image with neither labels nor predictions: sklearn scores it 0 with zero_division=0
    return probs, targets, 0.5


def case_all_negative_predictions() -> tuple[np.ndarray, np.ndarray, float]:
    probs, targets = random_case(4, n=30, c=4)
    return probs, targets, 1.5


def case_all_positive_predictions() -> tuple[np.ndarray, np.ndarray, float]:
    probs, targets = random_case(5, n=30, c=4)
    return probs, targets, 0.0


def case_single_image() -> tuple[np.ndarray, np.ndarray, float]:
    return np.array([[0.9, 0.2, 0.6, 0.4]]), np.array([[1, 0, 0, 1]]), 0.5


@pytest.mark.parametrize(
    "make_case",
    [case_image_without_labels, case_all_negative_predictions, case_all_positive_predictions, case_single_image],
)
def test_edge_cases_match_sklearn(make_case) -> None:
    probs, targets, thresholds = make_case()
    result = compute_metrics(probs, targets, thresholds=thresholds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        ref = sklearn_reference(probs, targets, thresholds)
    assert_matches(result, ref)
    json.dumps(result, allow_nan=False)


def test_all_negative_and_all_positive_predictions_values() -> None:
    probs, targets = random_case(6, n=30, c=4)
    none = compute_metrics(probs, targets, thresholds=1.5)
    assert none["precision_micro"] == 0.0 and none["recall_micro"] == 0.0 and none["f1_macro"] == 0.0
    everything = compute_metrics(probs, targets, thresholds=0.0)
    assert everything["recall_micro"] == 1.0
    assert everything["precision_micro"] == pytest.approx(targets.mean())
    assert everything["hamming_loss"] == pytest.approx(1 - targets.mean())


def test_single_class() -> None:
    """(N, 1) is 'binary' to sklearn, which has no samples average there, so samples metrics are written out."""
    probs, targets = random_case(7, n=40, c=1)
    result = compute_metrics(probs, targets, thresholds=0.3)
    y, pred = targets[:, 0], (probs[:, 0] >= 0.3).astype(int)
    for name, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        expected = fn(y, pred, zero_division=0)
        assert result[f"{name}_micro"] == pytest.approx(expected, abs=TOL)
        assert result[f"{name}_macro"] == pytest.approx(expected, abs=TOL)
        assert result["per_class"][0][name] == pytest.approx(expected, abs=TOL)
        # One label per image: each image's P, R and F1 are 1 on a true positive and 0 otherwise.
        assert result[f"{name}_samples"] == pytest.approx(np.mean(pred * y), abs=TOL)
    assert result["exact_match"] == pytest.approx(accuracy_score(y, pred), abs=TOL)
    assert result["hamming_loss"] == pytest.approx(hamming_loss(y, pred), abs=TOL)
    assert result["mAP"] == pytest.approx(average_precision_score(y, probs[:, 0]), abs=TOL)
    assert result["roc_auc_macro"] == pytest.approx(roc_auc_score(y, probs[:, 0]), abs=TOL)


def random_mask(seed: int, shape: tuple[int, int], known_fraction: float = 0.7) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < known_fraction).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_mask_class_wise_metrics_equal_sklearn_on_known_rows(seed: int) -> None:
    probs, targets = random_case(10 + seed, n=80, c=5)
    mask = random_mask(seed, probs.shape)
    thresholds = np.array([0.3, 0.4, 0.5, 0.6, 0.7])
    result = compute_metrics(probs, targets, mask=mask, thresholds=thresholds)
    aps, aucs, f1s = [], [], []
    for c, row in enumerate(result["per_class"]):
        rows = mask[:, c] == 1
        y, s = targets[rows, c], probs[rows, c]
        pred = (s >= thresholds[c]).astype(int)
        assert row["support"] == int(y.sum())
        assert row["precision"] == pytest.approx(precision_score(y, pred, zero_division=0), abs=TOL)
        assert row["recall"] == pytest.approx(recall_score(y, pred, zero_division=0), abs=TOL)
        assert row["f1"] == pytest.approx(f1_score(y, pred, zero_division=0), abs=TOL)
        assert row["ap"] == pytest.approx(average_precision_score(y, s), abs=TOL)
        assert row["roc_auc"] == pytest.approx(roc_auc_score(y, s), abs=TOL)
        aps.append(row["ap"])
        aucs.append(row["roc_auc"])
        f1s.append(row["f1"])
    assert result["mAP"] == pytest.approx(np.mean(aps), abs=TOL)
    assert result["roc_auc_macro"] == pytest.approx(np.mean(aucs), abs=TOL)
    assert result["f1_macro"] == pytest.approx(np.mean(f1s), abs=TOL)


@pytest.mark.parametrize("seed", range(3))
def test_mask_micro_metrics_equal_sklearn_on_flattened_known_entries(seed: int) -> None:
    probs, targets = random_case(20 + seed, n=70, c=6)
    mask = random_mask(seed, probs.shape).astype(bool)
    result = compute_metrics(probs, targets, mask=mask, thresholds=0.4)
    y, pred = targets[mask], (probs[mask] >= 0.4).astype(int)
    assert result["precision_micro"] == pytest.approx(precision_score(y, pred, zero_division=0), abs=TOL)
    assert result["recall_micro"] == pytest.approx(recall_score(y, pred, zero_division=0), abs=TOL)
    assert result["f1_micro"] == pytest.approx(f1_score(y, pred, zero_division=0), abs=TOL)


def test_mask_image_metrics_equal_sklearn_after_dropping_unknowns_per_image() -> None:
    """Every image keeps exactly k known entries, so dropping unknowns leaves an (N, k) problem for sklearn."""
    n, c, k = 50, 7, 4
    probs, targets = random_case(30, n=n, c=c)
    rng = np.random.default_rng(31)
    keep = np.sort(np.stack([rng.choice(c, size=k, replace=False) for _ in range(n)]), axis=1)
    mask = np.zeros((n, c))
    np.put_along_axis(mask, keep, 1, axis=1)
    # A fully unknown image is skipped, so it must not change anything.
    probs_plus, targets_plus = np.vstack([probs, [[0.9] * c]]), np.vstack([targets, [[0] * c]])
    result = compute_metrics(probs_plus, targets_plus, mask=np.vstack([mask, np.zeros((1, c))]))
    y = np.take_along_axis(targets, keep, axis=1)
    pred = (np.take_along_axis(probs, keep, axis=1) >= 0.5).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        ref = sklearn_reference(np.take_along_axis(probs, keep, axis=1), y)
    for key in ("hamming_loss", "exact_match", "precision_samples", "recall_samples", "f1_samples"):
        assert result[key] == pytest.approx(ref[key], abs=TOL), key
    assert result["exact_match"] == pytest.approx(np.mean((y == pred).all(1)), abs=TOL)


@pytest.mark.parametrize("seed", range(3))
def test_mask_image_metrics_with_varying_known_counts(seed: int) -> None:
    """Per-image metrics average each image's score on its own known entries (sklearn, one image at a time)."""
    probs, targets = random_case(40 + seed, n=30, c=5)
    mask = random_mask(seed, probs.shape, known_fraction=0.6)
    mask[0] = 0
    result = compute_metrics(probs, targets, mask=mask)
    rows = [i for i in range(len(probs)) if mask[i].any()]
    per_image = {key: [] for key in ("hamming_loss", "exact_match", "precision", "recall", "f1")}
    for i in rows:
        known = mask[i] == 1
        y, pred = targets[i, known], (probs[i, known] >= 0.5).astype(int)
        per_image["hamming_loss"].append(hamming_loss(y, pred))
        per_image["exact_match"].append(accuracy_score(y, pred, normalize=False) == len(y))
        per_image["precision"].append(precision_score(y, pred, zero_division=0))
        per_image["recall"].append(recall_score(y, pred, zero_division=0))
        per_image["f1"].append(f1_score(y, pred, zero_division=0))
    for key in ("hamming_loss", "exact_match"):
        assert result[key] == pytest.approx(np.mean(per_image[key]), abs=TOL), key
    for key in ("precision", "recall", "f1"):
        assert result[f"{key}_samples"] == pytest.approx(np.mean(per_image[key]), abs=TOL), key


def test_unknown_entries_do_not_matter() -> None:
    probs, targets = random_case(50, n=60, c=5)
    mask = random_mask(50, probs.shape)
    unknown = mask == 0
    other_probs, other_targets = probs.copy(), targets.copy()
    other_probs[unknown] = np.random.default_rng(51).random(unknown.sum())
    other_targets[unknown] = 1 - other_targets[unknown]
    first = compute_metrics(probs, targets, mask=mask)
    second = compute_metrics(other_probs, other_targets, mask=mask)
    assert json.dumps(first) == json.dumps(second)
    assert compute_metrics(probs, targets, mask=np.ones_like(mask)) == compute_metrics(probs, targets)
    assert first != compute_metrics(probs, targets)  # the mask did change something


def test_mask_can_exclude_a_class_from_map() -> None:
    probs, targets = random_case(60, n=40, c=3)
    mask = np.ones_like(targets)
    mask[targets[:, 1] == 1, 1] = 0  # class 1's positives are all unknown
    result = compute_metrics(probs, targets, mask=mask, class_names=["a", "b", "c"])
    assert result["excluded_from_map"] == ["b"] and result["per_class"][1]["support"] == 0
    assert result["mAP"] == pytest.approx(average_precision_score(targets[:, [0, 2]], probs[:, [0, 2]]), abs=TOL)
    fully_unknown = compute_metrics(probs, targets, mask=np.zeros_like(targets))
    assert fully_unknown["exact_match"] is None and fully_unknown["mAP"] is None
    json.dumps(fully_unknown, allow_nan=False)


def test_predict_labels() -> None:
    probs = np.array([[0.5, 0.2, 0.7], [0.49, 0.9, 0.1]])
    assert predict_labels(probs, 0.5).tolist() == [[True, False, True], [False, True, False]]
    assert predict_labels(probs, [0.6, 0.2, 0.05]).tolist() == [[False, True, True], [False, True, True]]
    assert predict_labels(probs[0], np.array([0.5, 0.3, 0.8])).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="thresholds"):
        predict_labels(probs, [0.5, 0.5])
    # float32 0.7 lies just below 0.7: the verdict must not depend on whether thresholds come as a scalar or an array.
    p32 = np.array([[0.7, 0.7]], dtype=np.float32)
    assert predict_labels(p32, 0.7).tolist() == predict_labels(p32, [0.7, 0.7]).tolist() == [[False, False]]


def test_no_images_gives_none_for_image_averages() -> None:
    result = compute_metrics(np.zeros((0, 3)), np.zeros((0, 3)))
    assert result["num_images"] == 0 and result["exact_match"] is None and result["mAP"] is None
    json.dumps(result, allow_nan=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"probs": np.zeros((3, 2)), "targets": np.zeros((3, 3))}, "one shape"),
        ({"probs": np.full((3, 2), 2.0), "targets": np.zeros((3, 2))}, "logits"),
        ({"probs": np.zeros((3, 2)), "targets": np.full((3, 2), 0.5)}, "0 and 1"),
        ({"probs": np.zeros((3, 2)), "targets": np.zeros((3, 2)), "mask": np.ones((3, 1))}, "mask"),
        ({"probs": np.zeros((3, 2)), "targets": np.zeros((3, 2)), "class_names": ["a"]}, "class names"),
        ({"probs": np.zeros((3, 2)), "targets": np.zeros((3, 2)), "thresholds": [0.5] * 3}, "thresholds"),
        ({"probs": np.zeros((3, 0)), "targets": np.zeros((3, 0))}, "at least one class"),
    ],
)
def test_invalid_inputs_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_metrics(**kwargs)


def test_large_random_input_gives_chance_auc() -> None:
    """Random scores on a large input: macro ROC-AUC near chance (speed is measured by benchmarks, not here)."""
    rng = np.random.default_rng(70)
    probs = rng.random((20_000, 50)).astype(np.float32)
    targets = (rng.random((20_000, 50)) < 0.05).astype(np.float32)
    result = compute_metrics(probs, targets, mask=random_mask(71, probs.shape))
    assert 0.4 < result["roc_auc_macro"] < 0.6

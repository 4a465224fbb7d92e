"""Per-class calibration: fitted on validation, lowers held-out calibration error, kept in the checkpoint and
applied by every path probabilities leave the model through (Predictor, evaluate, ONNX, TorchScript)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlic.checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from mlic.cli import main
from mlic.data.images import decode_image
from mlic.data.transforms import build_eval_transform, build_stage_transform
from mlic.evaluation.calibration import (
    Calibration,
    calibrate_cells,
    expected_calibration_error,
    fit_calibration,
    sigmoid,
)
from mlic.evaluation.cells import Cells
from mlic.evaluation.metrics import metrics_from_cells
from mlic.inference.predictor import Predictor
from mlic.models import build_model

CLASSES = ["a", "b", "c", "d"]


def _overconfident(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities sigmoid(z); the model reports sigmoid(4 z + shift): over-confident
    and biased differently per class (class 3 is reported honestly)."""
    z = rng.normal(0, 1.5, size=(n, 4))
    y = rng.random((n, 4)) < sigmoid(z)
    scores = sigmoid(z * np.array([4.0, 3.0, 5.0, 1.0]) + np.array([2.0, -3.0, 0.0, 0.0]))
    return scores, y


def test_calibration_lowers_held_out_ece_of_an_over_confident_model() -> None:
    rng = np.random.default_rng(0)
    val, test = _overconfident(rng, 3000), _overconfident(rng, 3000)
    val_cells = Cells.from_dense(val[0], val[1], np.ones_like(val[1]))
    calibration, info = fit_calibration(val_cells, "platt")
    assert calibration.fitted[:3].all() and (calibration.scale > 0).all()
    assert np.allclose(calibration.scale[:3], [0.25, 1 / 3, 0.2], rtol=0.15)  # it recovers the distortion
    cols = np.repeat(np.arange(4), 3000)
    p, y = test[0].T.ravel(), test[1].T.ravel().astype(float)
    before = expected_calibration_error(p, y, cols, 4)
    after = expected_calibration_error(calibration.probs(p, cols), y, cols, 4)
    assert (after[:3] < before[:3] / 3).all(), (before, after)  # held-out ECE falls
    assert after[3] < 0.04  # an honest class stays honest (fitted or not)
    assert all(a <= b for a, b in zip(info["log_loss_after"], info["log_loss_before"], strict=True))
    # ranking, so AP, is untouched
    test_cells = Cells.from_dense(test[0], test[1], np.ones_like(test[1]))
    aps = [c["ap"] for c in metrics_from_cells(test_cells)["per_class"]]
    aps_after = [c["ap"] for c in metrics_from_cells(calibrate_cells(test_cells, calibration))["per_class"]]
    assert np.allclose(aps, aps_after)


def test_a_class_calibration_cannot_improve_is_left_alone() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 2000)
    y = rng.random(2000) < sigmoid(z)
    scores = np.stack([sigmoid(z), np.full(2000, 0.7)], axis=1)
    labels = np.stack([y, np.ones(2000, bool)], axis=1)  # class 1: no negative, nothing to fit
    calibration, _ = fit_calibration(Cells.from_dense(scores, labels, np.ones_like(labels)), "platt")
    assert not calibration.fitted[1] and calibration.scale[1] == 1.0 and calibration.shift[1] == 0.0
    assert abs(calibration.scale[0] - 1) < 0.2 and abs(calibration.shift[0]) < 0.2
    p = rng.random(10)
    assert np.allclose(calibration.uncalibrated(calibration.probs(p, np.zeros(10, int)), np.zeros(10, int)), p)


# ---- the checkpoint applies it -------------------------------------------------------------------------------

if os.environ.get("CI") == "true":
    import onnxruntime  # noqa: F401
else:
    pytest.importorskip("onnxruntime")

SCALE, SHIFT = [0.5, 2.0, 1.0, 0.25], [1.0, -1.5, 0.0, 2.0]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("calibrated")
    torch.manual_seed(0)
    kwargs = {"widths": [8, 8, 16, 16], "hidden": 16}
    model = build_model("seed_cnn", len(CLASSES), **kwargs).eval()
    meta = {
        "model": {"name": "seed_cnn", "kwargs": kwargs},
        "class_names": CLASSES,
        "thresholds": [0.5] * 4,
        "preprocessing": {"image_size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "calibration": Calibration("platt", np.array(SCALE), np.array(SHIFT), np.ones(4, bool)).to_dict(),
    }
    raw = save_checkpoint(root / "raw", model, {k: v for k, v in meta.items() if k != "calibration"})
    ckpt = save_checkpoint(root / "ckpt", model, meta)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(images / f"{i}.png")
    return {"root": root, "raw": raw, "ckpt": ckpt, "images": images}


def _batch(files, transform) -> torch.Tensor:
    return torch.stack([transform(decode_image(p)) for p in sorted(files["images"].iterdir())])


def test_loading_folds_the_calibration_into_the_classifier(calibrated) -> None:
    raw, _ = load_checkpoint(calibrated["raw"])
    model, meta = load_checkpoint(calibrated["ckpt"])
    x = _batch(calibrated, build_eval_transform(Predictor.from_checkpoint(calibrated["ckpt"]).preprocessing))
    with torch.no_grad():
        z_raw, z = raw(x).double().numpy(), model(x).double().numpy()
    assert np.allclose(z, z_raw * np.array(SCALE) + np.array(SHIFT), atol=1e-5)
    probs = Predictor.from_checkpoint(calibrated["ckpt"]).predict_probabilities(x)
    assert np.abs(probs - sigmoid(z)).max() < 1e-5
    assert np.abs(probs - sigmoid(z_raw)).max() > 0.05  # the calibration is strong enough to be seen


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_graphs_give_the_calibrated_probabilities(calibrated, fmt: str) -> None:
    out = calibrated["root"] / f"model.{fmt}"
    assert main(["export", str(calibrated["ckpt"]), "--to", fmt, str(out)]) == 0
    predictor = Predictor.from_checkpoint(calibrated["ckpt"])
    expected = predictor.predict_probabilities(_batch(calibrated, build_eval_transform(predictor.preprocessing)))
    batch = _batch(calibrated, build_stage_transform(predictor.preprocessing)).numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": batch})[0]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = torch.jit.load(str(out))(torch.from_numpy(batch)).detach().numpy()
    assert np.abs(got - expected).max() <= 1e-4
    assert json.loads(Path(f"{out}.json").read_text())["output"]["calibration"] == "platt"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("scale", [1.0, 0.0, 1.0, 1.0], "must be > 0"), ("shift", [0.0, 0.0], "list of 4 numbers"),
     ("scale", [1.0, float("nan"), 1.0, 1.0], "finite")],
)  # fmt: skip
def test_a_damaged_calibration_is_refused_on_load(calibrated, tmp_path, field, value, message) -> None:
    meta = read_meta(calibrated["ckpt"])
    meta["calibration"][field] = value
    folder = tmp_path / "bad"
    folder.mkdir()
    for f in calibrated["ckpt"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(folder)


def test_a_training_run_calibrates_then_tunes_thresholds_on_calibrated_scores(tiny_checkpoint) -> None:
    meta = read_meta(tiny_checkpoint)
    info = meta["calibration_info"]
    assert meta["config"]["thresholds"]["calibration"] == "platt"
    assert len(info["ece_before"]) == len(meta["class_names"])
    val = np.load(tiny_checkpoint.parent.parent / "predictions" / "val.npz")
    cells = Cells.from_dense(val["probs"].astype(np.float64), val["targets"] > 0, val["masks"] > 0)
    # val.npz holds what the checkpoint gives: calibrated probabilities, whose F1 at the stored thresholds is
    # the tuning's own
    f1 = [c["f1"] for c in metrics_from_cells(cells, np.array(meta["thresholds"]))["per_class"]]
    assert np.allclose(f1, meta["threshold_info"]["f1_after"])
    assert meta["calibration"] is not None  # a 1-epoch model is far from calibrated
    calibration = Calibration.from_dict(meta["calibration"])
    raw = calibration.uncalibrated(cells.scores, cells.cols)
    assert np.allclose(calibration.probs(raw, cells.cols), cells.scores, atol=1e-6)
    ece = expected_calibration_error(cells.scores, cells.targets.astype(float), cells.cols, cells.num_classes)
    assert np.allclose(info["ece_after"], ece, atol=1e-4)

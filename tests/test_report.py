"""`mlic report`: built from a finished run's saved files; every section present or saying why not; small."""

from __future__ import annotations

import csv
import re
import sys
import time
import types

import numpy as np
import pytest

from mlic.checkpoint import save_checkpoint
from mlic.cli import main
from mlic.data.transforms import Preprocessing
from mlic.evaluation.metrics import compute_metrics
from mlic.evaluation.prediction_files import load_predictions, save_predictions
from mlic.insight.report import build_report, calibration_bins, pr_curve
from mlic.models.seed_cnn import SeedCNN

# --no-report: each test builds the report it checks itself, so training need not write one too
TRAIN = ["--image-size", "32", "--epochs", "1", "--batch-size", "16", "--no-progress", "--device", "cpu", "--no-report"]


@pytest.fixture(scope="module")
def run_dir(tiny_shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    args = ["train", str(tiny_shapes["train"]), "--val", str(tiny_shapes["val"]), "--output-dir", str(out)]
    assert main([*args, "--name", "r", *TRAIN]) == 0
    return out / "r"


def _html(path) -> str:
    return path.read_text(encoding="utf-8")


def test_report_of_a_finished_run_on_new_data(run_dir, tiny_shapes, capsys):
    data = tiny_shapes["test"]
    assert main(["report", str(run_dir), "--data", str(data), "--device", "cpu", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {run_dir / 'report.html'}"
    page = _html(run_dir / "report.html")
    table = re.search(r'<table id="per-class-table" class="sortable">.*?</table>', page, re.S).group(0)
    assert table.count("<tr>") == 1 + 6  # header + one row per shape class
    for section_id in ("summary", "data", "training", "per-class", "calibration", "curves", "errors", "galleries",
                       "gradcam"):  # fmt: skip
        assert f'<section id="{section_id}">' in page
    calibration = re.search(r'<table id="calibration-table" class="sortable">.*?</table>', page, re.S).group(0)
    assert calibration.count("<tr>") == 1 + 6 and "reliability diagrams per label" in page
    assert page.count('class="plot pr"') == 1 and 'class="plot calibration"' in page
    assert page.count("<figure") >= 10  # gallery thumbnails and Grad-CAM overlays
    assert 'class="missing"' not in page  # every section applies to this run
    # self-contained: pictures are data URIs, nothing is fetched from anywhere
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "Content-Security-Policy" in page
    assert (run_dir / "report.html").stat().st_size < 3_000_000

    # the predictions it saved are exactly what `mlic evaluate` measures on the same data
    from mlic.evaluation.evaluate import evaluate_checkpoint
    from mlic.evaluation.scoring import BatchOptions

    saved = load_predictions(run_dir / "predictions" / "data_test.npz")
    again = compute_metrics(saved["probs"], saved["targets"], saved["masks"], saved["thresholds"])
    reference = evaluate_checkpoint(
        run_dir / "checkpoints" / "best", data, batch=BatchOptions(device="cpu", progress=False)
    )
    assert again["mAP"] == pytest.approx(reference["mAP"], abs=1e-9)
    assert again["f1_micro"] == pytest.approx(reference["f1_micro"], abs=1e-9)
    assert f"{reference['mAP']:.4f}" in page


def test_report_rebuilds_from_saved_predictions_alone(run_dir, tiny_shapes, tmp_path, monkeypatch):
    saved = run_dir / "predictions" / "data_test.npz"
    if not saved.exists():
        assert main(["report", str(run_dir), "--data", str(tiny_shapes["test"]), "--device", "cpu"]) == 0

    def no_model_runs(*args, **kwargs):
        raise AssertionError("the report must not predict again")

    monkeypatch.setattr("mlic.evaluation.scoring.score_loader", no_model_runs)
    monkeypatch.setattr("mlic.insight.report.score_checkpoint", no_model_runs)
    out = build_report(run_dir, tmp_path / "again.html", predictions=saved)
    page = _html(out)
    assert 'id="per-class-table"' in page and "labelled data test" in page


def test_run_without_validation_says_what_is_missing(tiny_shapes, tmp_path):
    args = ["train", str(tiny_shapes["train"]), "--val-fraction", "0", "--output-dir", str(tmp_path)]
    assert main([*args, "--name", "noval", *TRAIN]) == 0
    run = tmp_path / "noval"
    for stale in (run / "predictions").glob("*.npz"):  # whatever training saved: test the run with none
        stale.unlink()
    page = _html(build_report(run))
    assert 'id="per-class-table"' not in page
    assert page.count("does not apply") == 7  # summary + the six sections that need predictions
    assert "No validation set" in page
    assert 'class="plot wide"' in page  # the training curves are still drawn


def test_one_class_run_reports(tiny_shapes, tmp_path):
    def one_class(split):
        rows = list(csv.DictReader(tiny_shapes[split].read_text().splitlines()))
        path = tmp_path / f"{split}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "labels"])
            for row in rows:
                writer.writerow([str(tiny_shapes[split].parent / row["image"]), "circle" * ("circle" in row["labels"])])
        return path

    train, val = one_class("train"), one_class("val")
    assert main(["train", str(train), "--val", str(val), "--output-dir", str(tmp_path), "--name", "one", *TRAIN]) == 0
    out = build_report(tmp_path / "one", data=val)
    page = _html(out)
    table = re.search(r'<table id="per-class-table".*?</table>', page, re.S).group(0)
    assert table.count("<tr>") == 2 and ">circle<" in table
    assert "Co-occurrence needs at least two labels" in page
    assert 'class="plot pr"' in page


def _fake_run(root, *, num_images: int, num_classes: int, image_size: int = 64, names=None, seed: int = 0):
    """A finished run's files written directly (no training): checkpoint, config, metrics, images, predictions."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = names or [f"label_{i:02d}" for i in range(num_classes)]
    run = root / "run"
    model = SeedCNN(num_classes=num_classes, widths=(8, 16), hidden=16)
    meta = {
        "model": {"name": "seed_cnn", "kwargs": {"widths": [8, 16], "hidden": 16, "drop_rate": 0.5}},
        "class_names": names,
        "thresholds": [float(t) for t in rng.uniform(0.3, 0.7, num_classes)],
        "preprocessing": Preprocessing(image_size=image_size).to_dict(),
        "epoch": 3,
    }
    save_checkpoint(run / "checkpoints" / "best", model, meta)
    (run / "config.yaml").write_text(
        f"data:\n  train: {root / 'moved-away.csv'}\n  val: null\nmodel:\n  name: seed_cnn\n"
    )
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "train_loss", "val_loss", "val_mAP", "val_f1_micro", "lr"])
        writer.writerows([e, 1 / e, 1.2 / e, 0.5 + e / 10, 0.4 + e / 10, 1e-3] for e in (1, 2, 3))
    paths = []
    (root / "images").mkdir()
    for i in range(num_images):  # smooth colour field plus strong noise: JPEG's hard case, so sizes are an upper bound
        base = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        field = np.asarray(Image.fromarray(base).resize((image_size, image_size), Image.Resampling.BILINEAR), float)
        pixels = np.clip(field + rng.normal(0, 25, field.shape), 0, 255).astype(np.uint8)
        paths.append(str(root / "images" / f"{i:05d}.png"))
        Image.fromarray(pixels).save(paths[-1])
    targets = rng.random((num_images, num_classes)) < 0.08
    probs = np.clip(0.35 * targets + rng.uniform(0, 0.6, targets.shape), 0, 1)  # overlapping: AP below 1
    masks = np.ones_like(probs)
    masks[: num_images // 10, 0] = 0  # some unknown labels
    save_predictions(
        run / "predictions" / "test.npz",
        probs=probs,
        targets=targets,
        masks=masks,
        paths=paths,
        class_names=names,
        thresholds=meta["thresholds"],
    )
    return run


def test_labels_are_escaped_and_table_is_sortable(tmp_path):
    names = ["<b>bold</b>", "a&b", "plain"]
    run = _fake_run(tmp_path, num_images=40, num_classes=3, image_size=32, names=names)
    page = _html(build_report(run))
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page and "a&amp;b" in page
    assert "not readable from here" in page  # the config's training file is gone: said, not crashed
    row = re.search(r"<tr><td>plain</td>(.*?)</tr>", page).group(1)
    support = int(load_predictions(run / "predictions" / "test.npz")["targets"][:, 2].sum())
    assert re.findall(r'data-v="([^"]*)"', row)[0] == str(support)  # numbers carry their sort key


def test_report_size_for_50_labels_and_1000_images(tmp_path):
    # 96 px noisy images: every thumbnail is full size and compresses badly, so this is an upper bound
    run = _fake_run(tmp_path, num_images=1000, num_classes=50, image_size=96)
    start = time.perf_counter()
    out = build_report(run)
    seconds = time.perf_counter() - start
    size = out.stat().st_size
    print(f"\nreport for 50 labels x 1,000 images: {size / 1e6:.1f} MB in {seconds:.1f} s")
    assert size < 20_000_000
    page = _html(out)
    assert page.count('class="plot pr"') == 3  # 50 labels, 24 per figure


def test_predictions_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.random((5, 3)).astype(np.float32)
    targets = (rng.random((5, 3)) < 0.5).astype(np.float32)
    masks = np.ones((5, 3), np.float32)
    masks[1, 2] = 0
    paths = ["a.png", "dir/é.png", "狗.jpg", "x" * 300, ""]
    path = save_predictions(
        tmp_path / "p.bin", probs=probs, targets=targets, masks=masks, paths=paths, class_names=["cat", "dög", "狗"],
        thresholds=[0.2, 0.5, 0.9],
    )  # fmt: skip
    assert path == tmp_path / "p.bin"  # no ".npz" appended
    loaded = load_predictions(path)
    np.testing.assert_array_equal(loaded["probs"], probs)
    np.testing.assert_array_equal(loaded["targets"], targets)
    np.testing.assert_array_equal(loaded["masks"], masks)
    assert loaded["paths"] == paths and loaded["class_names"] == ["cat", "dög", "狗"]
    np.testing.assert_array_equal(loaded["thresholds"], [0.2, 0.5, 0.9])
    with np.load(path, allow_pickle=False) as raw:  # plain arrays only: nothing needs unpickling
        assert all(raw[k].dtype != object for k in raw.files)

    defaults = load_predictions(
        save_predictions(tmp_path / "d.npz", probs=probs, targets=targets, masks=None, paths=paths,
                         class_names=["a", "b", "c"], thresholds=None)
    )  # fmt: skip
    assert defaults["masks"].all() and (defaults["thresholds"] == 0.5).all()
    with pytest.raises(ValueError, match="shape"):
        save_predictions(tmp_path / "bad.npz", probs=probs, targets=targets[:4], masks=None, paths=paths,
                         class_names=["a", "b", "c"], thresholds=None)  # fmt: skip
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        load_predictions(tmp_path / "junk.npz")


def test_pr_curve_and_calibration_numbers():
    from sklearn.metrics import precision_recall_curve

    rng = np.random.default_rng(1)
    scores = np.round(rng.random(200), 2)  # ties included
    targets = rng.random(200) < 0.3
    known = rng.random(200) < 0.8
    recall, precision = pr_curve(scores, targets, known)
    ref_p, ref_r, _ = precision_recall_curve(targets[known], scores[known])
    # sklearn lists points from the lowest threshold up and ends at (recall 0, precision 1); ours runs the other way
    np.testing.assert_allclose(recall, ref_r[::-1])
    np.testing.assert_allclose(precision, ref_p[::-1])
    assert pr_curve(scores, np.zeros(200, bool), known) == (None, None)

    probs = rng.random((4000, 1))
    calibrated = rng.random((4000, 1)) < probs  # positive with exactly the predicted probability
    bins = calibration_bins(probs, calibrated, np.ones_like(probs, bool))
    assert bins["count"].sum() == 4000 and bins["ece"] < 0.05
    overconfident = calibration_bins(np.full((100, 1), 0.95), np.zeros((100, 1)), np.ones((100, 1), bool))
    assert overconfident["ece"] == pytest.approx(0.95)


def test_tensorboard_writer_logs_each_number(tmp_path, monkeypatch):
    from mlic.config import ConfigError
    from mlic.engine.tensorboard_log import TensorboardWriter

    logged = []

    class FakeSummaryWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, global_step):
            logged.append((tag, value, global_step))

        def flush(self):
            pass

        def close(self):
            logged.append("closed")

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeSummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    with TensorboardWriter(tmp_path / "tb") as writer:
        writer.log_epoch({"epoch": 2, "train_loss": 0.5, "val_loss": None, "val_mAP": 0.75, "lr": 1e-3, "note": "x"})
    assert logged == [("train/loss", 0.5, 2), ("val/mAP", 0.75, 2), ("lr", 1e-3, 2), "closed"]

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        TensorboardWriter(tmp_path / "tb2")


def test_help_has_examples(capsys):
    for command in ("report", "explain"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "examples:" in capsys.readouterr().out

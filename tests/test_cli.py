"""End to end through the CLI, in-process: train on tiny generated data, then evaluate and predict."""

import csv
import json
import shutil

import pytest

from mlic.cli import main


@pytest.fixture(scope="module")
def trained(tiny_shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    args = [
        "train", str(tiny_shapes["train"]), "--val", str(tiny_shapes["val"]), "--test", str(tiny_shapes["test"]),
        "--image-size", "32", "--epochs", "2", "--batch-size", "16", "--output-dir", str(out), "--name", "t",
        "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    assert main(args) == 0
    return out / "t"


def test_train_writes_the_run_folder(trained):
    assert (trained / "config.yaml").is_file()
    assert (trained / "history.png").stat().st_size > 1000
    for name in ("best", "last"):
        assert (trained / "checkpoints" / name / "model.safetensors").is_file()
        assert (trained / "checkpoints" / name / "meta.json").is_file()
    rows = list(csv.DictReader((trained / "metrics.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for key in (
        "train_loss",
        "val_loss",
        "val_mAP",
        "val_f1_micro",
        "val_f1_macro",
        "val_hamming_loss",
        "val_exact_match",
        "lr",
        "seconds",
    ):
        assert rows[0][key] != "", key
    test = json.loads((trained / "test_metrics.json").read_text())
    assert 0.0 <= test["mAP"] <= 1.0 and test["num_images"] == 24


def test_evaluate_prints_tables_and_writes_json(trained, tiny_shapes, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "evaluate",
                str(trained / "checkpoints/best"),
                "--data",
                str(tiny_shapes["test"]),
                "--output",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "mAP" in printed and "support" in printed and "circle" in printed
    report = json.loads(out.read_text())
    assert len(report["per_class"]) == report["num_classes"] >= 6
    # evaluating the best checkpoint again gives what training reported for the test set
    assert report["mAP"] == pytest.approx(json.loads((trained / "test_metrics.json").read_text())["mAP"], abs=1e-9)


def test_predict_formats_and_unreadable_files(trained, tiny_shapes, tmp_path, capsys):
    images = tiny_shapes["test"].parent / "images" / "test"
    bad = tmp_path / "broken.png"
    bad.write_text("this is not an image")
    out = tmp_path / "p.csv"
    ckpt = str(trained / "checkpoints/best")
    assert (
        main(
            ["predict", ckpt, str(images), str(bad), "--to", "csv", "--output", str(out), "--probabilities"]
            + ["--device", "cpu"]
        )
        == 0
    )
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert len(rows) == 25
    broken = [r for r in rows if r["path"] == str(bad)]
    assert broken and broken[0]["error"] and broken[0]["labels"] == ""
    assert all(0.0 <= float(r["p_circle"]) <= 1.0 for r in rows if not r["error"])
    # --threshold 0 labels every class, 1.01 none
    capsys.readouterr()
    first = sorted(images.iterdir())[0]
    assert (
        main(["predict", ckpt, str(first), "--to", "json", "--threshold", "0", "--probabilities", "--device", "cpu"])
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 1 and len(data[0]["labels"]) == len(data[0]["probabilities"])
    assert main(["predict", ckpt, str(first), "--threshold", "1.01", "--device", "cpu"]) == 0
    assert "(no labels)" in capsys.readouterr().out


def test_help_shows_worked_examples(capsys):
    for cmd in ([], ["train"], ["evaluate"], ["predict"], ["embed"], ["demo"]):
        with pytest.raises(SystemExit):
            main([*cmd, "--help"])
        assert "examples:" in capsys.readouterr().out


def test_bad_inputs_get_named_errors(tiny_shapes, tmp_path, capsys):
    csv_path = tmp_path / "labels.csv"
    shutil.copy(tiny_shapes["train"], csv_path)
    lines = csv_path.read_text().splitlines()
    lines[3] = "images/train/99999.png,circle"
    csv_path.write_text("\n".join(lines) + "\n")
    assert (
        main(
            [
                "train",
                str(csv_path),
                "--image-root",
                str(tiny_shapes["train"].parent),
                "--dry-run",
                "--output-dir",
                str(tmp_path / "r"),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "labels.csv:4" in err and "99999.png" in err and "not found" in err

    empty = tmp_path / "empty.csv"
    empty.write_text("image,labels\n")
    assert main(["train", str(empty), "--output-dir", str(tmp_path / "r2")]) == 2
    assert "empty.csv" in capsys.readouterr().err

    assert main(["evaluate", str(tmp_path), "--data", str(tiny_shapes["test"])]) == 2
    assert "not an mlic checkpoint" in capsys.readouterr().err


def test_dry_run_is_one_batch(tiny_shapes, tmp_path):
    assert (
        main(
            [
                "train",
                str(tiny_shapes["train"]),
                "--image-size",
                "32",
                "--dry-run",
                "--no-progress",
                "--output-dir",
                str(tmp_path),
                "--name",
                "d",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((tmp_path / "d" / "metrics.csv").read_text().splitlines()))
    assert len(rows) == 1


def test_saved_thresholds_are_used_and_missing_ones_fall_back_to_half(trained, tiny_shapes, tmp_path):
    from mlic.evaluation.evaluate import evaluate_checkpoint
    from mlic.evaluation.scoring import BatchOptions
    from mlic.inference.predictor import Predictor

    ckpt = trained / "checkpoints" / "best"
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["thresholds"] is not None and meta["threshold_info"]["method"] == "per_class"
    report = evaluate_checkpoint(
        ckpt, tiny_shapes["test"], batch=BatchOptions(device="cpu", num_workers=0, progress=False)
    )
    assert report["thresholds"] == "checkpoint (per_class)"
    assert [c["threshold"] for c in report["per_class"]] == pytest.approx(meta["thresholds"])
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    image = sorted((tiny_shapes["test"].parent / "images" / "test").iterdir())[0]
    pred = predictor.predict_image(image)
    expected = [n for n, t in zip(meta["class_names"], meta["thresholds"], strict=True) if pred.probabilities[n] >= t]
    assert pred.labels == expected

    bare = tmp_path / "bare"
    shutil.copytree(ckpt, bare)
    (bare / "meta.json").write_text(json.dumps(meta | {"thresholds": None, "threshold_info": None}))
    report = evaluate_checkpoint(
        bare, tiny_shapes["test"], batch=BatchOptions(device="cpu", num_workers=0, progress=False)
    )
    assert report["thresholds"] == "0.5 (checkpoint has no tuned thresholds)"
    assert all(c["threshold"] == 0.5 for c in report["per_class"])
    assert Predictor.from_checkpoint(bare, device="cpu").threshold_source.startswith("0.5")

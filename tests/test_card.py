"""Model card: written for a tiny run, front matter parses and carries the metrics, the report shows it."""

from __future__ import annotations

import json

import yaml

from mlic.cli import main


def test_model_card_of_a_tiny_run(tiny_checkpoint, tiny_shapes, tmp_path, capsys):
    card = tmp_path / "MODEL_CARD.md"
    args = ["card", str(tiny_checkpoint), "--data", str(tiny_shapes["test"]), "--output", str(card), "--bootstrap",
            "200", "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == f"model card: {card}"
    text = card.read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "mlic" and "multi-label-classification" in front["tags"]
    metrics = {m["name"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
    # the same numbers mlic evaluate measures on the same data
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(tiny_checkpoint), "--data", str(tiny_shapes["test"]), "--output", str(out),
                 "--no-progress", "--device", "cpu"]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    assert metrics["mean average precision"] == round(report["mAP"], 6)
    assert metrics["micro-F1"] == round(report["f1_micro"], 6) and "exact match (subset accuracy)" in metrics
    body = text.split("---\n", 2)[2]
    for heading in ("## Model", "## Evaluation data", "## Results", "## Thresholds", "## Calibration",
                    "## Intended use and limits"):  # fmt: skip
        assert heading in body
    assert body.count("\n| ") >= len(report["per_class"]) + 7  # overall rows and one row per class
    assert "200 resamples" in body and "unknown share" in body
    assert "- initial weights: random (trained from scratch)" in body


def test_model_card_names_hub_initial_weights():
    from mlic.insight.card import _model_part

    source = {"kind": "hub", "repo": "timm/resnet18.a1_in1k", "revision": "abc123", "file": "model.safetensors",
              "sha256": "f" * 64}  # fmt: skip
    meta = {"model": {"name": "resnet18"}, "class_names": ["a"], "initial_weights": source}
    assert "hub `timm/resnet18.a1_in1k` revision `abc123`, `model.safetensors`" in _model_part(meta)


def test_the_report_links_and_shows_the_card(tiny_shapes, tmp_path):
    train = ["train", str(tiny_shapes["train"]), "--val", str(tiny_shapes["val"]), "--image-size", "32",
             "--epochs", "1", "--output-dir", str(tmp_path), "--name", "r", "--no-progress", "--no-report",
             "--device", "cpu"]  # fmt: skip
    assert main(train) == 0
    ckpt = tmp_path / "r" / "checkpoints" / "best"
    assert main(["card", str(ckpt), "--data", str(tiny_shapes["test"]), "--bootstrap", "50", "--no-progress"]) == 0
    assert (tmp_path / "r" / "MODEL_CARD.md").is_file()
    assert main(["report", str(tmp_path / "r"), "--no-progress", "--device", "cpu"]) == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert '<a href="#model-card">Model card</a>' in page and '<section id="model-card">' in page
    assert "model-index:" in page

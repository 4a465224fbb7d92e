"""export --int8: a statically quantised ONNX model, calibrated on the run's images, checked against the checkpoint,
and taken by predict, evaluate and serve as any exported model."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlic.checkpoint import read_meta, save_checkpoint
from mlic.cli import main
from mlic.config import DataConfig, TrainConfig, to_dict
from mlic.data.dataset import MultiLabelDataset
from mlic.data.sources import load_records
from mlic.data.splits import holdout_split
from mlic.data.transforms import Preprocessing, batch_inputs, build_eval_pipeline
from mlic.inference.export_format import INT8_MIN_AGREEMENT
from mlic.models import build_model

if os.environ.get("CI") == "true":  # in CI a missing extra must fail, never skip
    import onnx
else:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime.quantization")

from mlic.inference import int8  # noqa: E402
from mlic.inference.export import export_metadata, read_export_metadata  # noqa: E402
from mlic.inference.int8_data import choose_images  # noqa: E402
from mlic.inference.onnx_predictor import OnnxPredictor  # noqa: E402
from mlic.inference.predictor import Predictor  # noqa: E402

SIZE = 32
COLOURS = {"blue": (30, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30), "yellow": (230, 220, 30)}
THRESHOLDS = [0.3, 0.5, 0.6, 0.45]


def _write_split(root: Path, split: str, n: int, seed: int) -> Path:
    """``n`` grey noise images with 1-4 coloured squares, labelled by their colours, and their CSV."""
    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True)
    rows = []
    for i in range(n):
        pixels = rng.integers(90, 160, (SIZE, SIZE, 3)).astype(np.int16)
        names = [c for c in COLOURS if rng.random() < 0.4] or [sorted(COLOURS)[i % len(COLOURS)]]
        for name in names:
            x, y, w = int(rng.integers(0, 20)), int(rng.integers(0, 20)), int(rng.integers(8, 13))
            pixels[y : y + w, x : x + w] = np.array(COLOURS[name]) + rng.integers(-20, 21, 3)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / split / f"{i}.png")
        rows.append((f"{split}/{i}.png", " ".join(names)))
    with open(root / f"{split}.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "labels"), *rows])
    return root / f"{split}.csv"


def _checkpoint(path: Path, train: Path, val: Path) -> Path:
    """A seed_cnn whose scores on held-out images sit far from its thresholds, as a trained model's do, built in
    seconds: random convolutions (BatchNorm statistics of the training images) and a least-squares classifier
    on their pooled features, which separate colour labels (held-out mAP ~1). A one-epoch training run instead
    scores every image within a hair of its thresholds, where any rounding flips labels."""
    classes = sorted(COLOURS)
    config = to_dict(TrainConfig(data=DataConfig(train=str(train), val=str(val), image_size=SIZE)))
    pre = Preprocessing(image_size=SIZE)
    dataset = MultiLabelDataset(load_records(train), classes, build_eval_pipeline(pre))
    batch = dataset.collate([dataset[i] for i in range(len(dataset))])
    torch.manual_seed(0)
    model = build_model("seed_cnn", len(classes))
    x = batch_inputs(batch.images, None, pre, torch.device("cpu"))
    with torch.no_grad():
        model.train()
        model.features(x)  # BatchNorm running statistics of these images
        model.eval()
        features = model.forward_head(model.forward_features(x), pre_logits=True).double()
        f = torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], 1)
        targets = (batch.targets.double() * 2 - 1) * 4  # logits of +-4 for present / absent colours
        w = torch.linalg.solve(f.T @ f + torch.eye(f.shape[1], dtype=torch.float64), f.T @ targets)
        model.classifier.weight.copy_(w[:-1].T.float())
        model.classifier.bias.copy_(w[-1].float())
    meta = {"model": {"name": "seed_cnn", "kwargs": {}}, "class_names": classes, "thresholds": THRESHOLDS,
            "preprocessing": pre.to_dict(), "config": config}  # fmt: skip
    return save_checkpoint(path, model, meta)


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("colours")
    train, val = _write_split(root, "train", 96, 0), _write_split(root, "val", 48, 1)
    return {"root": root, "train": train, "val": val, "ckpt": _checkpoint(root / "ckpt", train, val)}


@pytest.fixture(scope="module")
def exported(colours, tmp_path_factory):
    """``mlic export CKPT model.int8.onnx --int8`` with every default: calibration and check from the run."""
    out = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    stdout = io.StringIO()  # a module fixture cannot take capsys
    with contextlib.redirect_stdout(stdout):
        code = main(["export", str(colours["ckpt"]), str(out), "--int8"])
    return {**colours, "int8": out, "code": code, "stdout": stdout.getvalue()}


def test_int8_export_writes_a_quantised_model_with_the_fp32_contract(exported):
    assert exported["code"] == 0, exported["stdout"]
    out = exported["int8"]
    assert out.is_file() and not out.with_name(f".{out.name}.partial").exists()
    assert "agreement with the checkpoint:" in exported["stdout"] and "max |p - checkpoint|" in exported["stdout"]
    graph = onnx.load(str(out)).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8  # the same uint8 input contract
    weights = {t.name: t for t in graph.initializer}
    assert any(t.data_type == onnx.TensorProto.INT8 for t in weights.values())  # convolution weights are int8
    # the scaling and the head stay float: uint8 -> Cast first; the classifier's weight float32; sigmoid last
    assert graph.node[0].op_type == "Cast" and ops[-1] == "Sigmoid"
    classifier = next(n for n in graph.node if n.output[0] == graph.node[-1].input[0])
    assert classifier.op_type == "Gemm" and weights[classifier.input[1]].data_type == onnx.TensorProto.FLOAT


def test_int8_metadata_is_the_fp32_exports_plus_how_it_was_quantised(exported):
    meta = read_export_metadata(exported["int8"])
    quantization = meta.pop("quantization")
    fp32 = json.loads(json.dumps(export_metadata(read_meta(exported["ckpt"]), "uint8")))  # what fp32 export writes
    assert meta == fp32
    assert json.loads(Path(f"{exported['int8']}.json").read_text()) == {**meta, "quantization": quantization}
    assert quantization["dtype"] == "int8" and quantization["format"] == "QDQ"
    assert quantization["calibration"] == {"method": "MinMax", "images": 96, "unreadable": 0,
                                           "data": str(exported["train"]), "seed": 0}  # fmt: skip
    check = quantization["check"]
    assert check["data"] == str(exported["val"]) and check["images"] == 48 and check["cells"] == 48 * len(COLOURS)
    assert check["agreement"] >= INT8_MIN_AGREEMENT and check["required"] == INT8_MIN_AGREEMENT
    graph = onnx.load(str(exported["int8"])).graph  # the input's Cast and the output's Sigmoid were kept float
    assert {graph.node[0].name, graph.node[-1].name} <= set(quantization["float_nodes"])


def test_int8_model_agrees_with_the_checkpoint_on_held_out_images(exported):
    paths = sorted((exported["root"] / "val").glob("*.png"))
    q = list(OnnxPredictor.from_file(exported["int8"]).predict_paths(paths))
    ref = list(Predictor.from_checkpoint(exported["ckpt"], device="cpu").predict_paths(paths))
    on = lambda preds: np.array([[c in p.labels for c in sorted(COLOURS)] for p in preds])  # noqa: E731
    assert (on(q) == on(ref)).mean() >= INT8_MIN_AGREEMENT
    probs = lambda preds: np.array([[p.probabilities[c] for c in sorted(COLOURS)] for p in preds])  # noqa: E731
    assert np.abs(probs(q) - probs(ref)).max() < 0.05


def test_predict_and_evaluate_take_the_int8_file(exported, tmp_path, capsys):
    labels = {}
    for name, model in (("int8", exported["int8"]), ("ckpt", exported["ckpt"])):
        out = tmp_path / f"{name}.jsonl"
        args = ["predict", str(model), str(exported["root"] / "val"), "--output", str(out), "--no-progress",
                "--workers", "0"]  # fmt: skip
        assert main(args) == 0
        labels[name] = {r["path"]: set(r["labels"]) for r in map(json.loads, out.read_text().splitlines())}
    cells = [(c in labels["int8"][p]) == (c in labels["ckpt"][p]) for p in labels["ckpt"] for c in COLOURS]
    assert len(cells) == 48 * len(COLOURS) and np.mean(cells) >= INT8_MIN_AGREEMENT
    reports = {}
    for name, model in (("int8", exported["int8"]), ("ckpt", exported["ckpt"])):
        out = tmp_path / f"{name}.json"
        args = ["evaluate", str(model), "--data", str(exported["val"]), "--output", str(out), "--no-progress",
                "--workers", "0"]  # fmt: skip
        assert main(args) == 0
        reports[name] = json.loads(out.read_text())
    assert reports["int8"]["num_images"] == 48 and reports["int8"]["thresholds"] == reports["ckpt"]["thresholds"]
    assert abs(reports["int8"]["mAP"] - reports["ckpt"]["mAP"]) < 0.01
    assert "mAP" in capsys.readouterr().out


def test_serve_takes_the_int8_file(exported):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from mlic.inference.serve import create_app

    image = exported["root"] / "val" / "0.png"
    expected = OnnxPredictor.from_file(exported["int8"]).predict_image(image)
    with TestClient(create_app(str(exported["int8"]))) as client:
        assert client.get("/labels").json()["thresholds"] == dict(zip(sorted(COLOURS), THRESHOLDS, strict=True))
        body = client.post("/predict", files={"files": ("0.png", image.read_bytes(), "image/png")}).json()
    assert body["results"][0]["labels"] == expected.labels


def test_a_refused_int8_export_leaves_nothing_and_says_why_in_one_line(colours, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(int8, "MIN_AGREEMENT", 1.01)  # more than any model can agree: the refusal path
    out = tmp_path / "model.int8.onnx"
    args = ["export", str(colours["ckpt"]), str(out), "--int8", "--calibration-data", str(colours["train"]),
            "--calibration-images", "16"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused" in err[0] and "cells over" in err[0] and "images" in err[0], err
    assert "of 96 images of" in err[0]  # checked on --calibration-data's held-out share (20% of 96)
    assert list(tmp_path.iterdir()) == []  # no model, no .partial, no sidecar


def _moved_run(colours: Path, tmp_path: Path) -> Path:
    """A copy of the checkpoint whose run's training labels are gone."""
    meta = read_meta(colours["ckpt"])
    meta["config"]["data"]["train"] = str(tmp_path / "gone" / "train.csv")
    folder = tmp_path / "ckpt"
    shutil.copytree(colours["ckpt"], folder)
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("case", ["missing-flag-path", "run-labels-gone", "unreadable-images", "empty-folder"])
def test_missing_calibration_data_is_a_one_line_error(colours, tmp_path, capsys, case):
    ckpt, extra = colours["ckpt"], []
    if case == "missing-flag-path":
        extra = ["--calibration-data", str(tmp_path / "nowhere.csv")]
    elif case == "run-labels-gone":
        ckpt = _moved_run(colours, tmp_path)
    elif case == "unreadable-images":
        (tmp_path / "broken.csv").write_text("image,labels\na.png,red\nb.png,blue\nc.png,red\n")
        extra = ["--calibration-data", str(tmp_path / "broken.csv")]
    else:
        (tmp_path / "empty").mkdir()
        extra = ["--calibration-data", str(tmp_path / "empty")]
    out = tmp_path / "m.onnx"
    assert main(["export", str(ckpt), str(out), "--int8", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlic export: error:"), err
    assert "--calibration-data" in err[0]
    assert not out.exists()


def test_int8_is_for_onnx_only_and_its_flags_for_int8(colours, tmp_path, capsys):
    assert main(["export", str(colours["ckpt"]), str(tmp_path / "m.pt"), "--int8"]) == 2
    assert main(["export", str(colours["ckpt"]), str(tmp_path / "m.onnx"), "--int8", "--embedding"]) == 2
    assert main(["export", str(colours["ckpt"]), str(tmp_path / "m.onnx"), "--calibration-data", "x.csv"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "ONNX export only" in err[0] and "--embedding" in err[1] and "--calibration-data: for --int8 only" in err[2]
    assert list(tmp_path.iterdir()) == []


def test_check_images_are_never_calibrated_on(colours):
    # a run that held out part of its training labels (no --val): that very part is checked on
    meta = {"config": to_dict(TrainConfig(data=DataConfig(train=str(colours["train"]), val_fraction=0.25)))}
    calibration, check = choose_images(meta, None, None, 1000)
    _, held = holdout_split(load_records(colours["train"]), 0.25, seed=meta["config"]["seed"])
    assert check.paths == list(held.paths) and not set(calibration.paths) & set(check.paths)
    assert len(calibration.paths) + len(check.paths) == 96
    # --calibration-data: a seeded held-out share; at most N calibration images
    calibration, check = choose_images(meta, colours["train"], None, 16)
    assert len(calibration.paths) == 16 and len(check.paths) == round(0.2 * 96)
    assert not set(calibration.paths) & set(check.paths)
    # --check-data names them
    _, check = choose_images(meta, None, colours["val"], 16)
    assert check.paths == list(load_records(colours["val"]).paths) and check.source == str(colours["val"])

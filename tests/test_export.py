"""Export: ONNX and TorchScript reproduce the checkpoint's probabilities and carry its metadata."""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlic.checkpoint import read_meta, save_checkpoint
from mlic.cli import main
from mlic.data.images import decode_image
from mlic.data.transforms import Preprocessing, build_stage_transform
from mlic.inference.inputs import expand_inputs
from mlic.inference.load import load_predictor
from mlic.inference.predictor import Predictor
from mlic.models import build_model

if os.environ.get("CI") == "true":  # in CI a missing extra must fail, never skip
    import onnx
    import onnxruntime as ort
else:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

from mlic.inference.export import ExportError, read_export_metadata  # noqa: E402
from mlic.inference.onnx_predictor import OnnxPredictor  # noqa: E402

CLASSES = ["cat", "dog", "grass", "sky", "car", "tree"]
SIZE = 32


def make_checkpoint(path: Path) -> Path:
    """Random seed CNN with trained BatchNorm statistics (so folding them is really tested) and per-class thresholds."""
    torch.manual_seed(0)
    kwargs = {"widths": [8, 8, 16, 16], "hidden": 32}
    model = build_model("seed_cnn", len(CLASSES), **kwargs)
    model.train()
    for _ in range(3):
        model(torch.randn(8, 3, SIZE, SIZE) * 2 + 0.5)
    meta = {
        "model": {"name": "seed_cnn", "kwargs": kwargs},
        "class_names": CLASSES,
        "thresholds": [0.3, 0.45, 0.5, 0.6, 0.4, 0.55],
        "preprocessing": {"image_size": SIZE, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    }
    return save_checkpoint(path, model.eval(), meta)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    ckpt = make_checkpoint(root / "ckpt")
    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir()
    for i, (h, w) in enumerate([(32, 32), (40, 25), (17, 64), (90, 90), (32, 33), (8, 8), (50, 41)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "broken.jpg").write_text("not an image")
    onnx_path, ts_path = root / "model.onnx", root / "model.pt"
    assert main(["export", str(ckpt), str(onnx_path)]) == 0
    assert main(["export", str(ckpt), "--to", "torchscript", str(ts_path)]) == 0
    return {"root": root, "ckpt": ckpt, "images": images, "onnx": onnx_path, "torchscript": ts_path}


def _reference(exported):
    predictor = Predictor.from_checkpoint(exported["ckpt"], device="cpu")
    return predictor, list(predictor.predict_paths(expand_inputs([exported["images"]])))


def _uint8_batch(exported, transform):
    """The readable test images through ``transform``, stacked, in the order predict_paths yields them."""
    paths = sorted(p for p in exported["images"].iterdir() if p.suffix == ".png")
    return torch.stack([transform(decode_image(p)) for p in paths])


def test_onnx_file_is_valid_and_carries_the_checkpoint_metadata(exported):
    proto = onnx.load(str(exported["onnx"]))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["probabilities"]  # the embedding only with --embedding
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}  # folded
    meta = read_meta(exported["ckpt"])
    for fmt in ("onnx", "torchscript"):
        embedded = read_export_metadata(exported[fmt])
        sidecar = json.loads(Path(f"{exported[fmt]}.json").read_text())
        assert embedded == sidecar
        assert embedded["format"] == "mlic-export" and embedded["version"] == 1
        assert embedded["class_names"] == meta["class_names"]
        assert embedded["thresholds"] == meta["thresholds"]
        assert Preprocessing.from_dict(embedded["preprocessing"]) == Preprocessing.from_dict(meta["preprocessing"])
        assert embedded["input"]["dtype"] == "uint8" and embedded["input"]["shape"] == ["batch", 3, SIZE, SIZE]


def test_onnx_parity_with_the_checkpoint(exported):
    predictor, reference = _reference(exported)
    onnx_preds = list(OnnxPredictor.from_file(exported["onnx"]).predict_paths(expand_inputs([exported["images"]])))
    assert [p.path for p in onnx_preds] == [p.path for p in reference]
    diffs = []
    for ref, got in zip(reference, onnx_preds, strict=True):
        assert got.labels == ref.labels and (got.error is None) == (ref.error is None)
        diffs += [abs(got.probabilities[n] - ref.probabilities[n]) for n in ref.probabilities]
    assert len(diffs) == 7 * len(CLASSES) and max(diffs) <= 1e-4
    assert sum(len(p.labels) for p in reference) > 0  # thresholds really select something


def test_torchscript_parity_with_the_checkpoint(exported):
    predictor, reference = _reference(exported)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation
        module = torch.jit.load(str(exported["torchscript"]))
    probs = module(_uint8_batch(exported, build_stage_transform(predictor.preprocessing))).detach().numpy()
    ref = np.array([[p.probabilities[n] for n in CLASSES] for p in reference if p.error is None])
    assert np.abs(probs - ref).max() <= 1e-4
    labels = [[n for n, on in zip(CLASSES, row >= predictor.thresholds, strict=True) if on] for row in probs]
    assert labels == [p.labels for p in reference if p.error is None]


def test_batch_size_is_dynamic(exported):
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(exported["torchscript"]))
    x = torch.randint(0, 256, (5, 3, SIZE, SIZE), dtype=torch.uint8)
    five = session.run(None, {"images": x.numpy()})[0]
    one = session.run(None, {"images": x[:1].numpy()})[0]
    assert five.shape == (5, len(CLASSES)) and one.shape == (1, len(CLASSES))
    assert np.abs(one[0] - five[0]).max() <= 1e-5 and ((five > 0) & (five < 1)).all()
    assert module(x).shape == (5, len(CLASSES)) and module(x[:1]).shape == (1, len(CLASSES))


def test_predict_through_onnx_gives_the_checkpoint_labels(exported, tmp_path, capsys):
    outs = {}
    for name in ("ckpt", "onnx"):
        out = tmp_path / f"{name}.csv"
        args = ["predict", str(exported[name]), str(exported["images"]), "--to", "csv", "--output", str(out)]
        assert main([*args, "--device", "cpu", "--no-progress"]) == 0
        outs[name] = [(r["path"], r["labels"], bool(r["error"])) for r in csv.DictReader(out.open())]
    assert outs["onnx"] == outs["ckpt"] and len(outs["ckpt"]) == 8
    assert "1 unreadable" in capsys.readouterr().err
    assert isinstance(load_predictor(exported["onnx"], threshold=0.2), OnnxPredictor)


def test_embedding_needs_an_export_with_embedding(exported, tmp_path, capsys):
    image = next(exported["images"].glob("*.png"))
    with pytest.raises(ExportError, match="no 'embedding' output"):
        OnnxPredictor.from_file(exported["onnx"]).embed([image])
    assert main(["embed", str(exported["onnx"]), str(image), "--output", str(tmp_path / "e.npy")]) == 2
    assert "export it with `mlic export CKPT OUT.onnx --embedding`" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_onnx_without_mlic_metadata_is_refused(exported, tmp_path):
    proto = onnx.load(str(exported["onnx"]))
    del proto.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(proto, str(plain))
    with pytest.raises(ExportError, match="not an mlic export"):
        OnnxPredictor.from_file(plain)


def test_float32_input_option_torchscript(exported, tmp_path):
    out = tmp_path / "float.pt"
    assert main(["export", str(exported["ckpt"]), "--to", "torchscript", str(out), "--input-dtype", "float32"]) == 0
    predictor = Predictor.from_checkpoint(exported["ckpt"], device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(out))
    uint8 = _uint8_batch(exported, build_stage_transform(predictor.preprocessing))
    float_in = uint8.float() / 255.0
    expected = predictor.predict_probabilities(_uint8_batch(exported, predictor.loader.transform))
    assert np.abs(module(float_in).detach().numpy() - expected).max() <= 1e-4
    assert read_export_metadata(out)["input"]["range"] == "0..1"


@pytest.mark.slow
def test_float32_input_option_onnx(exported, tmp_path):
    out = tmp_path / "float.onnx"
    assert main(["export", str(exported["ckpt"]), "--to", "onnx", str(out), "--input-dtype", "float32"]) == 0
    _, reference = _reference(exported)
    got = list(OnnxPredictor.from_file(out).predict_paths(expand_inputs([exported["images"]])))
    assert [p.labels for p in got] == [p.labels for p in reference]
    assert (
        max(
            abs(g.probabilities[n] - r.probabilities[n])
            for g, r in zip(got, reference, strict=True)
            for n in r.probabilities
        )
        <= 1e-4
    )


def test_export_help_has_worked_examples(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "model.onnx" in out and "--to" in out

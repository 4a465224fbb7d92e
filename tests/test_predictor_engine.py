"""The engine behind ``Predictor``: PyTorch or ONNX Runtime on an ONNX copy, chosen by name or by ``auto``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mlic.cli import main
from mlic.data.pixels import eval_loader
from mlic.inference import engines
from mlic.inference.engines import EngineError, choose_engine
from mlic.inference.predictor import Predictor

if os.environ.get("CI") != "true":  # in CI a missing extra is a failure, never a skip
    pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def images(tiny_shapes) -> list[Path]:
    return sorted((tiny_shapes["test"].parent / "images" / "test").glob("*.png"))


@pytest.fixture(scope="module")
def both(tiny_checkpoint) -> dict[str, Predictor]:
    return {e: Predictor.from_checkpoint(tiny_checkpoint, device="cpu", engine=e) for e in ("torch", "onnx")}


def test_torch_and_onnx_engines_agree_within_1e4(both, images):
    assert (both["torch"].engine, both["onnx"].engine) == ("torch", "onnx")
    loader = eval_loader(both["torch"].preprocessing)
    for batch in (images[:1], images[:7]):  # batch 1 and a batch the export never saw: the batch size is dynamic
        x = torch.stack([loader(p) for p in batch])
        torch_probs, onnx_probs = both["torch"].predict_probabilities(x), both["onnx"].predict_probabilities(x)
        assert onnx_probs.shape == torch_probs.shape and onnx_probs.dtype == np.float32
        assert np.abs(onnx_probs - torch_probs).max() <= 1e-4
    one, reference = both["onnx"].predict_image(images[0]), both["torch"].predict_image(images[0])
    assert max(abs(one.probabilities[n] - p) for n, p in reference.probabilities.items()) <= 1e-4
    streamed = list(both["onnx"].predict_paths(images[:5], batch_size=2))
    assert [p.path for p in streamed] == [str(p) for p in images[:5]]


def test_the_default_engine_is_torch_and_the_onnx_one_keeps_the_torch_model(tiny_checkpoint, both):
    assert Predictor.from_checkpoint(tiny_checkpoint, device="cpu").engine == "torch"  # bit-exact with evaluation
    assert isinstance(both["onnx"].model, torch.nn.Module)  # embeddings, Grad-CAM, evaluation still have it


def test_auto_picks_onnx_on_the_cpu_and_reads_the_cached_copy(tiny_checkpoint, both, monkeypatch):
    cached = Path(both["onnx"]._onnx.source)
    assert cached.is_file() and cached.parent.parent == Path(os.environ["MLIC_CACHE_DIR"])
    auto = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", engine="auto")
    assert auto.engine == "onnx" and auto._onnx.source == str(cached)  # no second export
    assert choose_engine("auto", "cuda") == "torch"
    monkeypatch.setattr(engines, "onnx_available", lambda: False)
    assert choose_engine("auto", "cpu") == "torch"


def test_auto_falls_back_to_torch_when_the_copy_fails_and_onnx_says_why(tiny_checkpoint, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("an operator torch.export cannot trace")

    monkeypatch.setattr(engines, "onnx_model", broken)
    assert Predictor.from_checkpoint(tiny_checkpoint, device="cpu", engine="auto").engine == "torch"
    assert "engine auto: running the PyTorch model" in capsys.readouterr().err
    with pytest.raises(EngineError, match="cannot trace.*use --engine torch"):
        Predictor.from_checkpoint(tiny_checkpoint, device="cpu", engine="onnx")


def test_a_bad_engine_is_a_one_line_error(tiny_checkpoint, capsys):
    with pytest.raises(EngineError, match=r"engine 'tensorrt' is not allowed; choose one of: auto, torch, onnx"):
        Predictor.from_checkpoint(tiny_checkpoint, device="cpu", engine="tensorrt")
    with pytest.raises(EngineError, match="runs on the CPU, not on cuda"):
        choose_engine("onnx", "cuda")
    for argv, fragment in (
        (["serve", str(tiny_checkpoint), "--engine", "tensorrt"], "'tensorrt' is not allowed; choose one of: auto"),
        (["serve", str(tiny_checkpoint), "--exact", "--engine", "onnx"], "--exact) runs the torch engine"),
    ):
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse's usage error
            code = stop.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("mlic serve: error: ") and fragment in err[0], err

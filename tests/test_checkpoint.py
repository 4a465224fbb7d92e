import json

import pytest
import torch

from mlic.checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from mlic.models import build_model

META = {
    "model": {"name": "seed_cnn", "kwargs": {"drop_rate": 0.5, "widths": [8, 8, 16, 16], "hidden": 32}},
    "class_names": ["a", "b", "c"],
    "thresholds": None,
    "preprocessing": {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
}


def _model():
    torch.manual_seed(0)
    model = build_model("seed_cnn", 3, **META["model"]["kwargs"])
    # move BN running stats away from their defaults so the round trip checks buffers too
    model.train()
    model(torch.randn(4, 3, 32, 32))
    return model.eval()


def test_round_trip_gives_identical_predictions(tmp_path):
    model = _model()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    save_checkpoint(tmp_path / "ckpt", model, META)
    loaded, meta = load_checkpoint(tmp_path / "ckpt")
    with torch.no_grad():
        after = loaded(x)
    assert torch.equal(before, after)
    assert meta["class_names"] == ["a", "b", "c"] and meta["format"] == "mlic-checkpoint"


def test_wrapped_model_is_saved_unwrapped(tmp_path):
    wrapped = torch.nn.Module()
    wrapped.module = _model()
    save_checkpoint(tmp_path / "ckpt", wrapped, META)
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "ckpt" / "model.safetensors").keys()
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in keys)
    load_checkpoint(tmp_path / "ckpt")


def test_overwrite_keeps_a_complete_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "ckpt", _model(), META)
    save_checkpoint(tmp_path / "ckpt", _model(), META | {"epoch": 2})
    assert read_meta(tmp_path / "ckpt")["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_not_our_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "file.pt").write_bytes(b"\x80\x04junk")
    with pytest.raises(CheckpointError, match="not an mlic checkpoint"):
        load_checkpoint(tmp_path / "file.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="meta.json missing"):
        load_checkpoint(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "meta.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not an mlic checkpoint"):
        load_checkpoint(tmp_path / "other")


def test_corrupt_or_mismatched_weights_are_named(tmp_path):
    save_checkpoint(tmp_path / "ckpt", _model(), META)
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(tmp_path / "ckpt")
    save_checkpoint(tmp_path / "ck2", _model(), META)
    meta = json.loads((tmp_path / "ck2" / "meta.json").read_text())
    meta["class_names"] = ["a", "b"]  # head size no longer matches the weights
    (tmp_path / "ck2" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises((CheckpointError, RuntimeError)):
        load_checkpoint(tmp_path / "ck2")


def test_future_version_is_refused(tmp_path):
    save_checkpoint(tmp_path / "ckpt", _model(), META)
    meta = json.loads((tmp_path / "ckpt" / "meta.json").read_text())
    meta["version"] = 99
    (tmp_path / "ckpt" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path / "ckpt")

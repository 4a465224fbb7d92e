"""Faults: exact resume after SIGKILL, SIGTERM checkpoints, interrupted writes, crafted pickles."""

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mlic.checkpoint import CheckpointError, load_checkpoint, load_train_state, read_meta, save_checkpoint
from mlic.cli import main

COMMON = ["--image-size", "32", "--batch-size", "8", "--epochs", "4", "--no-progress", "--device", "cpu",
          "--workers", "0", "--deterministic", "--no-report", "--precision", "fp32"]  # fmt: skip


def _train_args(shapes, out, name, *extra):
    return ["train", str(shapes["train"]), "--val", str(shapes["val"]), "--output-dir", str(out), "--name", name,
            *COMMON, *extra]  # fmt: skip


def _weights(run_dir: Path) -> dict:
    return load_file(run_dir / "checkpoints" / "last" / "model.safetensors")


def _progress(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "checkpoints" / "last" / "meta.json").read_text())["progress"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def _spawn(args):
    return subprocess.Popen(
        [sys.executable, "-m", "mlic", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture(scope="module")
def uninterrupted(tiny_shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    assert main(_train_args(tiny_shapes, out, "ref")) == 0
    return out / "ref"


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tiny_shapes, tmp_path, uninterrupted):
    rng = random.Random(os.getpid())
    for attempt in range(5):
        run = tmp_path / f"killed{attempt}"
        # step checkpoints make epoch 2 slow enough to be hit, and give the kill a mid-epoch resume point
        proc = _spawn(_train_args(tiny_shapes, tmp_path, run.name, "--checkpoint-every", "1"))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            p = _progress(run)
            if p and (p["epoch"] == 1 and p["step"] >= 1):
                time.sleep(rng.uniform(0.0, 0.15))  # a random step of epoch 2
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=60)
        if proc.returncode == -signal.SIGKILL and _progress(run)["epoch"] < 4:
            break
    else:
        pytest.fail("could not kill the run inside epoch 2")
    assert main(["train", "--resume", str(run), "--no-progress", "--no-report"]) == 0
    ref, resumed = _weights(uninterrupted), _weights(run)
    assert ref.keys() == resumed.keys()
    for key in ref:
        assert torch.equal(ref[key], resumed[key]), key
    ref_rows = (uninterrupted / "metrics.csv").read_text().splitlines()
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == len(ref_rows) == 5
    # same losses, metrics and lr in every epoch (the seconds and img/s columns naturally differ)
    assert [r.split(",")[:11] for r in rows] == [r.split(",")[:11] for r in ref_rows]


def test_sigterm_checkpoints_and_exits_with_documented_code(tiny_shapes, tmp_path):
    run = tmp_path / "term"
    proc = _spawn(_train_args(tiny_shapes, tmp_path, "term", "--checkpoint-every", "1"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        p = _progress(run)
        if p and p["epoch"] >= 1:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.01)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM" in err and "--resume" in err
    p = _progress(run)
    assert p is not None and p["epoch"] < 4
    load_train_state(run / "checkpoints" / "last")  # a complete, loadable resume point


def test_resume_with_another_model_is_refused_naming_the_difference(tiny_shapes, uninterrupted, capsys):
    code = main(["train", "--resume", str(uninterrupted), "--set", "model.widths=[8, 16, 32, 64]", "--no-progress"])
    assert code == 2
    assert "model.widths" in capsys.readouterr().err


def _tiny_model():
    from mlic.models import build_model

    torch.manual_seed(0)
    return build_model("seed_cnn", 2, widths=[4, 4, 8, 8], hidden=8)


META = {"model": {"name": "seed_cnn", "kwargs": {"widths": [4, 4, 8, 8], "hidden": 8}}, "class_names": ["a", "b"],
        "preprocessing": {"image_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3}}  # fmt: skip


def test_interrupted_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "last"
    save_checkpoint(ckpt, _tiny_model(), META | {"epoch": 1})
    import safetensors.torch

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(ckpt, _tiny_model(), META | {"epoch": 2})
    monkeypatch.undo()
    assert read_meta(ckpt)["epoch"] == 1  # the partial one (.last.tmp) is ignored
    load_checkpoint(ckpt)
    # a crash between the two renames of the swap: readers read the complete predecessor where it lies and never
    # rename (a concurrent save would fail); the next save recovers it and replaces it
    ckpt.rename(tmp_path / ".last.old")
    assert read_meta(ckpt)["epoch"] == 1 and load_checkpoint(ckpt)[1]["epoch"] == 1
    assert not ckpt.exists() and (tmp_path / ".last.old").is_dir()
    save_checkpoint(ckpt, _tiny_model(), META | {"epoch": 3})
    assert read_meta(ckpt)["epoch"] == 3 and not (tmp_path / ".last.old").exists()


class _Payload:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (Path(self.sentinel),))


def test_crafted_pickles_never_execute(tmp_path):
    sentinel = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, _tiny_model(), META, train_state={"optimizer": {}})
    (ckpt / "train_state.pt").write_bytes(pickle.dumps({"optimizer": _Payload(sentinel)}))
    with pytest.raises(CheckpointError, match="not a valid mlic training state"):
        load_train_state(ckpt)
    torch.save({"optimizer": _Payload(sentinel)}, ckpt / "train_state.pt")
    with pytest.raises(CheckpointError):
        load_train_state(ckpt)
    (ckpt / "model.safetensors").write_bytes(pickle.dumps(_Payload(sentinel)))
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(ckpt)
    assert not sentinel.exists()
    # the payload is real: unpickling it unsafely would have created the sentinel
    pickle.loads(pickle.dumps(_Payload(sentinel)))
    assert sentinel.exists()

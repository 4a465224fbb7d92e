"""Hub weights, offline: the real loading path (timm's pretrained config -> huggingface_hub's hf_hub_download ->
mlic's loader) against a Hugging Face cache folder fabricated here in the standard layout.

The layout is huggingface_hub's own: ``<cache>/models--ORG--NAME/refs/main`` holds the commit hash,
``snapshots/<commit>/<file>`` is a relative symlink to ``blobs/<sha256>``. Nothing touches the network: the CLI
runs in a subprocess with ``HF_HUB_OFFLINE=1`` and ``HF_HOME`` pointing at the fabricated folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if os.environ.get("CI") == "true":
    import huggingface_hub  # noqa: F401
    import timm
else:
    timm = pytest.importorskip("timm")
    pytest.importorskip("huggingface_hub")

from safetensors.torch import load_file, save_file  # noqa: E402

from mlic.checkpoint import load_checkpoint, read_meta  # noqa: E402

MODEL = "test_resnet"  # timm's tiny test network; its default hub weights are timm/test_resnet.r160_in1k
REPO = "timm/test_resnet.r160_in1k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fabricate_cache(hub_cache: Path, repo: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """A repo in ``hub_cache`` as huggingface_hub leaves it after a download; returns the snapshot folder."""
    folder = hub_cache / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / commit
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def pretrained_bytes(tmp_path: Path, seed: int = 3) -> bytes:
    """A 1000-class test_resnet's weights, as the hub would hold them (BatchNorm statistics away from 0/1)."""
    torch.manual_seed(seed)
    model = timm.create_model(MODEL, pretrained=False, num_classes=1000)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith(("running_mean", "running_var")):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path.read_bytes()


def run_cli(args: list[str], hf_home: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-m", "mlic", *args], capture_output=True, text=True, env=env, timeout=300)


def train_args(tiny_shapes, out: Path, *extra: str) -> list[str]:
    return ["train", str(tiny_shapes["train"]), "--val", str(tiny_shapes["val"]), "--model", MODEL, "--image-size",
            "32", "--epochs", "1", "--batch-size", "16", "--output-dir", str(out), "--name", "hub", "--no-progress",
            "--no-report", "--device", "cpu", *extra]  # fmt: skip


def test_pretrained_from_a_fabricated_hub_cache_trains_and_records_its_source(tiny_shapes, tmp_path):
    data = pretrained_bytes(tmp_path)
    snapshot = fabricate_cache(tmp_path / "hf" / "hub", REPO, {"model.safetensors": data})
    # The backbone frozen for the one epoch, BatchNorm statistics too: after training it must still equal the
    # cached file exactly, which shows the file (and no other) was loaded; the new 6-class head trained.
    done = run_cli(train_args(tiny_shapes, tmp_path, "--pretrained", "--freeze-backbone-epochs", "1", "--freeze-bn"),
                   tmp_path / "hf")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    best = tmp_path / "hub" / "checkpoints" / "best"
    model, meta = load_checkpoint(best)
    cached = load_file(snapshot / "model.safetensors")
    trained = model.state_dict()
    backbone = [k for k in cached if not k.startswith("fc.")]
    assert backbone and all(torch.equal(trained[k], cached[k]) for k in backbone)
    assert trained["fc.weight"].shape == (6, cached["fc.weight"].shape[1])
    source = read_meta(best)["initial_weights"]
    assert source == {"kind": "hub", "model": MODEL, "repo": REPO, "revision": COMMIT, "requested_revision": None,
                      "file": "model.safetensors", "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    # timm's pretrained_cfg of test_resnet normalises with 0.5 / 0.5, not ImageNet's statistics
    assert meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and meta["preprocessing"]["std"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("spec", ["hub", f"hf-hub:{REPO}@main"])  # hf-hub: reaches the hub before timm loads
def test_offline_with_an_empty_cache_is_one_line_naming_the_model_and_the_cache(tiny_shapes, tmp_path, spec):
    done = run_cli(train_args(tiny_shapes, tmp_path / "runs", "--pretrained", spec), tmp_path / "empty")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("mlic train: error: --model test_resnet") and REPO in last
    assert str(tmp_path / "empty" / "hub") in last and "HF_HUB_OFFLINE=1" in last
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_hf_hub_spec_reads_the_repos_own_config_and_revision(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    from mlic.models.hub import resolve_initial_weights

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    data = pretrained_bytes(tmp_path)
    config = {"architecture": MODEL, "pretrained_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6],
                                                         "input_size": [3, 96, 96]}}  # fmt: skip
    files = {"pytorch_model.bin": data, "config.json": json.dumps(config).encode()}  # only the older file name
    other = "fedcba9876543210fedcba9876543210fedcba98"
    fabricate_cache(tmp_path / "hub", "someone/tiny", files, commit=other)
    weights = resolve_initial_weights(MODEL, f"hf-hub:someone/tiny@{other}", progress=False)
    assert weights.source["revision"] == other and weights.source["file"] == "pytorch_model.bin"
    norm = weights.normalization
    assert norm.mean == (0.1, 0.2, 0.3) and norm.std == (0.4, 0.5, 0.6) and norm.input_size == 96


@pytest.mark.parametrize(
    ("model", "spec", "message"),
    [
        ("seed_cnn", "hub", "no default hub weights"),
        (MODEL, "hf-hub:no-slash", "expected hf-hub:ORG/NAME"),
    ],
)
def test_specs_that_cannot_name_hub_weights(model, spec, message):
    from mlic.models.hub import HubError, resolve_initial_weights

    with pytest.raises(HubError, match=message):
        resolve_initial_weights(model, spec, progress=False)


def test_local_file_records_its_hash(tmp_path):
    from mlic.models.hub import resolve_initial_weights

    path = tmp_path / "w.safetensors"
    path.write_bytes(pretrained_bytes(tmp_path))
    weights = resolve_initial_weights(MODEL, str(path), progress=False)
    assert weights.source == {"kind": "file", "file": str(path.resolve()),
                              "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}  # fmt: skip
    assert weights.normalization is None  # a local file says nothing: mlic's default statistics

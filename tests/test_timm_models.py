"""timm models through build_model, local pretrained weights, and backbone freezing.

Every model is built with pretrained=False and every weights file is written here: nothing is
downloaded. timm is the optional extra "zoo"; without it this module is skipped, except in CI
(CI=true), where a missing timm must fail loudly instead of skipping the whole feature.
"""

from __future__ import annotations

import os
import pickle
import sys

import pytest
import torch
from torch import nn

if os.environ.get("CI") == "true":
    import timm  # noqa: F401
else:
    pytest.importorskip("timm")

from safetensors.torch import save_file

from mlic.checkpoint import load_checkpoint, save_checkpoint
from mlic.data.transforms import Preprocessing
from mlic.models import build_model
from mlic.models.pretrained import load_pretrained, set_backbone_trainable
from mlic.models.seed_cnn import SeedCNN

SMALL = "mobilenetv3_small_050"  # ~0.6M parameters: fast enough to train a few steps on CPU


def _trained_source(num_classes: int = 5) -> nn.Module:
    """A small model whose weights and BatchNorm statistics differ from any fresh init."""
    torch.manual_seed(0)
    model = build_model(SMALL, num_classes=num_classes)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64))  # moves BN running stats off their defaults
    return model.eval()


def _save(state: dict[str, torch.Tensor], path) -> None:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)


@pytest.mark.parametrize("name", ["resnet18", SMALL])
def test_timm_model_gives_logits_of_the_right_shape(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()
    assert model.get_classifier().out_features == 5


def test_drop_rate_reaches_timm_and_seed_kwargs_are_refused():
    assert build_model(SMALL, num_classes=3, drop_rate=0.3).drop_rate == 0.3
    with pytest.raises(ValueError, match="hidden, widths"):
        build_model(SMALL, num_classes=3, widths=[8, 16], hidden=32)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        build_model(SMALL, num_classes=0)


def test_a_few_adam_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = build_model(SMALL, num_classes=5).train()
    x = torch.randn(8, 3, 64, 64)
    y = (torch.rand(8, 5) > 0.5).float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    losses = []
    for _ in range(6):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert not torch.equal(before["conv_stem.weight"], model.state_dict()["conv_stem.weight"])


def test_timm_model_round_trips_through_an_mlic_checkpoint(tmp_path):
    model = _trained_source(num_classes=3)
    meta = {
        "model": {"name": SMALL, "kwargs": {"drop_rate": 0.2}},  # plain JSON, as fit() writes it
        "class_names": ["a", "b", "c"],
        "preprocessing": Preprocessing(image_size=64).to_dict(),
    }
    save_checkpoint(tmp_path / "ckpt", model, meta)
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize(
    ("filename", "wrap"),
    [
        ("w.safetensors", None),
        ("w.pth", None),
        ("w.pt", "state_dict"),  # timm / torchvision training scripts
        ("w.bin", "model"),
        ("w.pth", "state_dict_ema"),
    ],
)
def test_backbone_loads_into_a_model_with_another_head(tmp_path, filename, wrap):
    source = _trained_source(num_classes=5)
    state = source.state_dict()
    if wrap is not None:
        # DDP's "module." and torch.compile's "_orig_mod." prefixes must be stripped too
        state = {wrap: {f"module._orig_mod.{k}": v for k, v in state.items()}, "epoch": 3}
    path = tmp_path / filename
    _save(state, path)

    torch.manual_seed(1)
    target = build_model(SMALL, num_classes=3)
    fresh_head = target.get_classifier().weight.detach().clone()
    report = load_pretrained(target, path)

    assert sorted(report.skipped_head) == ["classifier.bias", "classifier.weight"]
    assert report.missing == [] and report.mismatched == [] and report.unexpected == []
    src, dst = source.state_dict(), target.state_dict()
    for key in dst:
        if key.startswith("classifier."):
            continue
        assert torch.equal(src[key], dst[key]), key
    assert torch.equal(target.get_classifier().weight, fresh_head)  # new head kept, shape (3, C)
    assert target(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    assert "skipped head 2" in report.summary()


def test_same_label_count_loads_the_head_too(tmp_path):
    source = _trained_source(num_classes=5)
    _save(source.state_dict(), tmp_path / "w.safetensors")
    target = build_model(SMALL, num_classes=5)
    report = load_pretrained(target, tmp_path / "w.safetensors")
    assert report.skipped_head == [] and report.missing == []
    assert torch.equal(target.get_classifier().weight, source.get_classifier().weight)


def test_partial_backbone_is_strict_by_default(tmp_path):
    state = _trained_source().state_dict()
    del state["conv_stem.weight"]
    _save(state, tmp_path / "w.safetensors")
    target = build_model(SMALL, num_classes=5)
    with pytest.raises(ValueError, match=r"w\.safetensors.*conv_stem\.weight"):
        load_pretrained(target, tmp_path / "w.safetensors")
    report = load_pretrained(target, tmp_path / "w.safetensors", strict_backbone=False)
    assert report.missing == ["conv_stem.weight"]
    assert "classifier.weight" in report.loaded


@pytest.mark.parametrize("strict", [True, False])
def test_weights_of_another_architecture_are_refused(tmp_path, strict):
    seed = SeedCNN(num_classes=5, widths=(8, 8, 16, 16), hidden=16)
    _save(seed.state_dict(), tmp_path / "seed.safetensors")
    target = build_model(SMALL, num_classes=5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=r"seed\.safetensors: matches only 0 of .* another architecture"):
        load_pretrained(target, tmp_path / "seed.safetensors", strict_backbone=strict)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # untouched


@pytest.mark.parametrize("how", ["torch.save", "raw pickle"])
def test_malicious_pickle_never_runs(tmp_path, how):
    sentinel = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))  # unpickling would create the sentinel file

    path = tmp_path / "evil.pth"
    if how == "torch.save":
        torch.save({"state_dict": {"w": Payload()}}, path)
    else:
        path.write_bytes(pickle.dumps({"w": Payload()}, protocol=2))  # the protocol torch's own files use
    target = build_model(SMALL, num_classes=5)
    with pytest.raises(ValueError, match=r"evil\.pth: refused by torch\.load\(weights_only=True\)"):
        load_pretrained(target, path)
    assert not sentinel.exists()
    # The payload is live: an unsafe load does run it, so the check above means something.
    if how == "torch.save":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert sentinel.exists()


def test_bad_files_are_named_errors(tmp_path):
    target = build_model(SMALL, num_classes=5)
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_pretrained(target, tmp_path / "nothing.pth")
    (tmp_path / "junk.pt").write_text("not weights")
    with pytest.raises(ValueError, match=r"junk\.pt: refused by torch\.load.*not a PyTorch weights file"):
        load_pretrained(target, tmp_path / "junk.pt")
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04" + b"x" * 50)  # a truncated torch.save zip
    with pytest.raises(ValueError, match=r"cut\.pth: not a PyTorch weights file \(RuntimeError"):
        load_pretrained(target, tmp_path / "cut.pth")
    (tmp_path / "junk.safetensors").write_text("not weights")
    with pytest.raises(ValueError, match=r"junk\.safetensors: not a valid safetensors file"):
        load_pretrained(target, tmp_path / "junk.safetensors")
    (tmp_path / "w.ckpt").write_text("")
    with pytest.raises(ValueError, match="unknown weights file type '.ckpt'"):
        load_pretrained(target, tmp_path / "w.ckpt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(ValueError, match=r"meta\.pth: no state dict found"):
        load_pretrained(target, tmp_path / "meta.pth")


@pytest.mark.parametrize("name", [SMALL, "seed_cnn"])
def test_frozen_backbone_gets_no_grads_while_the_head_trains(name):
    torch.manual_seed(0)
    kwargs = {"widths": (8, 8, 16, 16), "hidden": 16} if name == "seed_cnn" else {}
    model = build_model(name, num_classes=4, **kwargs).train()
    head = model.get_classifier()
    head_before = head.weight.detach().clone()
    changed = set_backbone_trainable(model, False)
    head_ids = {id(p) for p in head.parameters()}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    assert changed == len(backbone) > 0

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    nn.BCEWithLogitsLoss()(model(torch.randn(4, 3, 64, 64)), torch.ones(4, 4)).backward()
    optimizer.step()
    assert all(p.grad is None for p in backbone)
    assert all(p.grad is not None for p in head.parameters())
    assert not torch.equal(head.weight, head_before)

    assert set_backbone_trainable(model, True) == len(backbone)
    assert all(p.requires_grad for p in model.parameters())


def test_seed_cnn_through_build_model_is_unchanged():
    model = build_model("seed_cnn", num_classes=7, widths=[8, 8, 16, 16], hidden=32, drop_rate=0.1)
    assert type(model) is SeedCNN
    assert model.num_features == 16 and model.classifier.out_features == 7
    assert model.pre_logits[2].p == 0.1


def test_unknown_name_suggests_timm_listing():
    with pytest.raises(ValueError, match=r"unknown model 'resnet9000': built in are seed_cnn.*timm\.list_models"):
        build_model("resnet9000", num_classes=2)


def test_missing_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(ImportError, match=r"model 'resnet18' needs timm: pip install 'mlic\[zoo\]'"):
        build_model("resnet18", num_classes=2)
    assert isinstance(build_model("seed_cnn", num_classes=2), SeedCNN)  # the built-in needs no timm

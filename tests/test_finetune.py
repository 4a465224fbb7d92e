"""The fine-tuning recipe: layer-wise learning rates, frozen BatchNorm statistics, configs/finetune.yaml, and
resuming a run that started from pretrained weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mlic.cli import main
from mlic.config import load_config
from mlic.engine.optim import build_optimizer
from mlic.engine.trainer import freeze_norm_statistics
from mlic.models import build_model

if os.environ.get("CI") == "true":
    import timm
else:
    timm = pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parent.parent


def lr_of(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, tuple[float, float]]:
    """Parameter name -> (learning rate, weight decay) of its group."""
    ids = {id(p): name for name, p in model.named_parameters()}
    return {ids[id(p)]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def test_layer_decay_gives_each_seed_cnn_block_a_lower_rate_than_the_one_above():
    model = build_model("seed_cnn", 4)
    groups = lr_of(build_optimizer(model, "adamw", lr=1e-2, weight_decay=0.05, layer_decay=0.5), model)
    # stem (block 0), blocks 1-3, then the head (hidden layer and classifier): five depths, each half the next
    for block in range(4):
        assert groups[f"features.{block}.0.weight"][0] == pytest.approx(1e-2 * 0.5 ** (4 - block))
    assert groups["classifier.weight"][0] == groups["pre_logits.0.weight"][0] == pytest.approx(1e-2)
    assert groups["features.0.1.weight"][1] == 0.0 and groups["classifier.bias"][1] == 0.0  # norms, biases
    assert groups["features.0.0.weight"][1] == 0.05
    assert len(groups) == len(list(model.parameters()))  # every parameter in exactly one group


def test_layer_decay_on_a_timm_model_is_monotone_from_stem_to_head():
    model = build_model("resnet18", 3)
    groups = lr_of(build_optimizer(model, "adam", lr=1e-3, layer_decay=0.8), model)
    depth = ["conv1.weight", "layer1.0.conv1.weight", "layer2.0.conv1.weight", "layer3.1.conv2.weight",
             "layer4.1.conv2.weight", "fc.weight"]  # fmt: skip
    rates = [groups[name][0] for name in depth]
    assert rates == sorted(rates) and len(set(rates)) == len(rates) and rates[-1] == pytest.approx(1e-3)
    assert rates[0] == pytest.approx(1e-3 * 0.8**9)  # stem + 8 basic blocks below the head


def test_without_layer_decay_every_group_has_the_base_rate():
    model = build_model("seed_cnn", 4)
    optimizer = build_optimizer(model, "adamw", lr=3e-3, weight_decay=0.05)
    assert {g["lr"] for g in optimizer.param_groups} == {3e-3} and len(optimizer.param_groups) == 2


def test_frozen_norm_statistics_stay_put_in_train_mode():
    model = build_model("seed_cnn", 4, widths=[4, 4, 8, 8], hidden=8)
    model.train()
    freeze_norm_statistics(model)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model(torch.randn(4, 3, 16, 16)).sum().backward()
    after = model.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())
    assert model.classifier.weight.grad is not None and model.features[0][1].weight.grad is not None


def test_finetune_recipe_trains_from_a_local_file_and_resumes_without_it(tiny_shapes, tmp_path, capsys):
    from safetensors.torch import save_file

    cfg = load_config(ROOT / "configs" / "finetune.yaml")
    assert cfg.model.pretrained == "hub" and cfg.optim.layer_decay < 1 and cfg.model.freeze_backbone_epochs >= 1
    source = timm.create_model("test_resnet", pretrained=False, num_classes=1000)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items() if not k.startswith("fc.")}, weights)
    common = ["--image-size", "32", "--batch-size", "16", "--no-progress", "--no-report", "--device", "cpu"]
    args = ["train", str(tiny_shapes["train"]), "--val", str(tiny_shapes["val"]), "--config",
            str(ROOT / "configs" / "finetune.yaml"), "--model", "test_resnet", "--pretrained", str(weights),
            "--epochs", "1", "--output-dir", str(tmp_path), "--name", "ft", *common]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "layer decay 0.75" in out and "backbone frozen" in out and str(weights.resolve()) in out
    weights.unlink()  # a resumed run's weights come from its checkpoint: the initial file is not needed
    assert main(["train", "--resume", str(tmp_path / "ft"), "--no-progress", "--no-report"]) == 0
    assert "resuming from" in capsys.readouterr().out
    from mlic.checkpoint import read_meta

    meta = read_meta(tmp_path / "ft" / "checkpoints" / "last")
    assert meta["initial_weights"]["kind"] == "file" and meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert meta["initial_weights"]["file"] == str(weights.resolve())

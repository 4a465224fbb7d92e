"""Recipes and training features end to end through the CLI, on tiny data."""

import csv
import os
from pathlib import Path

import pytest

from mlic.cli import main
from mlic.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _rows(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))


@pytest.mark.parametrize("recipe", ["seed", "default"])
def test_named_recipes_run(recipe, tiny_shapes, tmp_path):
    cfg = load_config(ROOT / "configs" / f"{recipe}.yaml")
    if recipe == "seed":  # exactly the seed's recipe
        assert (cfg.optim.optimizer, cfg.optim.lr, cfg.optim.batch_size, cfg.optim.epochs) == ("adam", 1e-3, 32, 10)
        assert (cfg.data.image_size, cfg.optim.loss, cfg.thresholds.method) == (224, "bce", "fixed")
    args = ["train", "--config", str(ROOT / "configs" / f"{recipe}.yaml"), str(tiny_shapes["train"]), "--val",
            str(tiny_shapes["val"]), "--image-size", "32", "--epochs", "1", "--output-dir", str(tmp_path), "--name",
            recipe, "--no-progress", "--no-report", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    assert len(_rows(tmp_path / recipe)) == 1


def test_early_stopping_stops(tiny_shapes, tmp_path):
    # every validation image carries every label, so each class's AP is 1.0 from epoch 1 on and can never improve
    rows = list(csv.DictReader(tiny_shapes["val"].read_text().splitlines()))
    val = tiny_shapes["val"].parent / "val_all_labels.csv"
    everything = "circle cross ring square star triangle"
    val.write_text("image,labels\n" + "".join(f"{r['image']},{everything}\n" for r in rows))
    args = ["train", str(tiny_shapes["train"]), "--val", str(val), "--image-size", "32", "--epochs", "6",
            "--early-stopping", "2", "--output-dir", str(tmp_path), "--name", "es", "--no-progress", "--no-report",
            "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    history = _rows(tmp_path / "es")
    assert [r["epoch"] for r in history] == ["1", "2", "3"] and float(history[0]["val_mAP"]) == 1.0


def test_timm_model_trains_an_epoch_from_local_weights(tiny_shapes, tmp_path):
    if os.environ.get("CI") == "true":
        import timm
    else:
        timm = pytest.importorskip("timm")
    import torch
    from safetensors.torch import save_file

    source = timm.create_model("resnet10t", pretrained=False, num_classes=1000)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "r10t.safetensors")
    args = ["train", str(tiny_shapes["train"]), "--val", str(tiny_shapes["val"]), "--model", "resnet10t",
            "--pretrained", str(tmp_path / "r10t.safetensors"), "--image-size", "32", "--epochs", "1",
            "--batch-size", "16", "--output-dir", str(tmp_path), "--name", "timm", "--no-progress", "--no-report",
            "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    from mlic.checkpoint import load_checkpoint

    model, meta = load_checkpoint(tmp_path / "timm" / "checkpoints" / "best")
    assert meta["model"]["name"] == "resnet10t" and model(torch.randn(1, 3, 32, 32)).shape == (1, 6)
    # the backbone started from the file: its stem moved only by one short epoch of training
    stem = "conv1.0.weight"
    drift = (model.state_dict()[stem] - source.state_dict()[stem]).abs().mean()
    assert drift < source.state_dict()[stem].abs().mean()


def test_tensorboard_event_files(tiny_shapes, tmp_path):
    if os.environ.get("CI") == "true":
        import tensorboard  # noqa: F401
    else:
        pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["train", str(tiny_shapes["train"]), "--val", str(tiny_shapes["val"]), "--image-size", "32", "--epochs", "2",
            "--tensorboard", "--output-dir", str(tmp_path), "--name", "tb", "--no-progress", "--no-report",
            "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    assert {"train/loss", "val/mAP"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val/mAP")] == [1, 2]

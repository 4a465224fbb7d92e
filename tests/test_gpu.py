"""CUDA paths: run with `pytest -m gpu` on a machine with a GPU (skipped elsewhere, not part of CI)."""

import pytest
import torch

from mlic.cli import main

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_train_on_cuda_auto_precision_then_predict_on_cpu(tiny_shapes, tmp_path):
    from mlic.inference.predictor import Predictor
    from mlic.runtime.precision import resolve_precision

    assert resolve_precision("auto", torch.device("cuda")).name in ("bf16", "fp16")
    args = ["train", str(tiny_shapes["train"]), "--val", str(tiny_shapes["val"]), "--image-size", "32",
            "--epochs", "2", "--batch-size", "16", "--output-dir", str(tmp_path), "--name", "gpu", "--no-progress",
            "--no-report"]  # fmt: skip
    assert main(args) == 0  # device auto: CUDA
    ckpt = tmp_path / "gpu" / "checkpoints" / "best"
    image = sorted((tiny_shapes["test"].parent / "images" / "test").iterdir())[0]
    on_gpu = Predictor.from_checkpoint(ckpt, device="cuda").predict_image(image)
    on_cpu = Predictor.from_checkpoint(ckpt, device="cpu").predict_image(image)
    for name, p in on_cpu.probabilities.items():
        assert abs(p - on_gpu.probabilities[name]) < 1e-3


def test_every_precision_trains_on_cuda():
    from training import run_epoch

    from mlic.data.dataset import Batch
    from mlic.models import build_model
    from mlic.runtime.precision import resolve_precision

    device = torch.device("cuda")
    for name in ("fp32", "bf16", "fp16"):
        precision = resolve_precision(name, device)
        model = build_model("seed_cnn", 3).to(device, memory_format=torch.channels_last)
        scaler = torch.amp.GradScaler("cuda") if precision.use_scaler else None
        x, y = torch.randn(8, 3, 64, 64), (torch.rand(8, 3) > 0.5).float()
        batch = Batch(x, y, torch.ones_like(y), torch.arange(8), [])
        stats = run_epoch(model, [batch] * 3, torch.optim.Adam(model.parameters()), device=device,
                          precision=precision, channels_last=True, scaler=scaler)  # fmt: skip
        assert stats.images == 24 and stats.skipped_steps == 0, name


def test_device_held_cache_on_cuda_gives_the_loaders_batches(tiny_shapes, tmp_path):
    from test_device_cache import cached_dataset

    from mlic.data.device_cache import DeviceCachedBatches, cache_fits
    from mlic.data.loader import build_loader
    from mlic.data.sampler import EpochSampler

    ds = cached_dataset(tiny_shapes, tmp_path)
    assert cache_fits(ds, torch.device("cuda"))
    reference = build_loader(ds, batch_size=10, shuffle=False, num_workers=0, sampler=EpochSampler(ds, seed=3))
    on_gpu = DeviceCachedBatches(ds, EpochSampler(ds, seed=3), 10, torch.device("cuda"))
    for a, b in zip(reference, on_gpu, strict=True):
        assert b.images.is_cuda and torch.equal(a.images, b.images.cpu()) and torch.equal(a.flips, b.flips)


def test_cuda_training_holds_the_cache_on_the_gpu_and_steps_without_syncs(tiny_shapes, tmp_path, capsys):
    args = ["train", str(tiny_shapes["train"]), "--val", str(tiny_shapes["val"]), "--image-size", "32",
            "--epochs", "2", "--batch-size", "16", "--optimizer", "adamw", "--output-dir", str(tmp_path), "--name",
            "g", "--no-progress", "--no-report", "--device", "cuda"]  # fmt: skip
    assert main(args) == 0
    assert "training images held on cuda" in capsys.readouterr().out


def test_sync_free_step_on_cuda_matches_the_host_path():
    from test_device_cache import _batches
    from training import run_epoch

    from mlic.models import build_model

    weights = []
    for sync_free in (False, True):
        torch.manual_seed(0)
        model = build_model("seed_cnn", 3, widths=[4, 8, 8, 8], hidden=8).cuda()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
        stats = run_epoch(model, _batches(7, nan_at=3), optimizer, device="cuda", sync_free=sync_free)
        assert stats.skipped_steps == 1
        weights.append(model.state_dict())
    assert all(torch.allclose(weights[0][k].float(), weights[1][k].float(), atol=1e-6) for k in weights[0])

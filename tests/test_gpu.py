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

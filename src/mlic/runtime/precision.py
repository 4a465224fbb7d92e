"""Numeric precision and memory layout for training and inference."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

from mlic.config import PRECISIONS


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX-512 BF16 or AMX); without them bf16 is emulated and slow."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Precision:
    name: str  # what was resolved: fp32 | bf16 | fp16
    dtype: torch.dtype | None  # autocast dtype; None = plain fp32
    use_scaler: bool  # fp16 needs loss scaling; bf16 has fp32's range and does not

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``auto``: bf16 where the hardware does it natively (recent CUDA GPUs, CPUs with AVX-512 BF16/AMX),
    fp16 with a GradScaler on older CUDA GPUs, fp32 otherwise."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of: {', '.join(PRECISIONS)}")
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device.type == "cpu" and cpu_has_fast_bf16():
            name = "bf16"
        else:
            name = "fp32"
    if name == "fp32":
        return Precision("fp32", None, False)
    if name == "bf16":
        return Precision("bf16", torch.bfloat16, False)
    if device.type == "cpu":
        return Precision("fp16", torch.float16, False)  # CPU autocast fp16 runs, unscaled; offered for completeness
    return Precision("fp16", torch.float16, True)

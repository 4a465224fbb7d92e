"""Inference-only rewrites of a trained model: BatchNorm folded into the convolution before it.

In eval mode BatchNorm is a fixed per-channel scale and shift, which the preceding convolution can absorb
(w' = w * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta). The folded model computes the same
function to float rounding and skips one full pass over every activation map, which on a CPU is a large
share of a small CNN's time. ONNX and TorchScript export fold the same way by themselves.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each Conv2d -> BatchNorm2d pair inside an ``nn.Sequential``
    replaced by one Conv2d (the BatchNorm becomes Identity, so state-dict names of other layers keep).

    Pairs in other structures (timm's fused norm-act layers) are left as they are: still correct, not faster.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, bn = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                module._modules[first] = fuse_conv_bn_eval(conv, bn)
                module._modules[second] = nn.Identity()
    return folded


def count_batchnorm(model: nn.Module) -> int:
    """BatchNorm layers left in ``model`` (0 after folding a model whose every BatchNorm follows a conv)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def inference_form(model: nn.Module, device: torch.device) -> tuple[nn.Module, bool]:
    """(the model as prediction runs it, whether inputs should be channels-last): BatchNorm folded, and
    the channels-last layout on CPU and CUDA, measured faster there (benchmarks/throughput.py)."""
    channels_last = device.type in ("cpu", "cuda")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return fold_batchnorm(model).to(memory_format=fmt), channels_last

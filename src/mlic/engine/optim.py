"""Optimizers, built from plain values (their learning rate over time is ``engine.schedule``'s)."""

from __future__ import annotations

import torch
from torch import nn

from mlic.config import OPTIMIZERS


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights that decay, and norms/biases (1-D tensors) that do not.

    Decaying a BatchNorm scale or a bias only fights the normalisation; every modern recipe
    (timm, torchvision references) excludes them.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float, lr: float) -> list[dict]:
    """Groups by depth, each with its own learning rate: the head at ``lr``, each layer group below it at
    ``layer_decay`` times the one above (BEiT's layer-wise decay). Norms and biases still get no weight decay.

    The layer groups are timm's: its models' ``group_matcher`` (stem, then each block), and timm's automatic
    grouping for models without one. timm is the optional extra ``zoo``; without it this is an ImportError.
    """
    try:
        from timm.optim import param_groups_layer_decay
    except ImportError:
        raise ImportError("layer-wise decay uses timm's layer grouping: pip install 'mlic[zoo]'") from None
    groups = param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay)
    for group in groups:  # timm leaves "lr_scale" to its own scheduler; here the group's base lr carries it
        group["lr"] = lr * group.pop("lr_scale")
    return groups


def build_optimizer(
    model: nn.Module, name: str, *, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
    layer_decay: float = 1.0, fused: bool = False,
) -> torch.optim.Optimizer:  # fmt: skip
    """``adam`` (the seed's), ``adamw`` or ``sgd`` (Nesterov momentum); ``layer_decay`` < 1: lower learning rates
    deeper down (``layer_decay_groups``); ``fused``: Adam/AdamW's fused kernels (one per step; they honour a
    ``found_inf`` flag on the device, which ``engine.loop.LossTally`` uses)."""
    if layer_decay < 1:
        groups = layer_decay_groups(model, weight_decay, layer_decay, lr)
    else:
        groups = param_groups(model, weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, fused=fused or None)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=fused or None)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")

"""Exponential moving average of model weights, evaluated as a model of its own."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """Keeps ``shadow = decay * shadow + (1 - decay) * weights`` after every optimizer step.

    Buffers (BatchNorm running statistics) are copied, not averaged: they are already averages.
    The warm-up ``decay_t = min(decay, (1 + t) / (10 + t))`` keeps early, random weights from
    dominating a short run (as in TensorFlow's ExponentialMovingAverage with num_updates).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_p, p in zip(self.module.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - d)
        for ema_b, b in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)

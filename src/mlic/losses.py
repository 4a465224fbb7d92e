"""Losses for multi-label training. Every loss honours the known-label mask: unknown entries
contribute nothing, and the mean is taken over known entries only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("bce",)


class MaskedBCEWithLogits(nn.Module):
    """BCEWithLogitsLoss averaged over known entries; with no unknowns it equals the plain mean BCE."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        if mask is None:
            return loss.mean()
        # clamp: a batch with nothing known gives 0, not NaN
        return (loss * mask).sum() / mask.sum().clamp(min=1.0)


def build_loss(name: str) -> nn.Module:
    if name == "bce":
        return MaskedBCEWithLogits()
    raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")

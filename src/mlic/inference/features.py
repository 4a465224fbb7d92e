"""What an embedding is: a model's globally pooled backbone features, the vector its classifier head starts from.

For the seed CNN that is the global-average-pooled feature map, (B, 256) by default, taken before its hidden
Linear layer, so the vector depends on the backbone alone. For timm models it is
``forward_head(forward_features(x), pre_logits=True)``: after global pooling (and whatever norm the
architecture puts there), before the classifier; dropout is off in eval mode. The per-class calibration a
checkpoint may carry acts on the classifier only, so it never changes an embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from mlic.models.seed_cnn import SeedCNN


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) normalised images -> (B, D) pooled features (see the module docstring)."""
    return _pool(model, model.forward_features(x))


def logits_and_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """((B, C) logits exactly as ``model(x)``, (B, D) pooled features), the backbone run once.

    A model with forward hooks (a calibration on a head that is not one Linear layer) is called whole, so its
    hooks apply to the logits; its backbone then runs twice.
    """
    if model._forward_hooks or model._forward_pre_hooks:
        return model(x), pooled_features(model, x)
    feats = model.forward_features(x)
    return model.forward_head(feats), _pool(model, feats)


def _pool(model: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    if isinstance(model, SeedCNN):  # its own pre_logits include the hidden layer: stop at the pooled map
        return model.pool(feats).flatten(1)
    return model.forward_head(feats, pre_logits=True)

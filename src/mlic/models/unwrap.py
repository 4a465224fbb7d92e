"""The bare model under training wrappers."""

from __future__ import annotations

from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model under DDP (``module.``) and torch.compile (``_orig_mod.``) wrappers, whose state-dict
    names carry those prefixes; checkpoints store the bare names."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model

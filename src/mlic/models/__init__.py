"""Model factory: an explicit table of names, no registry magic."""

from __future__ import annotations

from typing import Any

from torch import nn

from mlic.models.seed_cnn import SeedCNN

MODELS: dict[str, type[nn.Module]] = {"seed_cnn": SeedCNN}


def build_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build model ``name`` with a head of ``num_classes`` logits.

    ``kwargs`` go to the model's keyword-only constructor (``widths``, ``hidden``, ``drop_rate``).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes=num_classes, **kwargs)

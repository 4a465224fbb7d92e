"""timm backbones (resnet18, efficientnet_b0, convnext_tiny...) behind ``build_model``.

timm is the optional extra ``zoo``: it is imported here, inside functions, so ``import mlic`` stays
fast and works without it. Models are always built with ``pretrained=False``: mlic never downloads
anything; local weights are loaded explicitly with ``mlic.models.pretrained.load_pretrained``.
timm models already follow mlic's model contract (forward_features / forward_head / forward /
get_classifier / reset_classifier), so nothing is wrapped.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from torch import nn

from mlic.errors import MissingExtraError

ZOO_HINT = "pip install 'mlic[zoo]'"


def import_timm(model_name: str) -> ModuleType:
    """Import timm, or say which model needed it and how to install it."""
    try:
        import timm
    except ImportError:
        raise MissingExtraError(f"model {model_name!r} needs timm: {ZOO_HINT}") from None
    return timm


def build_timm_model(name: str, num_classes: int, *, drop_rate: float = 0.0, **unsupported: Any) -> nn.Module:
    """A randomly initialised timm model ``name`` with a ``num_classes``-logit head.

    Only ``drop_rate`` (dropout before the classifier) is accepted: ``widths`` and ``hidden`` shape
    the seed CNN and mean nothing to a timm architecture, so passing them is an error rather than
    silently ignored. The accepted kwargs are plain JSON values, as checkpoints store them.
    """
    if unsupported:
        raise ValueError(
            f"model {name!r} (timm) accepts only drop_rate; got {', '.join(sorted(unsupported))} "
            "(widths and hidden are seed_cnn options)"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    timm = import_timm(name)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=float(drop_rate))

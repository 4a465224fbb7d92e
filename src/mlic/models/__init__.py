"""Model factory: an explicit table of built-in names, then timm's names; no registry magic."""

from __future__ import annotations

from typing import Any

from torch import nn

from mlic.models.seed_cnn import SeedCNN

MODELS: dict[str, type[nn.Module]] = {"seed_cnn": SeedCNN}


def build_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build model ``name`` with a head of ``num_classes`` logits, randomly initialised.

    Built-in names (``seed_cnn``) take their constructor's kwargs (``widths``, ``hidden``,
    ``drop_rate``). Any other name is looked up in timm (the optional extra ``zoo``), which takes
    ``drop_rate`` only. Weights are never downloaded; see ``models.pretrained`` for local files.
    """
    if name in MODELS:
        return MODELS[name](num_classes=num_classes, **kwargs)
    # Lazy: timm is optional and slow to import; only a non-built-in name pays for it.
    from mlic.models.timm_models import build_timm_model, import_timm

    if not import_timm(name).is_model(name):
        raise ValueError(
            f"unknown model {name!r}: built in are {', '.join(sorted(MODELS))}; any timm model name also works "
            "(list them with timm.list_models('*resnet*'))"
        )
    return build_timm_model(name, num_classes, **kwargs)

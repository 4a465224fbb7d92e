"""Start from local pretrained weights, and freeze the backbone while a new head warms up.

Fine-tuning usually means: a backbone trained elsewhere (a timm ``.safetensors``/``.pth`` file, or
an earlier mlic checkpoint's ``model.safetensors``) plus a fresh head sized for this label set.
``load_pretrained`` loads the backbone and drops head weights whose shape is wrong for the new
number of classes. It reads local files only, and never unpickles code: PyTorch files go through
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlic.models.unwrap import unwrap_model

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
# Containers that training scripts (timm, torchvision references, Lightning-style) wrap weights in;
# the first one present is used.
STATE_DICT_KEYS = ("state_dict", "model", "state_dict_ema")
# Wrapper prefixes: DistributedDataParallel adds "module.", torch.compile adds "_orig_mod.".
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class LoadReport:
    """What ``load_pretrained`` did, key by key, so a partial load is never silent."""

    path: Path
    loaded: list[str] = field(default_factory=list)  # copied into the model
    skipped_head: list[str] = field(default_factory=list)  # head weights of the wrong shape (new label set)
    mismatched: list[str] = field(default_factory=list)  # backbone weights of the wrong shape, not loaded
    missing: list[str] = field(default_factory=list)  # model weights the file lacks (kept at their init)
    unexpected: list[str] = field(default_factory=list)  # file weights the model has no place for

    def summary(self) -> str:
        parts = [f"{self.path}: loaded {len(self.loaded)} tensors"]
        for name in ("skipped_head", "mismatched", "missing", "unexpected"):
            keys = getattr(self, name)
            if keys:
                parts.append(
                    f"{name.replace('_', ' ')} {len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                )
        return "; ".join(parts)


def head_keys(model: nn.Module) -> set[str]:
    """State-dict names of the classifier's tensors (``fc.weight``, ``classifier.bias``...)."""
    model = unwrap_model(model)
    heads = model.get_classifier()
    # A few timm models (distilled ViTs) return two heads as a tuple.
    heads = tuple(heads) if isinstance(heads, (tuple, list)) else (heads,)
    ids = {id(h) for h in heads}
    prefixes = [f"{name}." for name, module in model.named_modules() if id(module) in ids]
    return {k for k in model.state_dict() if any(k.startswith(p) for p in prefixes)}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file, unwrapped from training containers and wrapper prefixes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a valid safetensors file ({exc})") from None
    elif suffix in TORCH_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # The safe unpickler met something other than tensors and plain containers: a pickled
            # object (which a full unpickle would run as code), or bytes that are no pickle at all.
            raise ValueError(
                f"{path}: refused by torch.load(weights_only=True): it holds Python objects besides "
                "tensors, or is not a PyTorch weights file; it was not unpickled "
                "(re-save it as a plain state dict or as .safetensors)"
            ) from None
        except Exception as exc:  # a torch.load of a non-PyTorch file fails with assorted errors
            raise ValueError(f"{path}: not a PyTorch weights file ({type(exc).__name__}: {exc})") from None
    else:
        accepted = ", ".join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)
        raise ValueError(f"{path}: unknown weights file type {suffix or '(no suffix)'!r}; expected one of {accepted}")

    if isinstance(obj, dict):
        obj = next((obj[k] for k in STATE_DICT_KEYS if isinstance(obj.get(k), dict)), obj)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: no state dict found (expected tensors by name, or under one of {STATE_DICT_KEYS})")
    return {_strip_prefixes(k): v for k, v in obj.items()}


def _strip_prefixes(key: str) -> str:
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def load_pretrained(model: nn.Module, path: str | Path, *, strict_backbone: bool = True) -> LoadReport:
    """Load local weights ``path`` into ``model``'s backbone (and its head where shapes fit).

    Head tensors of another shape (a file trained for another label set) are skipped and the
    model's fresh head kept. ``strict_backbone``: every backbone tensor must be in the file with its
    shape, and the file must hold nothing else. Without it, whatever matches is loaded and the rest
    reported, but a file matching under half of the backbone is still refused as the wrong
    architecture, since training from it would silently be training from scratch.
    """
    path = Path(path)
    source = read_state_dict(path)
    model = unwrap_model(model)
    target = model.state_dict()
    head = head_keys(model)
    report = LoadReport(path=path)
    to_load: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        if key not in target:
            report.unexpected.append(key)
        elif tensor.shape != target[key].shape:
            (report.skipped_head if key in head else report.mismatched).append(key)
        else:
            to_load[key] = tensor
    # BatchNorm's step counter is bookkeeping, not a weight; older files lack it.
    report.missing = [k for k in target if k not in source and not k.endswith("num_batches_tracked")]

    backbone = [k for k in target if k not in head and not k.endswith("num_batches_tracked")]
    failed = [k for k in backbone if k not in to_load]
    if len(failed) * 2 > len(backbone):
        raise ValueError(
            f"{path}: matches only {len(backbone) - len(failed)} of {len(backbone)} backbone tensors of "
            f"{type(model).__name__}; weights for another architecture? (e.g. missing {failed[:3]})"
        )
    if strict_backbone and (failed or report.unexpected):
        raise ValueError(
            f"{path}: does not fit {type(model).__name__}'s backbone: missing or wrong shape {failed[:5]}, "
            f"unexpected {report.unexpected[:5]} (strict_backbone=False loads what matches)"
        )
    model.load_state_dict(to_load, strict=False)
    report.loaded = list(to_load)
    return report


def set_backbone_trainable(model: nn.Module, trainable: bool) -> int:
    """Freeze (``False``) or unfreeze every parameter except the classifier's; returns how many changed.

    For "train only the new head for the first N epochs". It only sets ``requires_grad``: frozen
    parameters get no gradient, so the optimizer skips them (weight decay too). BatchNorm layers in
    the frozen part still update their running statistics in train mode; call ``.eval()`` on them
    as well if that matters for your data.
    """
    model = unwrap_model(model)
    heads = model.get_classifier()
    heads = tuple(heads) if isinstance(heads, (tuple, list)) else (heads,)
    head_params = {id(p) for h in heads for p in h.parameters()}
    changed = 0
    for p in model.parameters():
        if id(p) not in head_params and p.requires_grad != trainable:
            p.requires_grad_(trainable)
            changed += 1
    return changed

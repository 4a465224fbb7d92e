"""Preprocessing, defined once. The eval transform is the one every path reuses: evaluate,
predict, export and serve all call ``build_eval_transform`` with the checkpoint's ``Preprocessing``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTATIONS = ("none", "light")


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn a decoded RGB image into model input; stored in checkpoints."""

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "squash"  # whole image resized to image_size x image_size, no crop: labels may sit at the edges
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(
            image_size=int(data["image_size"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            resize=data.get("resize", "squash"),
            extra=dict(data.get("extra", {})),
        )


def _resize(pre: Preprocessing) -> v2.Transform:
    if pre.resize != "squash":
        raise ValueError(f"unknown resize mode {pre.resize!r}")
    return v2.Resize((pre.image_size, pre.image_size), antialias=True)


def build_eval_transform(pre: Preprocessing) -> v2.Compose:
    """PIL RGB image -> normalised float32 (3, S, S) tensor. Deterministic."""
    return v2.Compose(
        [
            v2.ToImage(),  # uint8 (3, H, W); resizing uint8 is cheaper than float
            _resize(pre),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(pre.mean), std=list(pre.std)),
        ]
    )


def build_train_transform(pre: Preprocessing, augment: str = "light") -> v2.Compose:
    """Eval preprocessing plus augmentation; ``light`` is the seed's horizontal flip."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation preset {augment!r}; choose one of: {', '.join(AUGMENTATIONS)}")
    steps: list[v2.Transform] = [v2.ToImage(), _resize(pre)]
    if augment == "light":
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(pre.mean), std=list(pre.std))]
    return v2.Compose(steps)

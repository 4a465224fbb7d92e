"""Preprocessing, defined once. The eval transform is the one every path reuses: evaluate,
predict, export and serve all call ``build_eval_transform`` with the checkpoint's ``Preprocessing``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTATIONS = ("none", "light", "standard", "strong")

# RandomResizedCrop keeps at least half the image. Multi-label targets describe the whole image, and
# a crop that cuts a labelled object out leaves a positive label on pixels that no longer show it
# (single-label ImageNet recipes use 0.08; that floor would mislabel many small or edge objects).
CROP_SCALE = (0.5, 1.0)


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
    """PIL RGB image -> normalised float32 (3, S, S) tensor, randomly augmented.

    Presets, each a superset of the one before from ``light`` on:
    ``none`` eval preprocessing only; ``light`` + horizontal flip (the seed's);
    ``standard`` random resized crop (scale >= 0.5) + flip + colour jitter;
    ``strong`` standard + TrivialAugmentWide + random erasing.
    Geometry and colour ops run on uint8 (cheaper, and TrivialAugment's magnitudes assume uint8);
    erasing runs after normalisation, so its fill value 0 is the mean colour.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation preset {augment!r}; choose one of: {', '.join(AUGMENTATIONS)}")
    resize = _resize(pre)  # also rejects unknown resize modes for the cropping presets
    steps: list[v2.Transform] = [v2.ToImage()]  # uint8 (3, H, W)
    if augment in ("standard", "strong"):
        # default aspect ratio range 3/4..4/3; the crop is then squashed to S x S like the eval resize
        steps.append(v2.RandomResizedCrop((pre.image_size, pre.image_size), scale=CROP_SCALE, antialias=True))
    else:
        steps.append(resize)
    if augment != "none":
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if augment in ("standard", "strong"):
        steps.append(v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05))
    if augment == "strong":
        steps.append(v2.TrivialAugmentWide())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(pre.mean), std=list(pre.std))]
    if augment == "strong":
        steps.append(v2.RandomErasing(p=0.25, value=0))  # 0 = the dataset mean after normalisation
    return v2.Compose(steps)

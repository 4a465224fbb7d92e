"""Preprocessing, defined once. The eval transform is the one every path reuses: evaluate,
predict, export and serve all call ``build_eval_transform`` with the checkpoint's ``Preprocessing``.

Training and evaluation over datasets split the same steps in two (``Pipeline``): per sample, decode and
resize to uint8 (the "stage", which the decoded-image cache stores) plus any uint8 augmentation; per batch,
on the training device, the flip, the float conversion and the normalisation (``batch_inputs``). The split
changes where the work happens, not what it computes: an eval batch equals the eval transform bit for bit.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import PIL.Image
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from mlic.config import AUGMENTATIONS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# RandomResizedCrop keeps at least half the image. Multi-label targets describe the whole image, and
# a crop that cuts a labelled object out leaves a positive label on pixels that no longer show it
# (single-label ImageNet recipes use 0.08; that floor would mislabel many small or edge objects).
CROP_SCALE = (0.5, 1.0)
# Cropping presets crop from a stage (and cache) this much larger than the input, not from the original
# file: at scale 0.5 a crop still has 0.88x the input's resolution, and the cache stays 1.56x the size.
CROP_STAGE_FACTOR = 1.25


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn a decoded RGB image into model input; stored in checkpoints."""

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "squash"  # whole image resized to image_size x image_size, no crop: labels may sit at the edges
    # JPEGs at least 4x larger than the target (per side) are decoded at a reduced DCT scale that stays at
    # least 2x the target, then resized as usual: ~8x faster on camera photos, and the antialiased resize
    # still sees twice its output resolution. Checkpoints from before this option read as False.
    draft: bool = True

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """What ``decode_image(draft_size=...)`` gets for this preprocessing."""
        return (2 * self.image_size, 2 * self.image_size) if self.draft else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(
            image_size=int(data["image_size"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            resize=data.get("resize", "squash"),
            draft=bool(data.get("draft", False)),
        )


RESIZE_MODES = ("squash",)  # the whole image resized to S x S, no crop: labels may sit at the edges


def _resize(size: int, mode: str) -> v2.Transform:
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}")
    return v2.Resize((size, size), antialias=True)


def build_stage_transform(pre: Preprocessing, size: int | None = None) -> v2.Compose:
    """Decoded PIL RGB image -> uint8 (3, size, size), size defaulting to the input size: what is cached."""
    return v2.Compose([v2.ToImage(), _resize(size or pre.image_size, pre.resize)])  # resizing uint8 is cheaper


def build_eval_transform(pre: Preprocessing) -> v2.Compose:
    """PIL RGB image -> normalised float32 (3, S, S). Deterministic. Predict, serve and export use it whole."""
    return v2.Compose(
        [
            *build_stage_transform(pre).transforms,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(pre.mean), std=list(pre.std)),
        ]
    )


@dataclass(frozen=True)
class Pipeline:
    """How a dataset makes a sample: decode, stage, per-sample uint8 augmentation; flip and floats per batch."""

    pre: Preprocessing
    stage_size: int  # decoded images are resized to stage_size x stage_size (uint8): what the cache holds
    augment: v2.Compose | None  # uint8 stage -> uint8 (3, S, S), random; None: the stage is the sample
    flip: bool  # random horizontal flip, decided per sample, applied per batch on the device

    @property
    def cache_spec(self) -> dict:
        """Everything that shapes the staged pixels: part of the decoded-image cache's key."""
        return {"stage_size": self.stage_size, "resize": self.pre.resize, "draft_size": self.pre.draft_size}

    @functools.cached_property
    def _stage(self) -> v2.Compose:  # built once, not per image (writes __dict__ directly: fine when frozen)
        return build_stage_transform(self.pre, self.stage_size)

    def stage(self, image: PIL.Image.Image) -> torch.Tensor:
        return self._stage(image)


def build_eval_pipeline(pre: Preprocessing) -> Pipeline:
    return Pipeline(pre, pre.image_size, None, False)


def build_train_pipeline(pre: Preprocessing, augment: str = "light") -> Pipeline:
    """The augmentation presets, each a superset of the one before from ``light`` on:
    ``none`` eval preprocessing only; ``light`` + horizontal flip (the seed's);
    ``standard`` random resized crop (scale >= 0.5) + flip + colour jitter;
    ``strong`` standard + TrivialAugmentWide + random erasing.
    All augmentation runs on uint8 (cheaper, and TrivialAugment's magnitudes assume uint8). Erasing
    fills with the dataset mean colour, which normalises to about 0.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation preset {augment!r}; choose one of: {', '.join(AUGMENTATIONS)}")
    _resize(pre.image_size, pre.resize)  # rejects unknown resize modes for the cropping presets too
    if augment in ("none", "light"):
        return Pipeline(pre, pre.image_size, None, augment == "light")
    size = pre.image_size
    # default aspect ratio range 3/4..4/3; the crop is then squashed to S x S like the eval resize
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop((size, size), scale=CROP_SCALE, antialias=True),
        v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05),
    ]
    if augment == "strong":
        mean_colour = [round(255 * m) for m in pre.mean]
        steps += [v2.TrivialAugmentWide(), v2.RandomErasing(p=0.25, value=mean_colour)]
    return Pipeline(pre, round(size * CROP_STAGE_FACTOR), v2.Compose(steps), True)


def batch_inputs(
    images: torch.Tensor,
    flips: torch.Tensor | None,
    pre: Preprocessing,
    device: torch.device,
    *,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 (B, 3, S, S) batch -> normalised float32 model input on ``device``: flip where ``flips``
    says so, then exactly the eval transform's float conversion and normalisation, batched.

    Flipping and changing the memory layout happen on uint8, a quarter of the bytes. A float batch (a test's,
    a custom loader's) is taken as already normalised and only moved.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = images.to(device, non_blocking=True)
    if not x.is_floating_point():
        if flips is not None and bool(flips.any()):
            x = torch.where(flips.to(device, non_blocking=True).view(-1, 1, 1, 1), x.flip(-1), x)
        x = x.contiguous(memory_format=fmt)
        x = TF.normalize(TF.to_dtype(x, torch.float32, scale=True), mean=list(pre.mean), std=list(pre.std))
    return x.contiguous(memory_format=fmt)

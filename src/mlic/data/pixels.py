"""An image source -> the pixels a model takes: the one way training, the cache, predict, serve, Grad-CAM
and the report all get them.

A ``PixelLoader`` holds what every such call must agree on: the preprocessing (its reduced-size JPEG
decoding), the pixel limit, and the transform that follows decoding (the uint8 stage that datasets and the
cache store, or the whole eval transform that predictors use). So no call site can decode with one set of
arguments and another call site with another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import PIL.Image
import torch

from mlic.data.images import DEFAULT_MAX_PIXELS, LIMIT_FLAG, ImageDecodeError, ImageSource, decode_image
from mlic.data.transforms import Preprocessing, build_eval_transform, build_stage_transform


@dataclass(frozen=True)
class PixelLoader:
    """Decode with ``pre``'s reduced-size decoding and ``max_pixels``, then ``transform`` the RGB image."""

    pre: Preprocessing
    transform: Callable[[PIL.Image.Image], torch.Tensor]
    max_pixels: int = DEFAULT_MAX_PIXELS
    limit_flag: str = LIMIT_FLAG  # the setting an error about ``max_pixels`` names

    def decode(self, source: ImageSource) -> PIL.Image.Image:
        """The upright 8-bit RGB image, decoded no larger than this preprocessing needs."""
        return decode_image(
            source, max_pixels=self.max_pixels, draft_size=self.pre.draft_size, limit_flag=self.limit_flag
        )

    def __call__(self, source: ImageSource) -> torch.Tensor:
        return self.transform(self.decode(source))

    def load_or_reason(self, source: ImageSource) -> tuple[torch.Tensor | None, str | None]:
        """(pixels, None), or (None, why not) for a file that cannot be read: a bad image never stops a run."""
        try:
            return self(source), None
        except ImageDecodeError as exc:
            return None, exc.reason
        except OSError as exc:  # e.g. a file that vanished after the scan
            return None, exc.strerror or str(exc)


def stage_loader(pre: Preprocessing, size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> PixelLoader:
    """uint8 (3, size, size), size defaulting to the input size: what datasets and the cache hold."""
    return PixelLoader(pre, build_stage_transform(pre, size), max_pixels)


def eval_loader(pre: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS) -> PixelLoader:
    """Normalised float32 (3, S, S): the eval transform whole, as ``Predictor`` and Grad-CAM feed the model."""
    return PixelLoader(pre, build_eval_transform(pre), max_pixels)

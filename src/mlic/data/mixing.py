"""Multi-label MixUp and CutMix on a batch, applied in the training loop after the loader.

Targets are mixed as soft labels and never argmaxed: an image that is 70% "cat, sofa" and 30% "dog"
has target 0.7 for cat and sofa and 0.3 for dog. BCE with soft targets is well defined: per class it is
the cross-entropy between Bernoulli(y) and Bernoulli(sigmoid(z)), minimised at sigmoid(z) = y, so
``binary_cross_entropy_with_logits`` takes the mixed targets unchanged.

Known-label masks combine with AND: a mixed entry is known only if it is known in both images. If class c
is unknown in the partner image, its target there is a 0 placeholder, and the mixed value
``lam * y_a + (1 - lam) * 0`` would teach a fraction that nobody labelled; so the loss skips it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

Tensor = torch.Tensor


def _check(mixup_alpha: float, cutmix_alpha: float, prob: float, switch_prob: float) -> None:
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha} and {cutmix_alpha}")
    if not 0.0 <= prob <= 1.0 or not 0.0 <= switch_prob <= 1.0:
        raise ValueError(f"prob and switch_prob must be in [0, 1], got {prob} and {switch_prob}")


def _uniform(generator: torch.Generator | None) -> float:
    # Drawn on the CPU, so a CPU generator works whatever device the batch is on.
    return float(torch.rand((), generator=generator))


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    """lam ~ Beta(alpha, alpha). torch's Beta takes no generator, so a seed drawn from it drives stdlib's."""
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    return random.Random(seed).betavariate(alpha, alpha)


def _cutmix_box(lam: float, height: int, width: int, generator: torch.Generator | None) -> tuple[int, int, int, int]:
    """A box of area about (1 - lam) * H * W at a uniform centre, clipped to the image: (y0, y1, x0, x1)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(_uniform(generator) * height), int(_uniform(generator) * width)
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, width)
    return y0, y1, x0, x1


def mix_batch(
    images: Tensor,
    targets: Tensor,
    masks: Tensor | None,
    *,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Mix each image of a batch with a partner from a random permutation, MixUp or CutMix.

    images (B, C, H, W) float, targets (B, K) in [0, 1], masks (B, K) 1 = known, or None.
    One lam ~ Beta(alpha, alpha) per batch. With both alphas > 0, CutMix is chosen with probability
    ``switch_prob``; with probability ``1 - prob`` the batch is returned unmixed. ``generator`` (CPU)
    makes the draws reproducible; None uses torch's global RNG, so the run seed still governs it.
    Returns new tensors; the inputs are not modified.
    """
    _check(mixup_alpha, cutmix_alpha, prob, switch_prob)
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or _uniform(generator) >= prob:
        return images, targets, masks
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or _uniform(generator) < switch_prob)
    lam = _beta(cutmix_alpha if use_cutmix else mixup_alpha, generator)
    perm = torch.randperm(images.shape[0], generator=generator).to(images.device)

    if use_cutmix:
        height, width = images.shape[-2:]
        y0, y1, x0, x1 = _cutmix_box(lam, height, width, generator)
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)  # the box was clipped: use its true area
        if lam >= 1.0:  # empty box: nothing of the partner is left, so neither target nor mask changes
            return images, targets, masks
        mixed = images.clone()
        mixed[:, :, y0:y1, x0:x1] = images[perm, :, y0:y1, x0:x1]
    else:
        mixed = lam * images + (1.0 - lam) * images[perm]

    mixed_targets = lam * targets + (1.0 - lam) * targets[perm]
    mixed_masks = None if masks is None else masks * masks[perm]
    return mixed, mixed_targets, mixed_masks


@dataclass
class Mixer:
    """MixUp/CutMix settings for the training loop: ``images, targets, masks = mixer(images, targets, masks)``."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    generator: torch.Generator | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check(self.mixup_alpha, self.cutmix_alpha, self.prob, self.switch_prob)

    @property
    def enabled(self) -> bool:
        """False when no batch could ever be mixed, so the loop can skip the call (and its RNG draws)."""
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    def __call__(self, images: Tensor, targets: Tensor, masks: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        if not self.enabled:
            return images, targets, masks
        return mix_batch(
            images,
            targets,
            masks,
            mixup_alpha=self.mixup_alpha,
            cutmix_alpha=self.cutmix_alpha,
            prob=self.prob,
            switch_prob=self.switch_prob,
            generator=self.generator,
        )

"""Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391): where in the image a CNN found each label.

For class c with logit y_c and target-layer activations A (1, K, h, w): weights a_k = mean over (h, w)
of dy_c/dA_k, map = ReLU(sum_k a_k A_k), upsampled to the input size and scaled to [0, 1]. Multi-label
models get one map per label from a single forward pass; each label's gradient is taken with
``torch.autograd.grad``, so no parameter's ``.grad`` is touched.

The target layer defaults to the last feature map of ``forward_features``: ``features[-1]`` for
``seed_cnn``, and for timm CNNs the last module whose output is 4-D, found by a dry forward with hooks.
Any module can be named instead (dotted name, as in ``model.named_modules()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def find_target_layer(model: nn.Module, example: torch.Tensor) -> str:
    """Dotted name of the default Grad-CAM layer of ``model`` for inputs like ``example`` (1, 3, S, S)."""
    from mlic.models.seed_cnn import SeedCNN

    if isinstance(model, SeedCNN):
        return f"features.{len(model.features) - 1}"
    fired: list[str] = []
    names = {module: name for name, module in model.named_modules() if name}

    def record(module: nn.Module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            fired.append(names[module])

    handles = [module.register_forward_hook(record) for module in names]
    try:
        with torch.no_grad():
            out = model.forward_features(example)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or not fired:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{type(model).__name__}.forward_features gives {shape}, not a (B, C, H, W) feature map: Grad-CAM "
            "needs a CNN; name a convolutional layer with target_layer (--target-layer)"
        )
    # Hooks fire children first, so the last 4-D module to finish is the outermost one giving the final map.
    return fired[-1]


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (dotted); a ValueError lists a few valid names otherwise."""
    modules = dict(model.named_modules())
    if name not in modules or not name:
        some = [n for n in modules if n and "." not in n][:12]
        raise ValueError(f"no module {name!r} in {type(model).__name__}; top-level modules: {', '.join(some)}")
    return modules[name]


def gradcam(
    model: nn.Module,
    image_tensor: torch.Tensor,
    class_indices: Sequence[int],
    *,
    target_layer: str | None = None,
) -> dict[int, np.ndarray]:
    """One Grad-CAM map per class index: float32 (H, W) in [0, 1], for a preprocessed (1, 3, H, W) image.

    The model is run in eval mode (restored afterwards) on a detached copy of the input; parameters'
    ``.grad`` are left as they were. A class with no positive evidence gets an all-zero map.
    """
    if image_tensor.dim() != 4 or image_tensor.shape[0] != 1:
        raise ValueError(f"image_tensor must be (1, 3, H, W), got {tuple(image_tensor.shape)}")
    device = next(model.parameters()).device
    # A leaf that requires grad: the graph then reaches the target layer even with frozen (requires_grad=False)
    # weights, and the caller's tensor is never part of it.
    x = image_tensor.detach().clone().to(device).requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        name = target_layer or find_target_layer(model, x)
        layer = get_module(model, name)
        captured: list[torch.Tensor] = []

        def keep(_module, _inputs, output):
            captured.append(output)
            # Later in-place ops (ReLU(inplace=True)) would change the captured tensor; they get a copy.
            return output.clone()

        handle = layer.register_forward_hook(keep)
        try:
            with torch.enable_grad():
                logits = model(x)  # (1, C)
                if not captured:
                    raise ValueError(f"target layer {name!r} is not used by the model's forward pass")
                acts = captured[-1]  # (1, K, h, w)
                if acts.dim() != 4:
                    raise ValueError(f"target layer output is {tuple(acts.shape)}, not (1, K, h, w)")
                bad = [int(c) for c in class_indices if not 0 <= int(c) < logits.shape[1]]
                if bad:
                    raise ValueError(f"class index {bad[0]} out of range for {logits.shape[1]} classes")
                maps = {}
                for i, c in enumerate(class_indices):
                    (grads,) = torch.autograd.grad(
                        logits[0, int(c)], acts, retain_graph=i + 1 < len(class_indices), allow_unused=True
                    )
                    maps[int(c)] = _cam(acts.detach(), grads, tuple(x.shape[-2:]))
        finally:
            handle.remove()
    finally:
        model.train(was_training)
    return maps


def _cam(acts: torch.Tensor, grads: torch.Tensor | None, size: tuple[int, int]) -> np.ndarray:
    """ReLU(sum_k mean(grad_k) A_k), bilinearly upsampled to ``size`` and divided by its maximum."""
    if grads is None:  # the class logit does not depend on this layer
        return np.zeros(size, np.float32)
    weights = grads.float().mean(dim=(2, 3), keepdim=True)  # (1, K, 1, 1)
    cam = torch.relu((weights * acts.float()).sum(dim=1, keepdim=True))  # (1, 1, h, w)
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[0, 0]
    top = cam.max()
    cam = cam / top if top > 0 else torch.zeros_like(cam)
    return cam.clamp(0, 1).cpu().numpy().astype(np.float32)


def explain_image(
    checkpoint: str | Path,
    image: str | Path,
    *,
    labels: Sequence[str] | None = None,
    output_dir: str | Path = "explanations",
    target_layer: str | None = None,
    device: str = "auto",
) -> list[Path]:
    """Grad-CAM overlay PNGs for ``image``: one per label in ``labels``, else per predicted label (else top-1).

    Files are ``<output_dir>/<image stem>_<label>.png``; each caption gives the label's probability.
    """
    from mlic.inference.predictor import Predictor, labels_at
    from mlic.insight.plots import plot_gradcam_overlay

    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    names = predictor.class_names
    unknown = [name for name in labels or () if name not in names]
    if unknown:
        raise ValueError(f"unknown label(s) {', '.join(unknown)}; the model knows: {', '.join(names)}")
    pil = predictor.loader.decode(image)
    x = predictor.loader.transform(pil).unsqueeze(0)
    probs = predictor.predict_probabilities(x)[0]
    if labels:
        chosen = [names.index(name) for name in dict.fromkeys(labels)]
    else:
        predicted = labels_at(probs, predictor.thresholds, names)
        chosen = [names.index(name) for name in predicted] or [int(np.argmax(probs))]
    maps = gradcam(predictor.model, x, chosen, target_layer=target_layer)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for c in chosen:
        verdict = "predicted" if probs[c] >= predictor.thresholds[c] else "not predicted"
        caption = f"{names[c]}: p = {probs[c]:.3f} (threshold {predictor.thresholds[c]:.2f}, {verdict})"
        path = out_dir / f"{Path(image).stem}_{_safe_name(names[c])}.png"
        written.append(plot_gradcam_overlay(pil, maps[c], caption, path))
    return written


def _safe_name(label: str) -> str:
    """A label as a file-name part: letters, digits, '-', '_' and '.' kept, anything else '_'."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label).strip(".") or "label"

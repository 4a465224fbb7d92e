"""A per-class calibration (calibrated logit = scale * logit + shift) folded into a model's classifier.

For the usual linear head the fold is exact arithmetic on its weights (W' = scale * W, b' = scale * b +
shift), so the model, its ONNX and TorchScript exports and Grad-CAM all compute calibrated logits with no
extra layer; any other head gets the same affine map applied to its output. See
``mlic.evaluation.calibration`` for how the calibration is fitted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def fold_calibration(model: nn.Module, scale: Sequence[float], shift: Sequence[float]) -> nn.Module:
    """``model`` (changed in place, and returned) whose logits are calibrated."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    a = torch.as_tensor(scale, dtype=torch.float64)
    b = torch.as_tensor(shift, dtype=torch.float64)
    with torch.no_grad():
        if isinstance(head, nn.Linear) and head.out_features == len(a):
            weight = head.weight.double() * a[:, None]
            bias = (head.bias.double() if head.bias is not None else torch.zeros_like(a)) * a + b
            head.weight.copy_(weight.to(head.weight.dtype))
            if head.bias is None:
                head.bias = nn.Parameter(bias.to(head.weight.dtype))
            else:
                head.bias.copy_(bias.to(head.bias.dtype))
            return model
    model.register_forward_hook(_Affine(a.float(), b.float()))
    return model


class _Affine:
    """A forward hook: output * scale + shift, per class (for heads that are not one Linear layer)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        self.scale, self.shift = scale, shift

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        return output * self.scale.to(output.device) + self.shift.to(output.device)

"""Losses for multi-label training: BCE (optionally with ``pos_weight``), sigmoid focal loss and asymmetric loss.

Every loss takes ``(logits, targets, mask=None)`` with (N, C) tensors and honours the known-label mask:
unknown entries (mask 0) contribute nothing. The reduction is the same for all of them: the sum over
known entries divided by the number of known entries (clamped to at least 1, so a batch with nothing
known gives 0 rather than NaN). With every entry known that is the plain mean over N * C entries.

The asymmetric-loss paper sums over entries; we take the mean instead so that one learning rate works
for all three losses and does not depend on the batch size or the number of classes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import nn

from mlic.config import LOSSES


def _masked_mean(loss: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over known entries of an element-wise (N, C) loss."""
    if mask is None:
        return loss.mean()
    mask = mask.to(loss.dtype)
    # Multiply (not index) so unknown entries get an exact zero gradient and shapes stay static.
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


class MaskedBCEWithLogits(nn.Module):
    """BCEWithLogitsLoss averaged over known entries; with no unknowns it equals the plain mean BCE.

    ``pos_weight`` (C,) multiplies each class's positive term, exactly as in ``nn.BCEWithLogitsLoss``:
    loss = -(pos_weight * y * log(sigmoid(x)) + (1 - y) * log(1 - sigmoid(x))).
    """

    def __init__(self, pos_weight: torch.Tensor | ArrayLike | None = None) -> None:
        super().__init__()
        # A non-persistent buffer follows .to(device) but stays out of state_dict (checkpoints hold weights only).
        self.register_buffer("pos_weight", _check_pos_weight(pos_weight), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none", pos_weight=self.pos_weight)
        return _masked_mean(loss, mask)


class MaskedFocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al. 2017, https://arxiv.org/abs/1708.02002) over known entries.

    loss = -alpha_t * (1 - p_t) ** gamma * log(p_t), with p_t = p for positives and 1 - p for negatives,
    alpha_t = alpha for positives and 1 - alpha for negatives (no alpha: alpha_t = 1). The (1 - p_t) ** gamma
    factor shrinks the loss of entries already classified well, so the many easy negatives of a multi-label
    problem do not drown the rare positives. gamma=0 without alpha is BCE.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, eps: float = 1e-8) -> None:
        super().__init__()
        _check_non_negative(gamma=gamma)
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"focal alpha must lie in [0, 1] or be None, got {alpha}")
        self.gamma, self.alpha, self.eps = gamma, alpha, _check_eps(eps)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # float32 even under autocast: powers and logs of probabilities lose too much in half precision.
        logits, targets = logits.float(), targets.float()
        ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # -log(p_t), stable
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = ce * _focus(1 - p_t, self.gamma, self.eps)
        if self.alpha is not None:
            loss = loss * (self.alpha * targets + (1 - self.alpha) * (1 - targets))
        return _masked_mean(loss, mask)


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (Ridnik et al. 2021, https://arxiv.org/abs/2009.14119) over known entries.

    Positives: -(1 - p) ** gamma_pos * log(p). Negatives: -p_m ** gamma_neg * log(1 - p_m) with the shifted
    probability p_m = max(p - clip, 0): negatives focus harder than positives (gamma_neg > gamma_pos), and
    easy negatives (p < clip) are discarded outright, which also ignores some mislabelled negatives.
    gamma_pos = gamma_neg = clip = 0 is BCE.
    """

    def __init__(self, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05, eps: float = 1e-8) -> None:
        super().__init__()
        _check_non_negative(gamma_pos=gamma_pos, gamma_neg=gamma_neg)
        if not 0.0 <= clip < 1.0:
            raise ValueError(f"asl clip must lie in [0, 1), got {clip}")
        self.gamma_pos, self.gamma_neg, self.clip, self.eps = gamma_pos, gamma_neg, clip, _check_eps(eps)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        logits, targets = logits.float(), targets.float()
        p = torch.sigmoid(logits)
        # log-sigmoid rather than log(clamp(p, eps)) as in the paper's code: same value where the clamp is
        # inactive, but a confidently wrong entry keeps its gradient instead of hitting the floor.
        pos_loss = -F.logsigmoid(logits) * _focus(1 - p, self.gamma_pos, self.eps)
        if self.clip > 0:
            p_m = (p - self.clip).clamp(min=0)
            log_not_p_m = torch.log1p(-p_m)  # 1 - p_m >= clip > 0, so the log is finite
        else:
            p_m, log_not_p_m = p, F.logsigmoid(-logits)  # log(1 - p), stable for large logits
        neg_loss = -log_not_p_m * _focus(p_m, self.gamma_neg, self.eps)
        loss = targets * pos_loss + (1 - targets) * neg_loss
        return _masked_mean(loss, mask)


def _focus(base: torch.Tensor, gamma: float, eps: float) -> torch.Tensor:
    """base ** gamma, with base floored at eps so a fractional gamma cannot make an inf * 0 = NaN gradient."""
    if gamma == 0:
        return torch.ones_like(base)
    return base.clamp(min=eps) ** gamma


def build_loss(
    name: str,
    *,
    pos_weight: torch.Tensor | ArrayLike | None = None,
    gamma: float = 2.0,
    alpha: float | None = None,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    eps: float = 1e-8,
) -> nn.Module:
    """The loss called ``name`` (one of LOSSES). ``gamma``/``alpha`` are focal's; ``gamma_pos``/``gamma_neg``/
    ``clip`` are ASL's; ``pos_weight`` (C,) is BCE's only, since focal and ASL re-weight classes themselves."""
    if pos_weight is not None and name != "bce":
        raise ValueError(f"pos_weight applies to the 'bce' loss only, not {name!r} (focal has alpha, asl its gammas)")
    if name == "bce":
        return MaskedBCEWithLogits(pos_weight)
    elif name == "focal":
        return MaskedFocalLoss(gamma=gamma, alpha=alpha, eps=eps)
    elif name == "asl":
        return AsymmetricLoss(gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, eps=eps)
    raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")


def auto_pos_weight(targets: np.ndarray, mask: np.ndarray | None = None, max_weight: float = 10.0) -> torch.Tensor:
    """Per-class BCE ``pos_weight`` = known negatives / known positives, clipped to [1, max_weight].

    Computed on the training labels, it makes each class's positives weigh about as much as its negatives.
    The floor of 1 means positives are never down-weighted (a class present in most images keeps weight 1);
    the cap keeps very rare classes from dominating the gradient. A class with no known positive gets 1:
    pos_weight only multiplies positive terms, so with these labels its value changes nothing, and 1 is
    the neutral choice. Returns a float32 tensor (C,).
    """
    if max_weight < 1:
        raise ValueError(f"max_weight must be at least 1, got {max_weight}")
    targets = np.asarray(targets)
    if targets.ndim != 2:
        raise ValueError(f"targets must be 2-D (N, C), got shape {targets.shape}")
    known = np.ones(targets.shape, dtype=bool) if mask is None else np.asarray(mask) == 1
    if known.shape != targets.shape:
        raise ValueError(f"mask must have shape {targets.shape}, got {known.shape}")
    if not np.isin(targets[known], (0, 1)).all():
        raise ValueError("known targets must contain only 0 and 1")
    positives = (known & (targets == 1)).sum(0)
    return pos_weight_from_counts(positives, known.sum(0), max_weight)


def pos_weight_from_counts(positives: ArrayLike, known: ArrayLike, max_weight: float = 10.0) -> torch.Tensor:
    """``auto_pos_weight`` from per-class counts: known positives and known entries (C,), as a sparse label table
    gives them without any (N, C) array."""
    if max_weight < 1:
        raise ValueError(f"max_weight must be at least 1, got {max_weight}")
    positives = np.asarray(positives, np.float64)
    negatives = np.asarray(known, np.float64) - positives
    ratio = np.divide(negatives, positives, out=np.ones_like(positives), where=positives > 0)
    return torch.as_tensor(np.clip(ratio, 1.0, max_weight), dtype=torch.float32)


def _check_pos_weight(pos_weight: torch.Tensor | ArrayLike | None) -> torch.Tensor | None:
    if pos_weight is None:
        return None
    weight = torch.as_tensor(pos_weight, dtype=torch.float32).detach().clone()
    if weight.ndim != 1:
        raise ValueError(f"pos_weight must be 1-D (C,), got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all() or (weight <= 0).any():
        raise ValueError("pos_weight must be finite and positive")
    return weight


def _check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def _check_eps(eps: float) -> float:
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return eps

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlic.losses import LOSSES, AsymmetricLoss, MaskedBCEWithLogits, MaskedFocalLoss, auto_pos_weight, build_loss


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(6, 4) logits in a moderate range, 0/1 targets and a mask with some unknowns in every row."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g) * 2
    targets = (torch.rand(6, 4, generator=g) > 0.5).float()
    mask = torch.ones(6, 4)
    mask[torch.arange(6), torch.arange(6) % 4] = 0.0
    return logits, targets, mask


def masked_mean(per_element: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (per_element * mask).sum() / mask.sum()


def test_bce_with_pos_weight_and_mask_equals_hand_formula(batch):
    logits, y, m = batch
    w = torch.tensor([1.0, 2.0, 0.5, 4.0])
    p = torch.sigmoid(logits)
    ref = -(w * y * torch.log(p) + (1 - y) * torch.log(1 - p))
    got = build_loss("bce", pos_weight=w)(logits, y, m)
    assert torch.allclose(got, masked_mean(ref, m), atol=1e-6)
    # The weight matters: without it the value differs.
    assert not torch.allclose(build_loss("bce")(logits, y, m), got, atol=1e-4)


def test_pos_weight_matches_torch_bce_with_logits_loss_on_full_mask(batch):
    logits, y, _ = batch
    w = torch.tensor([3.0, 1.0, 0.2, 7.0])
    expected = nn.BCEWithLogitsLoss(pos_weight=w)(logits, y)
    assert torch.allclose(build_loss("bce", pos_weight=w)(logits, y), expected, atol=1e-6)
    assert torch.allclose(build_loss("bce", pos_weight=w)(logits, y, torch.ones_like(y)), expected, atol=1e-6)


def test_focal_equals_hand_formula_with_alpha_and_mask(batch):
    logits, y, m = batch
    gamma, alpha = 2.0, 0.25
    p = torch.sigmoid(logits)
    p_t = torch.where(y == 1, p, 1 - p)
    alpha_t = torch.where(y == 1, torch.tensor(alpha), torch.tensor(1 - alpha))
    ref = -alpha_t * (1 - p_t) ** gamma * torch.log(p_t)
    got = build_loss("focal", gamma=gamma, alpha=alpha)(logits, y, m)
    assert torch.allclose(got, masked_mean(ref, m), atol=1e-6)


def test_asl_equals_hand_formula_with_mask(batch):
    logits, y, m = batch
    gamma_pos, gamma_neg, clip = 1.0, 4.0, 0.05
    p = torch.sigmoid(logits)
    p_m = torch.clamp(p - clip, min=0)
    pos = -((1 - p) ** gamma_pos) * torch.log(p)
    neg = -(p_m**gamma_neg) * torch.log(1 - p_m)
    ref = y * pos + (1 - y) * neg
    got = build_loss("asl", gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip)(logits, y, m)
    assert torch.allclose(got, masked_mean(ref, m), atol=1e-6)


def test_asl_ignores_negatives_below_the_margin():
    # p = sigmoid(-4) ~ 0.018 < clip: the negative is discarded outright (loss exactly 0).
    loss = build_loss("asl", clip=0.05)(torch.tensor([[-4.0]]), torch.tensor([[0.0]]))
    assert loss.item() == 0.0
    assert build_loss("asl", clip=0.0)(torch.tensor([[-4.0]]), torch.tensor([[0.0]])).item() > 0


def test_asl_and_focal_reduce_to_bce(batch):
    logits, y, m = batch
    bce = build_loss("bce")(logits, y, m)
    assert torch.allclose(build_loss("asl", gamma_pos=0, gamma_neg=0, clip=0)(logits, y, m), bce, atol=1e-6)
    assert torch.allclose(build_loss("focal", gamma=0)(logits, y, m), bce, atol=1e-6)
    assert torch.allclose(build_loss("focal", gamma=0)(logits, y), F.binary_cross_entropy_with_logits(logits, y))
    # And the defaults do reshape the loss.
    assert not torch.allclose(build_loss("asl")(logits, y, m), bce, atol=1e-3)
    assert not torch.allclose(build_loss("focal")(logits, y, m), bce, atol=1e-3)


@pytest.mark.parametrize("name", LOSSES)
def test_unknown_entries_get_zero_gradient(batch, name):
    logits, y, m = batch
    logits = logits.clone().requires_grad_(True)
    build_loss(name, clip=0.0)(logits, y, m).backward()
    grad = logits.grad
    assert torch.isfinite(grad).all()
    assert (grad[m == 0] == 0).all()
    assert (grad[m == 1] != 0).all()


@pytest.mark.parametrize("name", LOSSES)
def test_reduction_is_mean_over_known_and_zero_when_nothing_known(batch, name):
    logits, y, m = batch
    loss_fn = build_loss(name)
    known = m.bool()
    # Dropping the unknown entries and averaging the rest gives the same number.
    dropped = loss_fn(logits[known][None], y[known][None])
    assert torch.allclose(loss_fn(logits, y, m), dropped, atol=1e-6)
    assert loss_fn(logits, y, torch.zeros_like(m)).item() == 0.0


@pytest.mark.parametrize("name", LOSSES)
def test_extreme_logits_stay_finite(name):
    logits = torch.tensor([[-100.0, 100.0, -100.0, 100.0]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    loss = build_loss(name, gamma=0.5, gamma_pos=0.5)(logits, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_build_loss_types_and_errors():
    assert type(build_loss("bce")) is MaskedBCEWithLogits and build_loss("bce").pos_weight is None
    assert isinstance(build_loss("focal"), MaskedFocalLoss)
    assert isinstance(build_loss("asl"), AsymmetricLoss)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("hinge")
    with pytest.raises(ValueError, match="pos_weight"):
        build_loss("focal", pos_weight=torch.ones(3))
    with pytest.raises(ValueError, match="1-D"):
        build_loss("bce", pos_weight=torch.ones(2, 2))
    with pytest.raises(ValueError, match="positive"):
        build_loss("bce", pos_weight=[1.0, 0.0])
    with pytest.raises(ValueError, match="alpha"):
        build_loss("focal", alpha=1.5)
    with pytest.raises(ValueError, match="clip"):
        build_loss("asl", clip=1.0)
    with pytest.raises(ValueError, match="gamma_neg"):
        build_loss("asl", gamma_neg=-1)


def test_pos_weight_is_a_buffer_outside_the_state_dict():
    loss_fn = build_loss("bce", pos_weight=np.array([2.0, 3.0]))
    assert dict(loss_fn.named_buffers())["pos_weight"].tolist() == [2.0, 3.0]
    assert loss_fn.state_dict() == {}


def test_auto_pos_weight_counts_known_labels_and_clips():
    targets = np.array(
        [
            # c0: 1 pos 3 neg -> 3; c1: 3 pos 1 neg -> 1/3 -> 1; c2: no pos -> 1; c3: 1 pos, 2 known neg -> 2
            [1, 1, 0, 1],
            [0, 1, 0, 0],
            [0, 1, 0, 0],
            [0, 0, 0, 0],
        ]
    )
    mask = np.ones_like(targets)
    mask[3, 3] = 0  # one negative of c3 is unknown
    assert auto_pos_weight(targets, mask).tolist() == [3.0, 1.0, 1.0, 2.0]
    assert auto_pos_weight(targets).tolist() == [3.0, 1.0, 1.0, 3.0]
    assert auto_pos_weight(targets, mask, max_weight=2.5).tolist() == [2.5, 1.0, 1.0, 2.0]
    # 1 positive among 100 images: 99 negatives -> capped at the default 10.
    rare = np.zeros((100, 1))
    rare[0] = 1
    weight = auto_pos_weight(rare)
    assert weight.dtype == torch.float32 and weight.tolist() == [10.0]
    # Unknown entries may hold any value; only known ones are checked.
    assert auto_pos_weight(np.array([[1, -1]]), np.array([[1, 0]])).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError):
        auto_pos_weight(np.array([[2, 0]]))
    with pytest.raises(ValueError):
        auto_pos_weight(targets, max_weight=0.5)

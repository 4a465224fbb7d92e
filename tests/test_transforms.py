"""Augmentation presets and multi-label MixUp/CutMix: shapes, randomness that really happens,
soft targets that are the stated combination, and masks that only keep what both images know."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from mlic.data.mixing import Mixer, mix_batch
from mlic.data.transforms import (
    AUGMENTATIONS,
    CROP_STAGE_FACTOR,
    Preprocessing,
    batch_inputs,
    build_eval_pipeline,
    build_eval_transform,
    build_train_pipeline,
)

SIZE = 24


def _asymmetric_image() -> Image.Image:
    """40 x 30 RGB: dark left half, bright right half, a coloured stripe; not SIZE x SIZE on purpose."""
    img = Image.new("RGB", (40, 30), (10, 20, 30))
    for x in range(20, 40):
        for y in range(30):
            img.putpixel((x, y), (230, 200, 180))
    for x in range(4, 8):
        for y in range(30):
            img.putpixel((x, y), (200, 30, 30))
    return img


def _sample(pipeline, img, seed: int) -> torch.Tensor:
    """One training sample as the dataset and the loop make it: stage, uint8 augment, flip, batched floats."""
    torch.manual_seed(seed)
    x = pipeline.stage(img)
    if pipeline.augment is not None:
        x = pipeline.augment(x)
    assert x.dtype == torch.uint8 and x.shape == (3, SIZE, SIZE)
    flip = torch.tensor([pipeline.flip and bool(torch.rand(()) < 0.5)])
    return batch_inputs(x[None], flip, pipeline.pre, torch.device("cpu"))[0]


# ---- presets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("augment", AUGMENTATIONS)
def test_every_preset_gives_normalised_square_float(augment):
    pipeline = build_train_pipeline(Preprocessing(image_size=SIZE), augment)
    for seed in range(3):
        out = _sample(pipeline, _asymmetric_image(), seed)
        assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        assert out.min() < 0  # normalised, not in [0, 1]


def test_presets_listed_and_unknown_rejected():
    assert AUGMENTATIONS == ("none", "light", "standard", "strong")
    with pytest.raises(ValueError, match="heavy"):
        build_train_pipeline(Preprocessing(image_size=SIZE), "heavy")
    with pytest.raises(ValueError, match="resize"):
        build_train_pipeline(Preprocessing(image_size=SIZE, resize="pad"), "standard")


def test_eval_transform_is_resize_todtype_normalize_and_batches_equal_it():
    pre = Preprocessing(image_size=SIZE)
    by_hand = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((SIZE, SIZE), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(pre.mean), std=list(pre.std)),
        ]
    )
    img = _asymmetric_image()
    assert torch.equal(build_eval_transform(pre)(img), by_hand(img))
    # staged uint8 + batched float work (what training and evaluate do) is the eval transform, bit for bit,
    # in either memory layout
    for channels_last in (False, True):
        staged = build_eval_pipeline(pre).stage(img)[None]
        assert torch.equal(batch_inputs(staged, None, pre, torch.device("cpu"), channels_last=channels_last)[0],
                           by_hand(img))  # fmt: skip
    # ``none`` is the eval transform, whatever the seed
    assert torch.equal(_sample(build_train_pipeline(pre, "none"), img, 3), by_hand(img))


def test_light_flips_both_ways():
    pre = Preprocessing(image_size=SIZE)
    img = _asymmetric_image()
    plain = build_eval_transform(pre)(img)
    assert not torch.equal(plain, plain.flip(-1))  # the image really is asymmetric
    outs = [_sample(build_train_pipeline(pre, "light"), img, s) for s in range(12)]
    assert all(torch.equal(o, plain) or torch.equal(o, plain.flip(-1)) for o in outs)
    assert any(torch.equal(o, plain) for o in outs) and any(torch.equal(o, plain.flip(-1)) for o in outs)


def test_standard_is_not_identity_and_crops_moderately_from_a_larger_stage():
    pre = Preprocessing(image_size=SIZE)
    img = _asymmetric_image()
    plain = build_eval_transform(pre)(img)
    pipeline = build_train_pipeline(pre, "standard")
    assert pipeline.stage_size == round(SIZE * CROP_STAGE_FACTOR) > SIZE
    outs = [_sample(pipeline, img, s) for s in range(4)]
    assert any(not torch.allclose(o, plain, atol=1e-3) for o in outs)
    assert not torch.equal(outs[0], outs[1])  # different seeds, different augmentations
    assert torch.equal(_sample(pipeline, img, 7), _sample(pipeline, img, 7))  # and the same seed, the same one
    crop = next(s for s in pipeline.augment.transforms if isinstance(s, v2.RandomResizedCrop))
    assert tuple(crop.scale) == (0.5, 1.0)


def test_strong_adds_trivialaugment_then_mean_colour_erasing():
    pre = Preprocessing(image_size=SIZE)
    steps = build_train_pipeline(pre, "strong").augment.transforms
    kinds = [type(s) for s in steps]
    assert kinds == [v2.RandomResizedCrop, v2.ColorJitter, v2.TrivialAugmentWide, v2.RandomErasing]
    assert steps[-1].p == 0.25 and list(steps[-1].value) == [round(255 * m) for m in pre.mean]


# ---- MixUp / CutMix --------------------------------------------------------------------------

B = 8


def _batch(seed: int = 0):
    """B images, each a different constant value; target i is one-hot on class i, so the output
    targets reveal both the partner and lam: row i = lam * e_i + (1 - lam) * e_perm[i]."""
    g = torch.Generator().manual_seed(seed)
    images = torch.arange(1, B + 1, dtype=torch.float32).view(B, 1, 1, 1).expand(B, 3, 16, 20).clone()
    targets = torch.eye(B)
    masks = (torch.rand(B, B, generator=g) > 0.3).float()
    masks[torch.arange(B), torch.arange(B)] = 1.0  # each image knows its own positive
    return images, targets, masks


def _lam_and_perm(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lam = targets.diagonal().clone()
    off = targets - torch.diag(lam)
    perm = torch.where(off.amax(1) > 0, off.argmax(1), torch.arange(B))  # rows with perm[i] == i show lam 1
    return lam, perm


def _mixed_seed(**kwargs):
    """The first generator seed whose draw gives a permutation with at least one non-fixed point."""
    for seed in range(50):
        x, y, m = _batch()
        out = mix_batch(x, y, m, generator=torch.Generator().manual_seed(seed), **kwargs)
        if (out[1].diagonal() < 1).any():
            return x, y, m, out
    raise AssertionError("never mixed")


def test_mixup_is_lambda_combination_with_soft_targets():
    x, y, m, (mx, my, mm) = _mixed_seed(mixup_alpha=0.4)
    lam, perm = _lam_and_perm(my)
    moved = perm != torch.arange(B)
    lam_batch = lam[moved][0]
    assert 0.0 < lam_batch < 1.0  # soft: neither a no-op nor an argmax
    assert torch.allclose(lam[moved], lam_batch.expand(int(moved.sum())))  # one lam per batch
    assert ((my >= 0) & (my <= 1)).all() and torch.allclose(my.sum(1), torch.ones(B))
    assert torch.allclose(mx, lam_batch * x + (1 - lam_batch) * x[perm])
    assert torch.equal(mm, m * m[perm])
    assert torch.equal(x, _batch()[0]) and torch.equal(y, torch.eye(B))  # inputs untouched


def test_cutmix_pastes_a_rectangle_and_lambda_is_its_area():
    x, y, m, (mx, my, mm) = _mixed_seed(cutmix_alpha=1.0)
    lam, perm = _lam_and_perm(my)
    checked = 0
    for i in range(B):
        if perm[i] == i:
            continue
        own, other = x[i, 0, 0, 0], x[perm[i], 0, 0, 0]
        assert ((mx[i] == own) | (mx[i] == other)).all()  # every pixel comes from one of the two
        pasted = (mx[i, 0] == other).nonzero()
        (y0, x0), (y1, x1) = pasted.min(0).values, pasted.max(0).values + 1
        assert (mx[i, :, y0:y1, x0:x1] == other).all()  # the pasted pixels fill their bounding box
        area = (y1 - y0) * (x1 - x0) / (16 * 20)
        assert 0 < area < 1 and lam[i] == pytest.approx(1 - area)
        checked += 1
    assert checked > 0
    assert torch.equal(mm, m * m[perm])


def test_mask_keeps_only_entries_known_in_both():
    x, y, m = _batch()
    m[:, 0] = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0], dtype=torch.float32)
    _, my, mm = mix_batch(x, y, m, mixup_alpha=1.0, generator=torch.Generator().manual_seed(0))
    _, perm = _lam_and_perm(my)
    assert torch.equal(mm, m * m[perm])
    assert (mm <= m).all() and not torch.equal(mm, m)  # something known became unknown


def test_prob_zero_and_no_alpha_are_identity():
    x, y, m = _batch()
    for kwargs in ({"mixup_alpha": 1.0, "cutmix_alpha": 1.0, "prob": 0.0}, {}):
        out = mix_batch(x, y, m, generator=torch.Generator().manual_seed(1), **kwargs)
        assert all(torch.equal(a, b) for a, b in zip(out, (x, y, m), strict=True))
    assert not Mixer(mixup_alpha=1.0, prob=0.0).enabled and not Mixer().enabled
    assert Mixer(cutmix_alpha=1.0).enabled


def test_prob_half_mixes_some_batches_and_switch_prob_picks_the_method():
    x, y, m = _batch()
    g = torch.Generator().manual_seed(0)
    mixed = [not torch.equal(mix_batch(x, y, m, mixup_alpha=1.0, prob=0.5, generator=g)[1], y) for _ in range(20)]
    assert any(mixed) and not all(mixed)

    def integer_pixels(switch_prob: float) -> bool:
        out = mix_batch(x, y, m, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=switch_prob, generator=g)[0]
        return bool((out == out.round()).all())

    # CutMix copies pixels, so they stay the integer source values; MixUp blends them into fractions
    assert all(integer_pixels(1.0) for _ in range(5))
    assert not any(integer_pixels(0.0) for _ in range(5))


def test_seeded_generator_is_deterministic():
    x, y, m = _batch()
    kwargs = {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}
    a = mix_batch(x, y, m, generator=torch.Generator().manual_seed(5), **kwargs)
    b = mix_batch(x, y, m, generator=torch.Generator().manual_seed(5), **kwargs)
    c = mix_batch(x, y, m, generator=torch.Generator().manual_seed(6), **kwargs)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))


def test_mixer_calls_mix_batch_and_validates():
    x, y, m = _batch()
    mixer = Mixer(mixup_alpha=0.4, generator=torch.Generator().manual_seed(2))
    direct = mix_batch(x, y, m, mixup_alpha=0.4, generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(p, q) for p, q in zip(mixer(x, y, m), direct, strict=True))
    assert mixer(x, y, None)[2] is None
    with pytest.raises(ValueError, match="alpha"):
        Mixer(mixup_alpha=-1.0)
    with pytest.raises(ValueError, match="prob"):
        Mixer(cutmix_alpha=1.0, prob=1.5)

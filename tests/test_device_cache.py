"""GPU-path components, proved on CPU against their CPU counterparts: the device-held cache gives the
DataLoader's batches, and the sync-free training step gives the same weights as the plain one."""

from __future__ import annotations

import torch

from mlic.data.cache import ensure_cache
from mlic.data.dataset import MultiLabelDataset
from mlic.data.device_cache import DeviceCachedBatches, cache_fits
from mlic.data.loader import build_loader
from mlic.data.sampler import EpochSampler
from mlic.data.sources import load_records
from mlic.data.transforms import Preprocessing, build_train_pipeline


def cached_dataset(tiny_shapes, tmp_path, augment="light"):
    records = load_records(tiny_shapes["train"])
    pipeline = build_train_pipeline(Preprocessing(image_size=32), augment)
    cache, _ = ensure_cache(records, pipeline, root=tmp_path, progress=False)
    names = sorted({n for r in records for n in r.positives})
    return MultiLabelDataset(records, names, pipeline, cache=cache, seed=7)


def test_device_held_cache_batches_equal_the_dataloaders(tiny_shapes, tmp_path):
    ds = cached_dataset(tiny_shapes, tmp_path)
    reference_sampler, sampler = EpochSampler(ds, seed=3), EpochSampler(ds, seed=3)
    loader = build_loader(ds, batch_size=10, shuffle=False, num_workers=0, sampler=reference_sampler, cached=True)
    device_batches = DeviceCachedBatches(ds, sampler, 10, torch.device("cpu"))
    for epoch, start in ((1, 0), (2, 0), (2, 17)):  # two epochs, and a resume 17 samples into one
        reference_sampler.set_position(epoch, start)
        sampler.set_position(epoch, start)
        expected, got = list(loader), list(device_batches)
        assert len(got) == len(expected) == len(device_batches)
        for a, b in zip(expected, got, strict=True):
            assert torch.equal(a.images, b.images) and torch.equal(a.flips, b.flips)
            assert torch.equal(a.targets, b.targets) and torch.equal(a.masks, b.masks)
            assert torch.equal(a.indices, b.indices)
        assert any(b.flips.any() for b in got) and any((~b.flips).any() for b in got)


def test_device_held_cache_is_only_for_cuda_and_flip_only_presets(tiny_shapes, tmp_path):
    assert not cache_fits(cached_dataset(tiny_shapes, tmp_path), torch.device("cpu"))
    cropped = cached_dataset(tiny_shapes, tmp_path, augment="standard")
    assert not cache_fits(cropped, torch.device("cuda"))
    try:
        DeviceCachedBatches(cropped, EpochSampler(cropped), 4, torch.device("cpu"))
    except ValueError as exc:
        assert "augmentation" in str(exc)
    else:
        raise AssertionError("a cropping preset was accepted")


def _batches(n: int, nan_at: int | None = None):
    from mlic.data.dataset import Batch

    g = torch.Generator().manual_seed(5)
    out = []
    for k in range(n):
        images = torch.randint(0, 256, (6, 3, 16, 16), generator=g, dtype=torch.uint8)
        targets = (torch.rand(6, 3, generator=g) > 0.5).float()
        masks = torch.ones_like(targets)
        if k == nan_at:
            masks = masks * float("nan")  # a NaN loss, as a corrupt label row would give
        out.append(Batch(images, targets, masks, torch.arange(6), [], torch.rand(6, generator=g) > 0.5))
    return out


def test_sync_free_steps_give_the_host_paths_weights_and_loss(tmp_path):
    from training import run_epoch

    from mlic.models import build_model

    results = []
    for sync_free in (False, True):
        torch.manual_seed(0)
        model = build_model("seed_cnn", 3, widths=[4, 8, 8, 8], hidden=8)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05, fused=True)
        stats = run_epoch(model, _batches(7, nan_at=3), optimizer, sync_free=sync_free, clip_grad=1.0)
        results.append((stats, model.state_dict()))
    (host, host_weights), (free, free_weights) = results
    assert host.images == free.images == 36 and host.skipped_steps == free.skipped_steps == 1
    assert free.loss_sum == host.loss_sum
    assert all(torch.equal(host_weights[k], free_weights[k]) for k in host_weights)


def test_sync_free_stops_a_diverging_run():
    import pytest
    from training import run_epoch

    from mlic.engine.loop import NonFiniteLossError
    from mlic.models import build_model

    model = build_model("seed_cnn", 3, widths=[4, 8, 8, 8], hidden=8)
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    batches = [b for k in range(25) for b in _batches(1, nan_at=0 if k >= 2 else None)]
    with pytest.raises(NonFiniteLossError, match="non-finite losses in a row"):
        run_epoch(model, batches, optimizer, sync_free=True, max_bad_steps=5)

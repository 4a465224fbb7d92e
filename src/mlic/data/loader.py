"""The DataLoader factory: seeding, workers and batching in one place."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mlic.runtime.cpu import default_num_workers
from mlic.runtime.seeding import seed_worker


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int = -1,
    seed: int = 0,
    pin_memory: bool = False,
    sampler: Sampler | None = None,
    cached: bool = False,
) -> DataLoader:
    """A seeded DataLoader: the same seed gives the same order and the same augmentations.

    Training passes an ``EpochSampler`` (sharded, resumable); ``shuffle`` is then ignored. ``cached``: the
    dataset reads the decoded-image cache, which changes how many workers pay off (``default_num_workers``).
    """
    workers = default_num_workers(cached) if num_workers < 0 else num_workers
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=getattr(dataset, "collate", _plain_collate),
        generator=generator,
        worker_init_fn=seed_worker if workers > 0 else None,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
    )


def _plain_collate(samples: list):
    """For datasets that bring no ``collate`` of their own: the samples as a list."""
    return samples

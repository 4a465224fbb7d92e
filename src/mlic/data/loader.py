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


def build_stream_loader(stream, *, num_workers: int = -1, seed: int = 0, pin_memory: bool = False):
    """A DataLoader over a ``ShardStream``, which builds whole batches in its workers (``batch_size=None``).

    Workers are not kept between epochs: each epoch's workers must start from the stream's new position
    (epoch, steps done), which a kept worker's copy of the stream would not see. The loader has its own
    generator, as ``build_loader``'s: without one, each epoch's start would draw from the global RNG and so
    change the dropout of the steps that follow.
    """
    from mlic.data.streaming import StreamLoader

    workers = default_num_workers(False) if num_workers < 0 else num_workers
    loader = DataLoader(stream, batch_size=None, num_workers=workers, worker_init_fn=seed_worker if workers else None,
                        pin_memory=pin_memory, collate_fn=_plain_collate,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return StreamLoader(loader)


def _plain_collate(samples: list):
    """For datasets that bring no ``collate`` of their own: the samples as a list."""
    return samples

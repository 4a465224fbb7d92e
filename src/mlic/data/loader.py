"""From a label file to a DataLoader: reading, existence checks, seeding and workers in one place."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from mlic.data.dataset import check_files_exist, collate
from mlic.data.readers import read_records
from mlic.data.records import DataError, Record
from mlic.engine.runtime import default_num_workers, seed_worker


def load_records(
    path: str | Path,
    *,
    fmt: str = "auto",
    image_root: str | Path | None = None,
    label_delimiter: str | None = None,
    check_files: bool = True,
) -> list[Record]:
    """Read annotation file or folder ``path``; fail early, naming file and line, on bad rows or missing images."""
    options = {"image_root": image_root, "label_delimiter": label_delimiter}
    records = read_records(path, fmt, **{k: v for k, v in options.items() if v is not None})
    if not records:
        raise DataError(f"{path}: no images listed")
    if check_files:
        check_files_exist(records)
    return records


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int = -1,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A seeded DataLoader: the same seed gives the same order and the same augmentations."""
    workers = default_num_workers() if num_workers < 0 else num_workers
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate,
        generator=generator,
        worker_init_fn=seed_worker if workers > 0 else None,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        drop_last=drop_last,
    )


def class_counts(records: Sequence[Record], class_names: Sequence[str]) -> dict[str, int]:
    counts = dict.fromkeys(class_names, 0)
    for r in records:
        for name in r.positives:
            if name in counts:
                counts[name] += 1
    return counts

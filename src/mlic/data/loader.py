"""From a label file to a DataLoader: reading, existence checks, seeding and workers in one place."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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
    on_warning: Callable[[str], None] | None = None,
) -> list[Record]:
    """Read annotation file or folder ``path``; fail early, naming file and line, on bad rows or missing images.

    An image listed more than once is merged into one record (see ``merge_duplicates``) and reported through
    ``on_warning`` (default: printed to stderr), since a duplicate silently doubles that image's weight.
    """
    options = {"image_root": image_root, "label_delimiter": label_delimiter}
    records = read_records(path, fmt, **{k: v for k, v in options.items() if v is not None})
    if not records:
        raise DataError(f"{path}: no images listed")
    records, duplicates = merge_duplicates(records)
    if duplicates:
        (on_warning or _print_warning)(_duplicates_message(path, duplicates))
    if check_files:
        check_files_exist(records)
    return records


def merge_duplicates(records: Sequence[Record]) -> tuple[list[Record], list[tuple[str, list[str]]]]:
    """One record per image path (compared after normalising "a/./b" and "a/../a/b"), in first-seen order.

    Returns the records and, per duplicated path, the sources that listed it. Merging is a union with a
    fixed precedence: positive in any row wins; otherwise unknown in any row wins over negative, because a
    row that did not annotate a class cannot vouch for its absence. The first row's source is kept.
    """
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(os.path.normpath(record.path), []).append(record)
    merged = [group[0] if len(group) == 1 else _merge(group) for group in groups.values()]
    duplicates = [(str(group[0].path), [r.source for r in group]) for group in groups.values() if len(group) > 1]
    return merged, duplicates


def unknown_labels(records: Sequence[Record], class_names: Sequence[str]) -> list[str]:
    """Sorted labels that ``records`` mention but the vocabulary lacks (e.g. val/test classes unseen in training).

    The model has no output for them, so they are silently ignored by the metrics; report them instead.
    """
    known = set(class_names)
    return sorted({name for record in records for name in record.mentioned_labels()} - known)


def _merge(group: list[Record]) -> Record:
    """The records of one image as one; see merge_duplicates for the precedence."""
    positives = tuple(dict.fromkeys(name for r in group for name in r.positives))
    mentioned = dict.fromkeys(name for r in group for name in sorted(r.mentioned_labels()))
    unknown_somewhere = {name for r in group for name in r.unknown}
    if all(r.negatives is None for r in group):
        unknown = tuple(name for name in mentioned if name in unknown_somewhere and name not in positives)
        return Record(path=group[0].path, positives=positives, unknown=unknown, source=group[0].source)
    # Partially labelled rows: a class is a verified negative only if every row says it is absent.
    negatives = set(mentioned) - set(positives) - unknown_somewhere
    for record in group:
        if record.negatives is not None:
            negatives &= set(record.negatives)
    return Record(
        path=group[0].path,
        positives=positives,
        negatives=tuple(name for name in mentioned if name in negatives),
        # informational (encode ignores it when negatives is a tuple), but keeps every class in the vocabulary
        unknown=tuple(name for name in mentioned if name not in negatives and name not in positives),
        source=group[0].source,
    )


def _duplicates_message(path: str | Path, duplicates: list[tuple[str, list[str]]], limit: int = 10) -> str:
    lines = [
        f"{path}: {len(duplicates)} image(s) listed more than once, merged into one record each "
        "(positive in any row wins, then unknown over negative):"
    ]
    lines += [f"  {image}: {', '.join(sources)}" for image, sources in duplicates[:limit]]
    if len(duplicates) > limit:
        lines.append(f"  ... and {len(duplicates) - limit} more")
    return "\n".join(lines)


def _print_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int = -1,
    seed: int = 0,
    drop_last: bool = False,
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

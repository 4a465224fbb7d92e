"""Label file -> checked records: read, merge duplicate rows, check the images are there.

What every command that reads labelled data does first (train, evaluate, report, data cache), so each
gets the same errors, naming the label file and line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mlic.data.readers import read_records
from mlic.data.records import DataError, Record
from mlic.data.table import RecordTable, as_table


def load_records(
    path: str | Path,
    *,
    fmt: str = "auto",
    image_root: str | Path | None = None,
    label_delimiter: str | None = None,
    check_files: bool = True,
    on_warning: Callable[[str], None] | None = None,
) -> RecordTable:
    """Read annotation file or folder ``path``; fail early, naming file and line, on bad rows or missing images.

    An image listed more than once is merged into one record (see ``merge_duplicates``) and reported through
    ``on_warning`` (default: printed to stderr), since a duplicate silently doubles that image's weight.
    The records come back as one ``RecordTable`` (flat arrays, labels as class ids), whatever the format.
    """
    options = {"image_root": image_root, "label_delimiter": label_delimiter}
    records = read_records(path, fmt, **{k: v for k, v in options.items() if v is not None})
    if not len(records):
        raise DataError(f"{path}: no images listed")
    table = as_table(records)
    if not table.distinct and _has_duplicate_paths(table):  # rare: the merge works record by record
        merged, duplicates = merge_duplicates(list(table))
        (on_warning or _print_warning)(_duplicates_message(path, duplicates))
        table = as_table(merged)
    if check_files:
        check_files_exist(table)
    return table


def _has_duplicate_paths(table: RecordTable) -> bool:
    seen: set[str] = set()
    for path in table.paths:
        key = os.path.normpath(path)
        if key in seen:
            return True
        seen.add(key)
    return False


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
    if isinstance(records, RecordTable):
        return sorted(set(records.labels.mentioned()) - known)
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


def check_files_exist(records: Sequence[Record], limit: int = 10) -> None:
    """Fail before training starts if image files are missing, naming the label file and line."""
    table = as_table(records)
    missing = [i for i, path in enumerate(table.paths) if not os.path.isfile(path)]
    if missing:
        missing = [table[i] for i in missing]
        shown = "\n".join(f"  {r.source or '?'}: image file not found: {r.path}" for r in missing[:limit])
        more = f"\n  ... and {len(missing) - limit} more" if len(missing) > limit else ""
        raise DataError(f"{len(missing)} image file(s) not found\n{shown}{more}")

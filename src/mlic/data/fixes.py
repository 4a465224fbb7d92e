"""Applying a label audit: the suggested changes of ``audit.csv`` rows at or above a score, to the records."""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlic.data.records import DataError, Record

AUDIT_COLUMNS = ("image", "label", "given", "suggested", "score")
WRITABLE = ("csv", "tsv", "jsonl")


def writable_format(fmt: str, data: str | Path) -> str:
    """The input's format when a corrected file can be written in it, else a DataError asking for --to."""
    if fmt in WRITABLE:
        return fmt
    raise DataError(f"{data}: format {fmt!r} cannot be written back; pass --to csv, --to tsv or --to jsonl")


def read_audit(path: Path) -> list[dict[str, Any]]:
    """The rows of an ``audit.csv``, checked; a bad one is an error naming its line."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in AUDIT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}:1: missing column(s) {', '.join(missing)}; an audit.csv has "
                            f"{', '.join(AUDIT_COLUMNS)}")  # fmt: skip
        rows = []
        for line, raw in enumerate(reader, start=2):
            try:
                given, suggested, score = int(raw["given"]), int(raw["suggested"]), float(raw["score"])
            except (TypeError, ValueError):
                raise DataError(f"{path}:{line}: given and suggested must be 0 or 1, score a number") from None
            if {given, suggested} != {0, 1} or not 0 <= score <= 1:
                raise DataError(f"{path}:{line}: given/suggested must be 0 and 1 (in either order), score in [0, 1]")
            rows.append({"image": raw["image"], "label": raw["label"], "given": given, "suggested": suggested,
                         "score": score, "line": line})  # fmt: skip
    return rows


def apply_fixes(
    records: Sequence[Record], rows: Sequence[dict[str, Any]], accept_above: float, base: Path | None = None
) -> tuple[list[Record], dict[str, int]]:
    """The records with every row scoring at least ``accept_above`` applied, and counts of what changed.

    A missing label (suggested 1) becomes a positive; a spurious one (suggested 0) stops being one, and in a
    partially labelled record becomes a verified negative. A row whose image is not in the records, or whose
    given value is not what the records say (an audit of another version of the file), is an error.
    A relative image path in a row is taken from ``base`` (where the readers resolve the data's paths);
    ``mlic data audit`` writes them as the readers resolved them.
    """
    out = list(records)
    where = {os.path.abspath(r.path): i for i, r in enumerate(out)}
    added = removed = accepted = 0
    for row in rows:
        if row["score"] < accept_above:
            continue
        accepted += 1
        i = where.get(os.path.abspath(Path(base or ".") / row["image"]))
        if i is None:
            raise DataError(f"audit line {row['line']}: image {row['image']} is not in the data")
        record, label = out[i], row["label"]
        if int(label in record.positives) != row["given"]:
            has = int(label in record.positives)
            raise DataError(f"audit line {row['line']}: {row['image']} has {label!r} = {has}, the audit says "
                            f"{row['given']} (an audit of another version of the labels?)")  # fmt: skip
        out[i] = _changed(record, label, positive=row["suggested"] == 1)
        added, removed = added + (row["suggested"] == 1), removed + (row["suggested"] == 0)
    return out, {"added": added, "removed": removed, "accepted": accepted}


def _changed(record: Record, label: str, *, positive: bool) -> Record:
    positives = [p for p in record.positives if p != label] + ([label] if positive else [])
    unknown = tuple(u for u in record.unknown if u != label)
    negatives = record.negatives
    if negatives is not None:
        negatives = tuple(n for n in negatives if n != label) + (() if positive else (label,))
    return dataclasses.replace(record, positives=tuple(sorted(positives)), negatives=negatives, unknown=unknown)

"""The one record type every annotation reader yields.

A reader's only job is to turn its format into these; decoding pixels and encoding
targets happen elsewhere, so every format gets the same downstream behaviour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mlic.errors import UserError


class DataError(UserError, ValueError):
    """Bad user data; the message names the file (and line, where there is one)."""


@dataclass(frozen=True)
class Record:
    """One image and what is known about its labels.

    ``negatives`` is ``None`` for fully labelled formats: every class that is not a positive
    (and not listed in ``unknown``) is a known negative. A tuple means only those classes were
    verified absent and every other non-positive class is unknown (Open Images style).
    """

    path: Path
    positives: tuple[str, ...]
    negatives: tuple[str, ...] | None = None
    unknown: tuple[str, ...] = ()
    source: str = ""  # "labels.csv:12", so errors can name the file and line

    def mentioned_labels(self) -> set[str]:
        """Every class name this record says anything about (for building the vocabulary)."""
        names = set(self.positives) | set(self.unknown)
        if self.negatives is not None:
            names |= set(self.negatives)
        return names


# C0 and C1 control characters: NUL, tab, newlines, escape... None of them belongs in a class name.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_label(name: str, where: str) -> str:
    """A class name as every reader hands it on: stripped, not empty, without control characters (a NUL or a
    newline in a label breaks the files mlic writes, and makes two classes print alike)."""
    label = name.strip()
    if not label:
        raise DataError(f"{where}: empty class name")
    if found := _CONTROL.search(label):
        raise DataError(f"{where}: class name {label!r} holds the control character {found.group()!r}")
    return label


class RowErrors:
    """Where a reader's row-level errors go: raised at once (the default: nothing trains on a label file with
    broken rows), or collected, so ``mlic data inspect`` can report every one of them and not just the first."""

    def __init__(self, collect: bool = False) -> None:
        self.collect = collect
        self.errors: list[DataError] = []

    def add(self, error: DataError) -> None:
        if not self.collect:
            raise error
        self.errors.append(error)

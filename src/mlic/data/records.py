"""The one record type every annotation reader yields.

A reader's only job is to turn its format into these; decoding pixels and encoding
targets happen elsewhere, so every format gets the same downstream behaviour.
"""

from __future__ import annotations

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

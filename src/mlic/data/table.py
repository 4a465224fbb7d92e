"""Records at scale: one ``RecordTable`` holds a data set's paths, sources and labels in a few flat arrays.

A list of ``Record`` objects costs about a kilobyte an image in Python objects; Open Images' 9 million would need
gigabytes before any work, and DataLoader workers, which touch every object's reference count, would copy it
all. Here paths and sources are UTF-8 bytes in one buffer with offsets (``StringColumn``), and labels are class
ids where the data has them (``mlic.data.labels.LabelTable``): memory grows with the number of labels, not with
images x classes, and a forked worker shares the arrays untouched.

A ``RecordTable`` is still a sequence of ``Record``: code that reads a few records (a report, an error message)
gets them one at a time, built on the fly; code that reads all of them uses the arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlic.data.labels import LabelTable
from mlic.data.records import Record


@dataclass(frozen=True)
class StringColumn:
    """Strings as UTF-8 bytes in one buffer: string i is ``data[offsets[i]:offsets[i + 1]]``."""

    data: np.ndarray  # (total bytes,) uint8
    offsets: np.ndarray  # (N + 1,) int64

    @classmethod
    def from_strings(cls, strings: Iterable[str]) -> StringColumn:
        encoded = [s.encode("utf-8", "surrogateescape") for s in strings]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        data = np.frombuffer(b"".join(encoded), np.uint8) if encoded else np.zeros(0, np.uint8)
        return cls(data, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.data[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8", "surrogateescape")

    def __iter__(self) -> Iterator[str]:
        raw = self.data.tobytes()
        for start, end in zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist(), strict=True):
            yield raw[start:end].decode("utf-8", "surrogateescape")

    def take(self, rows: np.ndarray) -> StringColumn:
        """The strings at ``rows``, in that order, without decoding them."""
        rows = np.asarray(rows, np.int64)
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return StringColumn(self.data[gather], offsets)

    @classmethod
    def concat(cls, columns: Sequence[StringColumn]) -> StringColumn:
        shifts = np.cumsum([0] + [c.offsets[-1] for c in columns[:-1]])
        offsets = np.concatenate([[0], *(c.offsets[1:] + s for c, s in zip(columns, shifts, strict=True))])
        return cls(np.concatenate([c.data for c in columns]), offsets.astype(np.int64))


class RecordTable(Sequence[Record]):
    """Images (paths), where each was listed (sources) and their labels, as flat arrays; a ``Sequence[Record]``."""

    def __init__(
        self, paths: StringColumn, sources: StringColumn, labels: LabelTable, *, distinct: bool = False
    ) -> None:
        """``distinct``: the reader guarantees one record per path (no duplicate check needed)."""
        if not len(paths) == len(sources) == len(labels):
            raise ValueError(f"{len(paths)} paths, {len(sources)} sources and {len(labels)} label rows differ")
        self.paths, self.sources, self.labels, self.distinct = paths, sources, labels, distinct

    @classmethod
    def from_records(cls, records: Sequence[Record], class_names: Sequence[str] | None = None) -> RecordTable:
        """The table of ``records`` (labels over ``class_names``, default: every label they mention, sorted)."""
        if isinstance(records, RecordTable) and class_names is None:
            return records
        paths = StringColumn.from_strings(str(r.path) for r in records)
        sources = StringColumn.from_strings(r.source for r in records)
        return cls(paths, sources, LabelTable.from_records(records, class_names))

    @property
    def class_names(self) -> list[str]:
        return list(self.labels.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):  # int -> Record, slice -> RecordTable
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        if i < 0:
            i += len(self)
        positives, negatives, unknown = self.labels.names_of(i)
        return Record(Path(self.paths[i]), positives, negatives, unknown, self.sources[i])

    def __iter__(self) -> Iterator[Record]:
        for i in range(len(self)):
            yield self[i]

    def take(self, rows: np.ndarray) -> RecordTable:
        """The records at ``rows`` (a split, a shard), in that order."""
        rows = np.asarray(rows, np.int64)
        unique = self.distinct and len(np.unique(rows)) == len(rows)
        return RecordTable(self.paths.take(rows), self.sources.take(rows), self.labels.take(rows), distinct=unique)

    def with_classes(self, class_names: Sequence[str]) -> RecordTable:
        """The same records, labels over ``class_names`` (labels outside it dropped: the model has no output)."""
        return RecordTable(self.paths, self.sources, self.labels.remap(class_names), distinct=self.distinct)

    @classmethod
    def concat(cls, tables: Sequence[RecordTable]) -> RecordTable:
        names = sorted({n for t in tables for n in t.class_names})
        return cls(
            StringColumn.concat([t.paths for t in tables]),
            StringColumn.concat([t.sources for t in tables]),
            LabelTable.concat([t.labels.remap(names) for t in tables]),
        )


def as_table(records: Sequence[Record], class_names: Sequence[str] | None = None) -> RecordTable:
    """``records`` as a table (labels over ``class_names`` when given); a table is passed on (re-mapped)."""
    if isinstance(records, RecordTable):
        return records if class_names is None else records.with_classes(class_names)
    return RecordTable.from_records(records, class_names)

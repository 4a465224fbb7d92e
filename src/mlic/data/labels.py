"""Class names <-> indices, multi-hot targets and known-label masks; ``LabelTable`` holds a whole data set's
labels as class ids (sparse), from which dense targets and masks are built a batch at a time."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from mlic.data.records import Record


def build_vocabulary(records: Iterable[Record]) -> list[str]:
    """Sorted class names seen in ``records``; sorted so the same data always gives the same indices."""
    if hasattr(records, "labels") and isinstance(records.labels, LabelTable):  # a RecordTable: from its ids
        return records.labels.mentioned()
    names: set[str] = set()
    for record in records:
        names |= record.mentioned_labels()
    return sorted(names)


def encode(record: Record, class_index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Multi-hot target and known-mask, both float32 of shape (C,).

    A positive outside the vocabulary (a label seen only at evaluation time) is dropped: the
    model has no output for it, so it can be neither right nor wrong.
    """
    num_classes = len(class_index)
    target = np.zeros(num_classes, dtype=np.float32)
    for name in record.positives:
        if name in class_index:
            target[class_index[name]] = 1.0
    if record.negatives is None:
        mask = np.ones(num_classes, dtype=np.float32)
        for name in record.unknown:
            if name in class_index:
                mask[class_index[name]] = 0.0
    else:
        mask = np.zeros(num_classes, dtype=np.float32)
        for name in (*record.positives, *record.negatives):
            if name in class_index:
                mask[class_index[name]] = 1.0
    return target, mask


def decode(row: Sequence[bool] | np.ndarray, class_names: Sequence[str]) -> list[str]:
    """Class names whose entry in ``row`` is true, in vocabulary order."""
    return [name for name, on in zip(class_names, row, strict=True) if on]


@dataclass(frozen=True)
class Ragged:
    """One list of class ids per image, flat: image i's ids are ``ids[indptr[i]:indptr[i + 1]]`` (CSR)."""

    indptr: np.ndarray  # (N + 1,) int64
    ids: np.ndarray  # (total,) int32

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int]]) -> Ragged:
        indptr = np.zeros(len(lists) + 1, np.int64)
        np.cumsum([len(x) for x in lists], out=indptr[1:])
        ids = np.fromiter((i for x in lists for i in x), np.int32, count=int(indptr[-1]))
        return cls(indptr, ids)

    @classmethod
    def empty(cls, n: int) -> Ragged:
        return cls(np.zeros(n + 1, np.int64), np.zeros(0, np.int32))

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def row(self, i: int) -> np.ndarray:
        return self.ids[self.indptr[i] : self.indptr[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def owners(self) -> np.ndarray:
        """(total,) the image each id belongs to."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths())

    def take(self, rows: np.ndarray) -> Ragged:
        rows = np.asarray(rows, np.int64)
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts  # only these rows: a batch must not cost O(N)
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=indptr[1:])
        gather = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return Ragged(indptr, self.ids[gather])

    def mapped(self, new_ids: np.ndarray) -> Ragged:
        """Ids translated through ``new_ids`` (old id -> new id, -1 = drop)."""
        translated = new_ids[self.ids] if len(self.ids) else self.ids
        keep = translated >= 0
        counts = np.bincount(self.owners()[keep], minlength=len(self)) if len(self.ids) else self.lengths()
        indptr = np.zeros(len(self) + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        return Ragged(indptr, translated[keep].astype(np.int32))

    @classmethod
    def concat(cls, parts: Sequence[Ragged]) -> Ragged:
        shifts = np.cumsum([0] + [p.indptr[-1] for p in parts[:-1]])
        indptr = np.concatenate([[0], *(p.indptr[1:] + s for p, s in zip(parts, shifts, strict=True))])
        return cls(indptr.astype(np.int64), np.concatenate([p.ids for p in parts]).astype(np.int32))


@dataclass(frozen=True)
class LabelTable:
    """What is known about N images over C classes, stored as class ids where the data has them.

    For a fully labelled image (``partial[i]`` False) every class that is not a positive is a known negative,
    except those listed in ``unknown``; for a partially labelled one (Open Images) only its positives and its
    verified ``negatives`` are known. Dense targets and masks exist only per batch (``dense``), so memory
    grows with the number of labels, never with images x classes.
    """

    class_names: tuple[str, ...]
    positives: Ragged
    negatives: Ragged  # verified absent; used where partial
    unknown: Ragged  # not annotated; used where not partial
    partial: np.ndarray  # (N,) bool

    def __len__(self) -> int:
        return len(self.partial)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_records(cls, records: Iterable[Record], class_names: Sequence[str] | None = None) -> LabelTable:
        records = list(records)
        names = list(class_names) if class_names is not None else build_vocabulary(records)
        index = {name: i for i, name in enumerate(names)}

        def ids(labels) -> list[int]:
            return [index[n] for n in labels if n in index]

        return cls(
            tuple(names),
            Ragged.from_lists([ids(r.positives) for r in records]),
            Ragged.from_lists([ids(r.negatives or ()) for r in records]),
            Ragged.from_lists([ids(r.unknown) if r.negatives is None else [] for r in records]),
            np.array([r.negatives is not None for r in records], dtype=bool),
        )

    def dense(self, rows: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, C) float32 multi-hot targets and known-masks of ``rows``, built now (a batch, not the set)."""
        rows = np.asarray(rows, np.int64)
        b, c = len(rows), self.num_classes
        targets = np.zeros((b, c), np.float32)
        masks = np.repeat((~self.partial[rows]).astype(np.float32)[:, None], c, axis=1)
        # positives and verified negatives are known; then "unknown" wins, as in ``encode``: a label marked unknown
        # is ignored even when the row also lists it (what hides behind an unknown must not matter)
        for ragged, array, value in (
            (self.positives, targets, 1.0),
            (self.positives, masks, 1.0),
            (self.negatives, masks, 1.0),
            (self.unknown, masks, 0.0),
        ):
            part = ragged.take(rows)
            array[part.owners(), part.ids] = value
        return targets, masks

    def known(self, rows: Sequence[int] | np.ndarray, cols: Sequence[int] | np.ndarray) -> np.ndarray:
        """(Q,) bool: whether cell (rows[q], cols[q]) is known, by the rules of ``dense``, without a dense row:
        costs the labels of those images, not Q x C."""
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        asked = np.arange(len(rows), dtype=np.int64) * self.num_classes + cols

        def listed(ragged: Ragged) -> np.ndarray:
            part = ragged.take(rows)
            return np.isin(asked, part.owners() * self.num_classes + part.ids)

        named = listed(self.positives) | listed(self.negatives)
        return np.where(self.partial[rows], named, True) & ~listed(self.unknown)

    def names_of(self, i: int) -> tuple[tuple[str, ...], tuple[str, ...] | None, tuple[str, ...]]:
        """(positives, negatives or None when fully labelled, unknown) of image ``i`` as class names."""
        names = self.class_names
        pos = tuple(names[j] for j in self.positives.row(i))
        if self.partial[i]:
            return pos, tuple(names[j] for j in self.negatives.row(i)), ()
        return pos, None, tuple(names[j] for j in self.unknown.row(i))

    def mentioned(self) -> list[str]:
        """Sorted names of the classes these images say anything about (positive, negative, unknown)."""
        ids = np.concatenate([self.positives.ids, self.negatives.ids, self.unknown.ids])
        return sorted(self.class_names[i] for i in np.unique(ids))

    def positive_counts(self) -> np.ndarray:
        """(C,) images in which each class is a positive."""
        return np.bincount(self.positives.ids, minlength=self.num_classes).astype(np.int64)

    def known_counts(self) -> np.ndarray:
        """(C,) images in which each class is known (positive or negative)."""
        full = int((~self.partial).sum())
        unknown_full = self.unknown.take(np.flatnonzero(~self.partial)).ids
        partial = np.flatnonzero(self.partial)
        known = np.full(self.num_classes, full, np.int64) - np.bincount(unknown_full, minlength=self.num_classes)
        known += np.bincount(self.positives.take(partial).ids, minlength=self.num_classes)
        known += np.bincount(self.negatives.take(partial).ids, minlength=self.num_classes)
        return known

    def take(self, rows: np.ndarray) -> LabelTable:
        rows = np.asarray(rows, np.int64)
        return LabelTable(self.class_names, self.positives.take(rows), self.negatives.take(rows),
                          self.unknown.take(rows), self.partial[rows])  # fmt: skip

    def remap(self, class_names: Sequence[str]) -> LabelTable:
        """The same labels over ``class_names``; classes outside it are dropped."""
        if tuple(class_names) == self.class_names:
            return self
        index = {name: i for i, name in enumerate(class_names)}
        new_ids = np.array([index.get(n, -1) for n in self.class_names] or [-1], np.int64)
        return LabelTable(tuple(class_names), self.positives.mapped(new_ids), self.negatives.mapped(new_ids),
                          self.unknown.mapped(new_ids), self.partial)  # fmt: skip

    @classmethod
    def concat(cls, tables: Sequence[LabelTable]) -> LabelTable:
        names = tables[0].class_names
        if any(t.class_names != names for t in tables):
            raise ValueError("label tables to concatenate must share their classes")
        return cls(names, *(Ragged.concat([getattr(t, k) for t in tables]) for k in ("positives", "negatives",
                   "unknown")), np.concatenate([t.partial for t in tables]))  # fmt: skip

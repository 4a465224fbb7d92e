"""Class names <-> indices, multi-hot targets and known-label masks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from mlic.data.records import Record


def build_vocabulary(records: Iterable[Record]) -> list[str]:
    """Sorted class names seen in ``records``; sorted so the same data always gives the same indices."""
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

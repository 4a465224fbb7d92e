"""Deterministic hold-out splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlic.data.records import Record


def holdout_split(records: Sequence[Record], fraction: float, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """Split off ``fraction`` of the records as validation, the same way for the same seed and data.

    The permutation is keyed by the seed only (not by any global RNG), so a resumed or repeated run
    validates on exactly the same images.
    """
    n = len(records)
    n_val = int(round(n * fraction))
    if fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return train, val

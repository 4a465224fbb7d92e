"""Label noise injected on purpose, to measure a label audit: which cells were changed is known exactly."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from mlic.data.labels import build_vocabulary
from mlic.data.records import Record


@dataclass(frozen=True)
class InjectedNoise:
    removed: frozenset[tuple[str, str]]  # (image path, label): true positives given as negatives
    added: frozenset[tuple[str, str]]  # true negatives given as positives
    unknown: frozenset[tuple[str, str]]  # cells marked unknown (whatever they were)

    @property
    def wrong(self) -> frozenset[tuple[str, str]]:
        return self.removed | self.added


def inject_label_noise(
    records: Sequence[Record], *, remove: float = 0.05, add: float = 0.02, unknown: float = 0.05, seed: int = 0
) -> tuple[list[Record], InjectedNoise]:
    """Fully labelled ``records`` with a share ``remove`` of their positive cells dropped, a share ``add`` of
    their negative cells made positive, then a share ``unknown`` of all cells marked unknown (an unknown cell
    is no longer an error: it is taken out of ``removed``/``added``)."""
    names = build_vocabulary(records)
    rng = np.random.default_rng(seed)
    out, removed, added, unknowns = [], set(), set(), set()
    for r in records:
        if r.negatives is not None or r.unknown:
            raise ValueError("inject_label_noise needs fully labelled records")
        positives = set(r.positives)
        given = set()
        for name in names:
            key = (str(r.path), name)
            if name in positives:
                if rng.random() < remove:
                    removed.add(key)
                else:
                    given.add(name)
            elif rng.random() < add:
                added.add(key)
                given.add(name)
        hidden = tuple(n for n in names if rng.random() < unknown)
        for name in hidden:
            unknowns.add((str(r.path), name))
            given.discard(name)
        out.append(replace(r, positives=tuple(sorted(given)), unknown=hidden))
    return out, InjectedNoise(frozenset(removed - unknowns), frozenset(added - unknowns), frozenset(unknowns))

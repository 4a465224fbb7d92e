"""Multi-label stratified train / val / test splits.

Method: iterative stratification (Sechidis, Tsoumakas and Vlahavas, "On the Stratification of
Multi-Label Data", ECML PKDD 2011), as implemented by the maintained ``iterstrat`` package
(``MultilabelStratifiedShuffleSplit``). It is applied twice: first the test split is taken off
everything, then the validation split off the rest. Each split then holds close to its share of every
label's examples, which a plain random split does not manage for rare labels.

Repair rule: iterative stratification can still leave a rare label out of a small split. Afterwards,
for every label with at least 3 examples (rarest label first) and every requested split missing it,
one example of that label is moved in from the split holding the most of it (the next one if
that split has no safe candidate). Among that split's
examples of the label, the record moved is the one whose other labels are least rare (largest
smallest total count; then fewest other labels; then earliest in the input), and never one whose
move would take the last example of another such label out of its split. Each move therefore removes
a gap and opens none, so the repair ends. A gap is left only when every candidate would open another
(pathological overlaps, e.g. four images each carrying three of four 3-example labels); with
realistic data every label with >= 3 examples is in every non-empty split.

Split sizes follow the labels: iterstrat fills each split's quota of every label and may trade image
count for it, most visibly on tiny data that mixes one- and two-label images.

Labels come from ``Record.positives`` only: an unknown or verified-negative label counts as absent.
Everything is keyed by ``seed`` alone (never the global RNG), so the same records and seed give the
same split, and records keep their input order within each split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mlic.data.records import Record

MIN_EXAMPLES = 3  # a label with at least this many examples must appear in every requested split


def stratified_split(
    records: Sequence[Record], val_fraction: float, test_fraction: float = 0.0, seed: int = 0
) -> tuple[list[Record], list[Record], list[Record]]:
    """Split ``records`` into (train, val, test), stratified on every label at once.

    A zero fraction gives an empty split. Each split with a non-zero fraction gets at least one
    record whenever there are enough records for train to keep one too (val is served before test).
    """
    if not (val_fraction >= 0.0 and test_fraction >= 0.0 and val_fraction + test_fraction < 1.0):  # NaN fails too
        raise ValueError(f"split fractions must be >= 0 and sum to < 1; got val={val_fraction}, test={test_fraction}")
    n = len(records)
    sizes = _target_sizes(n, val_fraction, test_fraction)
    labels = _label_matrix(records)
    assign = _iterative_assignment(labels, sizes, seed)
    requested = [k for k in range(3) if sizes[k] > 0]
    _fill_empty_splits(assign, labels, requested)
    _repair_missing_labels(assign, labels, requested)
    train, val, test = ([r for r, a in zip(records, assign, strict=True) if a == k] for k in range(3))
    return train, val, test


def holdout_split(records: Sequence[Record], fraction: float, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """Split off ``fraction`` of the records as validation, the same way for the same seed and data.

    Stratified (see the module docstring) and keyed by the seed only, so a resumed or repeated run
    validates on exactly the same images.
    """
    train, val, _ = stratified_split(records, fraction, 0.0, seed)
    return train, val


def split_report(
    splits: dict[str, Sequence[Record]],
    class_names: Sequence[str] | None = None,
    targets: Mapping[str, float] | None = None,
) -> str:
    """A per-label table of how each label's examples spread over the splits.

    Each split's column header carries its target fraction, the share every label's percentage in that
    split should sit close to: the requested fraction from ``targets`` where given, else the split's
    share of all images (the two differ when iterstrat traded image count for label balance).
    """
    if class_names is None:
        class_names = sorted({name for recs in splits.values() for r in recs for name in r.positives})
    names = list(splits)
    counts = {s: _positive_counts(splits[s], class_names) for s in names}
    n_total = sum(len(splits[s]) for s in names)
    label_width = max([len("label"), *(len(c) for c in class_names)])
    share = {s: (targets or {}).get(s, len(splits[s]) / max(n_total, 1)) for s in names}
    headers = {s: f"{s} (target {100.0 * share[s]:.1f}%)" for s in names}
    widths = {s: max(len(headers[s]), 14) for s in names}
    lines = [f"{'label':<{label_width}}  {'total':>7}  " + "  ".join(f"{headers[s]:>{widths[s]}}" for s in names)]
    for j, name in enumerate(class_names):
        total = sum(int(counts[s][j]) for s in names)
        cells = []
        for s in names:
            pct = 100.0 * counts[s][j] / total if total else 0.0
            cells.append(f"{f'{int(counts[s][j])} ({pct:5.1f}%)':>{widths[s]}}")
        lines.append(f"{name:<{label_width}}  {total:>7}  " + "  ".join(cells))
    lines.extend(f"{s}: {len(splits[s])} images" for s in names)
    return "\n".join(lines)


def _positive_counts(records: Sequence[Record], class_names: Sequence[str]) -> np.ndarray:
    """(C,) number of records in which each class is a positive."""
    index = {name: j for j, name in enumerate(class_names)}
    counts = np.zeros(len(class_names), dtype=np.int64)
    for r in records:
        for name in set(r.positives):
            if name in index:
                counts[index[name]] += 1
    return counts


def _target_sizes(n: int, val_fraction: float, test_fraction: float) -> list[int]:
    """[train, val, test] record counts: rounded, at least 1 per requested split, train keeps >= 1."""
    val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    while n - val - test < 1 and val + test > 0:
        # Too few records: shrink the larger held-out split, test first on a tie, so val survives longest.
        if test >= val:
            test -= 1
        else:
            val -= 1
    return [n - val - test, val, test]


def _label_matrix(records: Sequence[Record]) -> np.ndarray:
    """(N, C) bool matrix of positives, C >= 2 (iterstrat wants a multilabel-indicator target)."""
    names = sorted({name for r in records for name in r.positives})
    index = {name: j for j, name in enumerate(names)}
    labels = np.zeros((len(records), max(len(names), 2)), dtype=bool)  # padding columns stay all-zero
    for i, r in enumerate(records):
        labels[i, [index[name] for name in r.positives]] = True
    return labels


def _iterative_assignment(labels: np.ndarray, sizes: list[int], seed: int) -> np.ndarray:
    """(N,) split index per record (0 train, 1 val, 2 test): test off everything, then val off the rest."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit  # pulls in scikit-learn: ~1 s

    n = labels.shape[0]
    assign = np.zeros(n, dtype=np.int64)
    rng = np.random.RandomState(seed)  # private stream: the global RNG is never touched
    rest = np.arange(n)
    for k in (2, 1):  # test first, so val's share is rescaled to what is left
        # Iterstrat may miss the requested size by a few records; keep train non-empty whatever it did.
        want = min(sizes[k], len(rest) - 1)
        if want < 1:
            continue
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=want, random_state=rng)
        _, taken = next(splitter.split(np.zeros((len(rest), 1)), labels[rest]))
        assign[rest[taken]] = k
        rest = np.delete(rest, taken)
    return assign


def _split_counts(assign: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(3, C) number of examples of each label in each split."""
    return np.stack([labels[assign == k].sum(axis=0) for k in range(3)])


def _move_preference(i: int, labels: np.ndarray, totals: np.ndarray, skip: int | None) -> tuple:
    """Sort key: records whose other labels are least rare (then fewest, then earliest) move first."""
    others = [j for j in np.flatnonzero(labels[i]) if j != skip]
    rarest = min((int(totals[j]) for j in others), default=np.iinfo(np.int64).max)
    return (-rarest, len(others), i)


def _is_safe_move(i: int, donor_counts: np.ndarray, labels: np.ndarray, totals: np.ndarray) -> bool:
    """Moving record ``i`` out keeps at least one example of every >= 3-example label in the donor."""
    held = labels[i] & (totals >= MIN_EXAMPLES)
    return bool(np.all(donor_counts[held] >= 2))


def _fill_empty_splits(assign: np.ndarray, labels: np.ndarray, requested: list[int]) -> None:
    """Give each requested split that iterstrat left empty one record from the largest split."""
    totals = labels.sum(axis=0)
    for k in requested:
        sizes = np.bincount(assign, minlength=3)
        if sizes[k] > 0:
            continue
        donor = int(np.argmax(sizes))
        donor_counts = _split_counts(assign, labels)[donor]
        members = sorted(np.flatnonzero(assign == donor), key=lambda i: _move_preference(i, labels, totals, None))
        safe = [i for i in members if _is_safe_move(i, donor_counts, labels, totals)]
        assign[(safe or members)[0]] = k


def _repair_missing_labels(assign: np.ndarray, labels: np.ndarray, requested: list[int]) -> None:
    """Apply the repair rule of the module docstring until no safe move is left."""
    totals = labels.sum(axis=0)
    order = [int(j) for j in np.argsort(totals, kind="stable") if totals[j] >= MIN_EXAMPLES]  # rarest first
    counts = _split_counts(assign, labels)  # kept up to date move by move
    moved = True
    while moved:
        moved = False
        for j in order:
            for k in requested:
                if counts[k, j] > 0:
                    continue
                # Donors: splits with >= 2 of the label, the one holding most first (ties: train, val, test).
                for donor in sorted((d for d in range(3) if counts[d, j] >= 2), key=lambda d: (-counts[d, j], d)):
                    carriers = sorted(
                        np.flatnonzero((assign == donor) & labels[:, j]),
                        key=lambda i: _move_preference(i, labels, totals, j),
                    )
                    safe = [i for i in carriers if _is_safe_move(i, counts[donor], labels, totals)]
                    if safe:
                        assign[safe[0]] = k
                        counts[donor] -= labels[safe[0]]
                        counts[k] += labels[safe[0]]
                        moved = True
                        break

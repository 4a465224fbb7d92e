"""Multi-label stratified train / val / test splits, from a few hundred images to millions.

Small sets: iterative stratification (Sechidis, Tsoumakas and Vlahavas, "On the Stratification of Multi-Label
Data", ECML PKDD 2011), as implemented by the maintained ``iterstrat`` package
(``MultilabelStratifiedShuffleSplit``), applied twice: the test split is taken off everything, then the
validation split off the rest. Its cost grows with images x labels (20,000 images x 5,000 labels took six
minutes), so above ``ITERSTRAT_MAX_CELLS`` cells a sparse greedy pass of the same idea is used instead: labels are
visited once, rarest first, and a label's images not yet placed are shared out among the splits in proportion to
how many of that label each split still wants (then every label of the images placed is counted off the splits'
wants). It touches each (image, label) pair twice, so a million images x 20,000 labels split in seconds.
``benchmarks/scale.py --compare-splits`` measures both methods' per-label proportion error and time, from
which the switch point was chosen.

Repair rule, for both: for every label with at least 3 examples (rarest label first) and every requested split
missing it, one example of that label is moved in from the split holding the most of it (the next one if that
split has no safe candidate). Among that split's examples of the label, the record moved is the one whose other
labels are least rare (largest smallest total count; then fewest other labels; then earliest in the input),
and never one whose move would take the last example of another such label out of its split. Each move therefore
removes a gap and opens none, so the repair ends. A gap is left only when every candidate would open another
(pathological overlaps, e.g. four images each carrying three of four 3-example labels); with realistic data
every label with >= 3 examples is in every non-empty split.

Labels come from the positives only: an unknown or verified-negative label counts as absent. Everything is
keyed by ``seed`` alone (never the global RNG), so the same records and seed give the same split, and records
keep their input order within each split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mlic.data.labels import Ragged
from mlic.data.records import Record
from mlic.data.table import as_table

MIN_EXAMPLES = 3  # a label with at least this many examples must appear in every requested split
# Above this many image x label cells the greedy sparse pass replaces iterstrat (chosen by measurement: see
# the module docstring and README's "Training on Open Images").
ITERSTRAT_MAX_CELLS = 20_000_000


def stratified_split(
    records: Sequence[Record], val_fraction: float, test_fraction: float = 0.0, seed: int = 0, method: str = "auto"
) -> tuple[Sequence[Record], Sequence[Record], Sequence[Record]]:
    """Split ``records`` into (train, val, test), stratified on every label at once.

    A zero fraction gives an empty split. Each split with a non-zero fraction gets at least one record
    whenever there are enough records for train to keep one too (val is served before test). The parts are
    of the input's kind: lists of a list, tables of a ``RecordTable``. ``method``: auto, iterstrat or greedy.
    """
    if not (val_fraction >= 0.0 and test_fraction >= 0.0 and val_fraction + test_fraction < 1.0):  # NaN fails too
        raise ValueError(f"split fractions must be >= 0 and sum to < 1; got val={val_fraction}, test={test_fraction}")
    table = as_table(records)
    positives, num_classes = table.labels.positives, table.labels.num_classes
    assign = split_assignment(positives, num_classes, _target_sizes(len(table), val_fraction, test_fraction), seed,
                              method)  # fmt: skip
    parts = [np.flatnonzero(assign == k) for k in range(3)]
    if isinstance(records, list):
        return tuple([records[i] for i in rows] for rows in parts)
    return tuple(table.take(rows) for rows in parts)


def split_assignment(positives: Ragged, num_classes: int, sizes: list[int], seed: int, method: str = "auto"):
    """(N,) split index per image (0 train, 1 val, 2 test), repaired so rare labels reach every split."""
    if method not in ("auto", "iterstrat", "greedy"):
        raise ValueError(f"unknown split method {method!r}; choose one of: auto, iterstrat, greedy")
    small = len(positives) * max(num_classes, 2) <= ITERSTRAT_MAX_CELLS
    if method == "iterstrat" or (method == "auto" and small):
        assign = _iterative_assignment(_label_matrix_of(positives, num_classes), sizes, seed)
    else:
        assign = _greedy_assignment(positives, num_classes, sizes, seed)
    labels = _Incidence(positives, num_classes)
    requested = [k for k in range(3) if sizes[k] > 0]
    _fill_empty_splits(assign, labels, requested)
    _repair_missing_labels(assign, labels, requested)
    return assign


def fold_assignment(records: Sequence[Record], folds: int, seed: int = 0) -> np.ndarray:
    """(N,) fold index per record, ``folds`` folds of (nearly) equal size stratified on every label: the greedy
    pass of the module docstring with one target per fold (cross-validation needs no rare-label repair: a
    label missing from a fold is simply not audited there)."""
    if folds < 2:
        raise ValueError(f"need at least 2 folds, got {folds}")
    table = as_table(records)
    n = len(table)
    if n < folds:
        raise ValueError(f"{n} records cannot fill {folds} folds")
    sizes = [n // folds + (k < n % folds) for k in range(folds)]
    return _greedy_assignment(table.labels.positives, table.labels.num_classes, sizes, seed)


def holdout_split(records: Sequence[Record], fraction: float, seed: int = 0):
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
    share of all images (the two differ when the split traded image count for label balance).
    """
    if class_names is None:  # the labels with a positive somewhere: unknown or negative ones split nothing
        class_names = sorted({n for part in splits.values() for n in _positive_names(as_table(part))})
    names = list(splits)
    counts = {s: as_table(splits[s], class_names).labels.positive_counts() for s in names}
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


def _positive_names(table) -> list[str]:
    return [table.class_names[j] for j in np.unique(table.labels.positives.ids)]


def proportion_error(assign: np.ndarray, positives: Ragged, num_classes: int, fractions: Sequence[float]) -> float:
    """Mean over labels (with any example) and over held-out splits of |share of the label's examples - target|."""
    totals = np.bincount(positives.ids, minlength=num_classes)
    split_of = assign[positives.owners()]
    present = totals > 0
    errors = []
    for k, target in enumerate(fractions):
        if k == 0 or target == 0:
            continue
        counts = np.bincount(positives.ids[split_of == k], minlength=num_classes)
        errors.append(np.abs(counts[present] / totals[present] - target).mean())
    return float(np.mean(errors)) if errors else 0.0


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
    table = as_table(records)
    return _label_matrix_of(table.labels.positives, table.labels.num_classes)


def _label_matrix_of(positives: Ragged, num_classes: int) -> np.ndarray:
    labels = np.zeros((len(positives), max(num_classes, 2)), dtype=bool)  # padding columns stay all-zero
    labels[positives.owners(), positives.ids] = True
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


def _greedy_assignment(positives: Ragged, num_classes: int, sizes: list[int], seed: int) -> np.ndarray:
    """The sparse pass of the module docstring: labels rarest first, each one's unplaced images shared out."""
    n = len(positives)
    rng = np.random.default_rng(seed)
    rank = np.empty(n, np.int64)
    rank[rng.permutation(n)] = np.arange(n)  # a random order among otherwise equal images
    fractions = np.asarray(sizes, np.float64) / max(n, 1)
    totals = np.bincount(positives.ids, minlength=num_classes)
    wanted = fractions[:, None] * totals[None, :]  # (3, C) examples of each label each split still wants
    room = np.asarray(sizes, np.float64)  # images each split still wants
    assign = np.full(n, -1, np.int64)
    by_label = _Incidence(positives, num_classes)
    for j in np.argsort(totals, kind="stable"):
        if totals[j] == 0:
            continue
        images = by_label.images_of(j)
        images = images[assign[images] < 0]
        if not len(images):
            continue
        images = images[np.argsort(rank[images], kind="stable")]
        share = np.clip(wanted[:, j], 0, None) * (room > 0)
        counts = _apportion(len(images), share if share.sum() > 0 else np.clip(room, 0, None))
        split_of = np.repeat(np.arange(len(sizes)), counts)
        assign[images] = split_of
        placed = positives.take(images)
        # Sparse update: only the labels the placed images carry (a dense bincount per label would be C x C).
        np.subtract.at(wanted, (np.repeat(split_of, placed.lengths()), placed.ids), 1.0)
        room -= counts
    rest = np.flatnonzero(assign < 0)  # images without positives fill what room is left
    rest = rest[np.argsort(rank[rest], kind="stable")]
    assign[rest] = np.repeat(np.arange(len(sizes)), _apportion(len(rest), np.clip(room, 0, None)))
    return assign


def _apportion(n: int, weights: np.ndarray) -> np.ndarray:
    """``n`` split into whole counts proportional to ``weights`` (largest remainders; ties to the lower index)."""
    total = weights.sum()
    if total <= 0:
        return np.array([n] + [0] * (len(weights) - 1), np.int64)
    exact = n * weights / total
    counts = np.floor(exact).astype(np.int64)
    for k in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    return counts


class _Incidence:
    """Positives both ways: an image's labels (CSR) and a label's images (CSC), for the repair."""

    def __init__(self, positives: Ragged, num_classes: int) -> None:
        self.rows, self.num_classes = positives, num_classes
        owners = positives.owners()
        order = np.argsort(positives.ids, kind="stable")  # by label, images in input order
        self._images = owners[order]
        self._ptr = np.zeros(num_classes + 1, np.int64)
        np.cumsum(np.bincount(positives.ids, minlength=num_classes), out=self._ptr[1:])
        self.totals = np.diff(self._ptr)

    def images_of(self, j: int) -> np.ndarray:
        return self._images[self._ptr[j] : self._ptr[j + 1]]

    def labels_of(self, i: int) -> np.ndarray:
        return self.rows.row(i)

    def split_counts(self, assign: np.ndarray) -> np.ndarray:
        """(3, C) number of examples of each label in each split."""
        split_of = assign[self.rows.owners()]
        return np.stack([np.bincount(self.rows.ids[split_of == k], minlength=self.num_classes) for k in range(3)])


def _move_preference(i: int, labels: _Incidence, skip: int | None) -> tuple:
    """Sort key: records whose other labels are least rare (then fewest, then earliest) move first."""
    others = [j for j in labels.labels_of(i) if j != skip]
    rarest = min((int(labels.totals[j]) for j in others), default=np.iinfo(np.int64).max)
    return (-rarest, len(others), i)


def _is_safe_move(i: int, donor_counts: np.ndarray, labels: _Incidence) -> bool:
    """Moving record ``i`` out keeps at least one example of every >= 3-example label in the donor."""
    held = [j for j in labels.labels_of(i) if labels.totals[j] >= MIN_EXAMPLES]
    return bool(np.all(donor_counts[held] >= 2))


def _fill_empty_splits(assign: np.ndarray, labels: _Incidence, requested: list[int]) -> None:
    """Give each requested split that the assignment left empty one record from the largest split."""
    for k in requested:
        sizes = np.bincount(assign, minlength=3)
        if sizes[k] > 0:
            continue
        donor = int(np.argmax(sizes))
        donor_counts = labels.split_counts(assign)[donor]
        members = sorted(np.flatnonzero(assign == donor), key=lambda i: _move_preference(i, labels, None))
        safe = next((i for i in members if _is_safe_move(i, donor_counts, labels)), None)
        assign[members[0] if safe is None else safe] = k


def _repair_missing_labels(assign: np.ndarray, labels: _Incidence, requested: list[int]) -> None:
    """Apply the repair rule of the module docstring until no safe move is left."""
    totals = labels.totals
    order = [int(j) for j in np.argsort(totals, kind="stable") if totals[j] >= MIN_EXAMPLES]  # rarest first
    counts = labels.split_counts(assign)  # kept up to date move by move
    gaps = [j for j in order if any(counts[k, j] == 0 for k in requested)]
    moved = True
    while moved and gaps:
        moved = False
        for j in gaps:
            for k in requested:
                if counts[k, j] == 0 and _move_one(assign, labels, counts, j, k):
                    moved = True
        gaps = [j for j in gaps if any(counts[k, j] == 0 for k in requested)]


def _move_one(assign: np.ndarray, labels: _Incidence, counts: np.ndarray, j: int, k: int) -> bool:
    """Move one example of label ``j`` into split ``k`` from the best donor; whether one could be moved."""
    # Donors: splits with >= 2 of the label, the one holding most first (ties: train, val, test).
    carriers_all = labels.images_of(j)
    for donor in sorted((d for d in range(3) if counts[d, j] >= 2), key=lambda d: (-counts[d, j], d)):
        carriers = sorted(carriers_all[assign[carriers_all] == donor], key=lambda i: _move_preference(i, labels, j))
        safe = next((i for i in carriers if _is_safe_move(i, counts[donor], labels)), None)
        if safe is not None:
            assign[safe] = k
            held = labels.labels_of(safe)
            counts[donor, held] -= 1
            counts[k, held] += 1
            return True
    return False

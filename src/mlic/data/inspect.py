"""Dataset health check: label statistics, and every problem that would bite later, with its file name.

Run before training: a missing or truncated file otherwise surfaces as a crash in epoch 3, a decompression
bomb as an out-of-memory kill, and the same photo in train and test as a test score that is too good.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlic.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, read_image_size
from mlic.data.labels import build_vocabulary, encode
from mlic.data.records import DataError, Record
from mlic.runtime.console import progress_bar

ERROR, WARNING = "error", "warning"

# kind -> severity, in the order problems are listed. Errors break training or evaluation, or make either
# silently wrong; warnings can be intended (a background image without labels, a photo shared on purpose).
PROBLEM_KINDS = {
    "bad_row": ERROR,
    "missing_file": ERROR,
    "unreadable_image": ERROR,
    "truncated_image": ERROR,
    "huge_image": ERROR,
    "duplicate_row": ERROR,
    "unknown_label": ERROR,
    "duplicate_file": WARNING,
    "empty_labels": WARNING,
}
TOP_PAIRS = 10


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data; ``source`` is the record's "labels.csv:12"."""

    severity: str
    kind: str
    path: str
    source: str
    detail: str


@dataclass
class InspectReport:
    """What `inspect_dataset` found; `to_dict` gives the report.json content."""

    num_records: int
    num_images: int  # distinct image paths
    class_names: list[str]
    labels_per_image: dict[str, Any]  # min, mean, max, histogram[k] = records with k positive labels
    per_class: list[dict[str, Any]]  # name, positives, negatives, unknown (per encode()'s target and mask)
    top_pairs: list[dict[str, Any]]  # labels [a, b], count: the most frequent co-occurring pairs
    cooccurrence: list[list[int]]  # (C, C) records with both labels; the diagonal is each label's positives
    images_checked: bool  # False: files were only checked for existence (no decoding, no duplicate content)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "num_errors": len(self.errors), "num_warnings": len(self.warnings)}


def inspect_dataset(
    records: Sequence[Record],
    *,
    class_names: Sequence[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    check_images: bool = True,
    progress: bool = False,
    row_errors: Sequence[DataError] = (),
) -> InspectReport:
    """Label statistics and problems of ``records``.

    row_errors: the rows the reader could not turn into records (``mlic.data.records.RowErrors``), reported
        as ``bad_row`` errors beside every other problem.
    class_names: the expected vocabulary (e.g. a checkpoint's); labels outside it are ``unknown_label``
        errors and the statistics use its order. Default: every label in the data, sorted.
    check_images: read, hash and fully decode every distinct file (the slow part); otherwise only check
        that each file exists.
    """
    names = list(class_names) if class_names is not None else build_vocabulary(records)
    labels_per_image, per_class, cooc = _label_stats(records, names)
    duplicate_rows, unique = _duplicate_rows(records)
    problems = [
        *(Problem(ERROR, "bad_row", "", *_split_where(str(err))) for err in row_errors),
        *_label_problems(records, class_names),
        *duplicate_rows,
        *_file_problems(unique, max_pixels, check_images, progress),
    ]
    rank = {kind: idx for idx, kind in enumerate(PROBLEM_KINDS)}
    problems.sort(key=lambda p: rank[p.kind])  # stable: record order within a kind
    return InspectReport(
        num_records=len(records),
        num_images=len(unique),
        class_names=names,
        labels_per_image=labels_per_image,
        per_class=per_class,
        top_pairs=_top_pairs(names, cooc),
        cooccurrence=cooc.tolist(),
        images_checked=check_images,
        problems=problems,
    )


def _split_where(message: str) -> tuple[str, str]:
    """("labels.csv:12", "what is wrong") from a reader's "labels.csv:12: what is wrong"."""
    where, _, detail = message.partition(": ")
    return (where, detail) if detail else ("", message)


def _label_stats(
    records: Sequence[Record], names: list[str]
) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray]:
    """(labels per image, per-class counts, co-occurrence matrix), accumulated record by record.

    One record at a time so memory stays (C, C) however many images there are.
    """
    index = {name: idx for idx, name in enumerate(names)}
    positives = np.zeros(len(names), dtype=np.int64)
    unknown = np.zeros(len(names), dtype=np.int64)
    cooc = np.zeros((len(names), len(names)), dtype=np.int64)
    counts = [len(record.positives) for record in records]
    for record in records:
        target, mask = encode(record, index)
        positives += target.astype(np.int64)
        unknown += ((1 - mask) * (1 - target)).astype(np.int64)  # a positive is known even if also listed unknown
        hot = np.flatnonzero(target)
        cooc[np.ix_(hot, hot)] += 1
    histogram = np.bincount(counts).tolist() if counts else []
    labels_per_image = {
        "min": min(counts, default=0),
        "mean": float(np.mean(counts)) if counts else 0.0,
        "max": max(counts, default=0),
        "histogram": histogram,
    }
    per_class = [
        {
            "name": name,
            "positives": int(positives[idx]),
            "negatives": int(len(records) - positives[idx] - unknown[idx]),
            "unknown": int(unknown[idx]),
        }
        for idx, name in enumerate(names)
    ]
    return labels_per_image, per_class, cooc


def _top_pairs(names: list[str], cooc: np.ndarray, k: int = TOP_PAIRS) -> list[dict[str, Any]]:
    """The ``k`` label pairs most often on the same image; ties in vocabulary order."""
    rows, cols = np.triu_indices(len(names), 1)
    counts = cooc[rows, cols]
    best = sorted(np.flatnonzero(counts).tolist(), key=lambda i: (-counts[i], rows[i], cols[i]))[:k]
    return [{"labels": [names[rows[i]], names[cols[i]]], "count": int(counts[i])} for i in best]


def _problem(kind: str, record: Record, detail: str, path: str | None = None) -> Problem:
    return Problem(PROBLEM_KINDS[kind], kind, path or str(record.path), record.source, detail)


def _label_problems(records: Sequence[Record], class_names: Sequence[str] | None) -> list[Problem]:
    """Empty label sets, and labels outside the expected vocabulary (one problem per record)."""
    vocabulary = set(class_names) if class_names is not None else None
    problems = []
    for record in records:
        if not record.positives:
            problems.append(_problem("empty_labels", record, "no positive labels"))
        if vocabulary is not None:
            outside = sorted(record.mentioned_labels() - vocabulary)
            if outside:
                problems.append(_problem("unknown_label", record, f"not in the class list: {', '.join(outside)}"))
    return problems


def _duplicate_rows(records: Sequence[Record]) -> tuple[list[Problem], dict[str, Record]]:
    """Problems for every repeat of a path, and normalised path -> its first record."""
    unique: dict[str, Record] = {}
    problems = []
    for record in records:
        key = os.path.normpath(record.path)  # "a/./b.png" and "a/x/../b.png" are the same file
        first = unique.setdefault(key, record)
        if first is not record:
            same = "same labels" if first.mentioned_labels() == record.mentioned_labels() else "different labels"
            problems.append(_problem("duplicate_row", record, f"also listed at {first.source or '?'} ({same})"))
    return problems, unique


def _file_problems(unique: dict[str, Record], max_pixels: int, check_images: bool, progress: bool) -> list[Problem]:
    """Missing, unreadable, truncated and huge files, and equal content under different paths."""
    problems = []
    first_with: dict[str, str] = {}  # sha256 -> first path with that content
    for key, record in progress_bar(unique.items(), progress=progress, desc="inspect", unit="img", leave=False):
        digest, found = _check_file(Path(key), max_pixels, check_images)
        if found is not None:
            problems.append(_problem(found[0], record, found[1], key))
        if digest is not None:
            first = first_with.setdefault(digest, key)
            if first != key:
                problems.append(_problem("duplicate_file", record, f"same content as {first}", key))
    return problems


def _check_file(path: Path, max_pixels: int, check_images: bool) -> tuple[str | None, tuple[str, str] | None]:
    """(SHA-256 of the bytes or None, (kind, detail) of the problem or None)."""
    if not path.is_file():
        return None, ("missing_file", "no such file" if not path.exists() else "not a file")
    if not check_images:
        return None, None
    try:
        data = path.read_bytes()
    except OSError as err:
        return None, ("unreadable_image", f"cannot read ({err.strerror})")
    digest = hashlib.sha256(data).hexdigest()
    try:
        width, height = read_image_size(data)  # header only: refuse a bomb before decoding it
        if width * height > max_pixels:
            return digest, ("huge_image", f"{width}x{height} = {width * height:,} pixels, above {max_pixels:,}")
        decode_image(data, max_pixels=max_pixels)  # the full decode, as training would do it
    except ImageDecodeError as err:
        return digest, (_decode_kind(err), err.reason)
    return digest, None


def _decode_kind(err: ImageDecodeError) -> str:
    if err.kind == "too_large":  # e.g. Pillow refusing > 2x its own limit at open time
        return "huge_image"
    return "truncated_image" if "truncated" in err.reason.lower() else "unreadable_image"


def format_report(report: InspectReport, max_listed: int = 20) -> str:
    """Readable summary: sizes, labels per image, the per-class table, top pairs, then problems by kind."""
    stats = report.labels_per_image
    lines = [
        f"records: {report.num_records}   distinct images: {report.num_images}   classes: {len(report.class_names)}",
        f"labels per image: min {stats['min']}, mean {stats['mean']:.2f}, max {stats['max']}",
        "  " + "  ".join(f"{k}: {n}" for k, n in enumerate(stats["histogram"]) if n),
        "",
    ]
    width = max([5] + [len(c["name"]) for c in report.per_class]) + 2
    lines += [f"{'class':<{width}}{'positives':>11}{'negatives':>11}{'unknown':>11}", "-" * (width + 33)]
    lines += [
        f"{c['name']:<{width}}{c['positives']:>11}{c['negatives']:>11}{c['unknown']:>11}" for c in report.per_class
    ]
    if report.top_pairs:
        lines += ["", "most frequent label pairs:"]
        lines += [f"  {pair['count']:>6}  {' + '.join(pair['labels'])}" for pair in report.top_pairs]
    lines += ["", f"problems: {len(report.errors)} error(s), {len(report.warnings)} warning(s)"]
    if not report.images_checked:
        lines.append("  (image contents not checked: only that each file exists)")
    for kind in PROBLEM_KINDS:
        found = [p for p in report.problems if p.kind == kind]
        if not found:
            continue
        lines.append(f"  {PROBLEM_KINDS[kind]}: {kind} ({len(found)})")
        lines += [
            f"    {p.source or '-'}  {p.path}: {p.detail}" if p.path else f"    {p.source}: {p.detail}"
            for p in found[:max_listed]
        ]
        if len(found) > max_listed:
            lines.append(f"    ... and {len(found) - max_listed} more (see report.json)")
    return "\n".join(lines)

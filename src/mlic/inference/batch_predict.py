"""Prediction at scale: stream images through a predictor into CSV, JSON Lines, JSON or a table.

Rows are written as batches finish, so memory stays flat however many images there are, and the
output is in input order; the file is written aside and renamed into place when complete (``Destination``).
``Destination(resume=True)`` continues an interrupted CSV/JSONL run: the rows already
in the file are checked against the inputs in order and skipped, a partially written last line
(a kill mid-write) is cut off, and the rest is appended. Because CPU kernels can round a sample
differently in a batch of another size, the resumed run restarts at the last batch boundary (it
re-predicts at most ``batch_size - 1`` images, rewriting their rows), so every batch holds the same
images as in an uninterrupted run and the file comes out byte-identical to one.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

from mlic.errors import UserError
from mlic.inference.destination import Destination

if TYPE_CHECKING:  # torch-free at import: `mlic predict --help` lists FORMATS from here
    from mlic.inference.predictor import BasePredictor, Prediction

FORMATS = ("table", "csv", "jsonl", "json")
RESUMABLE = ("csv", "jsonl")


class ResumeError(UserError, ValueError):
    """The existing output file cannot be continued (other format or columns)."""


@dataclass(frozen=True)
class OutputOptions:
    fmt: str = "table"
    probabilities: bool = False  # every class's probability (csv/jsonl/json); the table always shows the labels'
    top_k: int = 0  # also list the k most probable classes, whatever their thresholds


@dataclass
class PredictSummary:
    predicted: int = 0  # rows written in this run, unreadable ones included
    failed: int = 0  # unreadable images among them
    skipped: int = 0  # already in the output file (resume)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        rate = self.predicted / self.seconds if self.seconds > 0 else 0.0
        text = f"{self.predicted} image(s) in {self.seconds:.1f} s ({rate:.1f} images/s)"
        text += f"; {self.failed} unreadable (see the error field)" if self.failed else "; none unreadable"
        return text + (f"; {self.skipped} already in the output, skipped" if self.skipped else "")


class RowFormatter:
    """One output format: text before the first row, the text of each row, text after the last."""

    def __init__(self, options: OutputOptions, class_names: list[str]) -> None:
        if options.fmt not in FORMATS:
            raise ValueError(f"unknown output format {options.fmt!r}; choose one of: {', '.join(FORMATS)}")
        self.options, self.class_names = options, class_names
        self.rows = 0  # rows formatted so far (JSON needs it for its separators)

    def header(self) -> list[str]:
        """CSV columns: path, labels, error, [top1, top1_p, ...], [p_<class> ...]."""
        tops = [c for i in range(1, self.options.top_k + 1) for c in (f"top{i}", f"top{i}_p")]
        probs = [f"p_{n}" for n in self.class_names] if self.options.probabilities else []
        return ["path", "labels", "error", *tops, *probs]

    def begin(self) -> str:
        if self.options.fmt == "csv":
            return _csv_line(self.header())
        return "[" if self.options.fmt == "json" else ""

    def end(self) -> str:
        return ("\n]\n" if self.rows else "]\n") if self.options.fmt == "json" else ""

    def row(self, pred: Prediction) -> str:
        fmt, self.rows = self.options.fmt, self.rows + 1
        if fmt == "table":
            return self._table_row(pred)
        if fmt == "csv":
            return _csv_line(self._csv_cells(pred))
        text = json.dumps(self._record(pred))
        return text + "\n" if fmt == "jsonl" else ("\n" if self.rows == 1 else ",\n") + text

    def record_keys(self) -> tuple[str, ...]:
        return (
            ("path", "labels", "error")
            + ("top_k",) * bool(self.options.top_k)
            + (("probabilities",) * self.options.probabilities)
        )

    def _record(self, pred: Prediction) -> dict:
        record: dict = {"path": pred.path, "labels": pred.labels, "error": pred.error}
        if self.options.top_k:
            record["top_k"] = [{"label": n, "probability": p} for n, p in pred.top_k(self.options.top_k)]
        if self.options.probabilities:
            record["probabilities"] = pred.probabilities
        return record

    def _csv_cells(self, pred: Prediction) -> list[str]:
        k = self.options.top_k
        tops = [c for n, p in pred.top_k(k) for c in (n, f"{p:.6f}")] if pred.error is None else []
        tops += [""] * (2 * k - len(tops))
        probs = [f"{pred.probabilities[n]:.6f}" if pred.error is None else "" for n in self.class_names]
        return [
            pred.path,
            " ".join(pred.labels),
            pred.error or "",
            *tops,
            *(probs if self.options.probabilities else []),
        ]

    def _table_row(self, pred: Prediction) -> str:
        if pred.error:
            return f"{pred.path}\tERROR: {pred.error}\n"
        shown = ", ".join(f"{n} ({pred.probabilities[n]:.2f})" for n in pred.labels) or "(no labels)"
        if self.options.top_k:
            shown += "\ttop: " + ", ".join(f"{n} {p:.2f}" for n, p in pred.top_k(self.options.top_k))
        return f"{pred.path}\t{shown}\n"


def _csv_line(cells: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


def write_predictions(
    predictor: BasePredictor,
    paths: Iterable[Path],
    options: OutputOptions,
    *,
    dest: Destination | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = False,
) -> PredictSummary:
    """Predict ``paths`` (consumed lazily) and write ``options.fmt`` rows to ``dest`` (default stdout).

    The file is written as ``dest.partial`` and renamed into place at the end (see ``Destination``).
    """
    formatter, summary = RowFormatter(options, predictor.class_names), PredictSummary()
    todo: Iterable[Path] = paths if dest is None else dest.guard(paths)
    fresh = True
    if dest is not None and dest.resume:
        if options.fmt not in RESUMABLE:
            raise ResumeError(f"--resume needs a format of {' or '.join(RESUMABLE)}, not {options.fmt}")
        dest.prepare_partial()
        todo, fresh = _prepare_resume(dest.partial, iter(todo), formatter, batch_size, summary)
    start = time.perf_counter()
    target = dest.partial if dest is not None else None
    with (
        open(target, "w" if fresh else "a", encoding="utf-8", newline="") if target else nullcontext(sys.stdout) as out
    ):
        if fresh:
            out.write(formatter.begin())
        for pred in predictor.predict_paths(todo, batch_size=batch_size, num_workers=num_workers, progress=progress):
            summary.predicted += 1
            summary.failed += pred.error is not None
            out.write(formatter.row(pred))
            if summary.predicted % batch_size == 0:
                out.flush()  # whole batches reach the file together: a kill loses little
        out.write(formatter.end())
    if dest is not None:
        dest.commit()
    summary.seconds = time.perf_counter() - start
    return summary


def _prepare_resume(
    output: Path, paths: Iterator[Path], formatter: RowFormatter, batch_size: int, summary: PredictSummary
) -> tuple[Iterable[Path], bool]:
    """Truncate ``output`` to the rows to keep; return (the inputs still to predict, whether to start afresh)."""
    if not output.exists() or output.stat().st_size == 0:
        return paths, True
    records = _complete_records(output, formatter)
    kept_end = 0
    if formatter.options.fmt == "csv":
        header = next(records, None)
        if header is None:  # killed before the header line was complete
            records.close()
            _truncate(output, 0)
            return paths, True
        kept_end = header[1]
    pending: list[Path] = []
    for path, end in records:
        current = next(paths, None)
        if current is None or str(current) != path:
            summary.skipped += len(pending)  # rows matched since the last boundary stay too
            return _resume_by_path(output, (path, end), records, current, paths, summary), False
        pending.append(current)
        if len(pending) == batch_size:  # a batch boundary: every row up to here stays
            kept_end, summary.skipped, pending = end, summary.skipped + batch_size, []
    records.close()
    _truncate(output, kept_end)
    if pending:
        summary.notes.append(f"resume: re-predicting {len(pending)} image(s) to restart at a batch boundary")
    return chain(pending, paths), False


def _resume_by_path(
    output: Path,
    first: tuple[str, int],
    records: Iterator[tuple[str, int]],
    current: Path | None,
    paths: Iterator[Path],
    summary: PredictSummary,
) -> Iterator[Path]:
    """Fallback when the file's rows stop following the inputs: keep every complete row and skip by path.

    Holds the unmatched paths in memory; the append is no longer in an uninterrupted run's order.
    """
    remaining, end = Counter([first[0]]), first[1]
    for path, end in records:  # noqa: B007 - the last end is the end of the complete rows
        remaining[path] += 1
    records.close()
    _truncate(output, end)
    summary.notes.append(
        f"resume: the rows of {output} stop following the inputs after row {summary.skipped}; skipping images "
        "already there by path, so the new rows are not in input order"
    )

    def todo() -> Iterator[Path]:
        for p in chain([current] if current is not None else [], paths):
            if remaining[str(p)] > 0:
                remaining[str(p)] -= 1
                summary.skipped += 1
            else:
                yield p

    return todo()


def _complete_records(output: Path, formatter: RowFormatter) -> Iterator[tuple[str, int]]:
    """(path, byte offset just after the row) for each complete row of ``output``, in order.

    For CSV the first item is ("", end of the header), after checking the header equals this run's.
    Reading stops at the first row that is incomplete (no final newline: a kill mid-write) or
    unparsable; everything from there on will be truncated and redone.
    """
    with open(output, "rb") as f:
        ends = [0]

        def lines() -> Iterator[str]:
            for raw in f:
                if not raw.endswith(b"\n"):
                    return
                ends[0] += len(raw)
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError:
                    return

        rows = _jsonl_rows if formatter.options.fmt == "jsonl" else _csv_rows
        for path in rows(lines(), output, formatter):
            yield path, ends[0]


def _jsonl_rows(lines: Iterator[str], output: Path, formatter: RowFormatter) -> Iterator[str]:
    keys = list(formatter.record_keys())
    for text in lines:
        try:
            record = json.loads(text)
        except ValueError:
            return
        if not isinstance(record, dict) or list(record) != keys:
            raise ResumeError(
                f"{output}: its records have keys {list(record) if isinstance(record, dict) else '?'}, "
                f"this run writes {keys}; resume with the same --probabilities/--top-k or a new --output"
            )
        yield record["path"]


def _csv_rows(lines: Iterator[str], output: Path, formatter: RowFormatter) -> Iterator[str]:
    """ "" for the header (checked against this run's), then the path of each complete row."""
    reader = csv.reader(lines, strict=True)
    expected = formatter.header()
    try:
        header = next(reader, None)
        if header is None:
            return
        if header != expected:
            raise ResumeError(
                f"{output}: its columns differ from this run's ({len(header)} vs {len(expected)}: other "
                "--probabilities/--top-k or another model); resume with the same options or a new --output"
            )
        yield ""
        for row in reader:
            if len(row) != len(expected):
                return
            yield row[0]
    except csv.Error:
        return


def _truncate(output: Path, size: int) -> None:
    with open(output, "r+b") as f:
        f.truncate(size)

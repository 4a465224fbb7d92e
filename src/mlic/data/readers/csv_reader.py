"""CSV/TSV annotations: one row per image, labels as a tag list or as one 0/1 column per class.

Hand-made multi-label datasets (spreadsheet exports, Kaggle dumps) come in one of these two layouts,
so the layout is read off the header instead of being configured.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path

from mlic.data.records import DataError, Record, RowErrors, check_label

IMAGE_COLUMNS = ("image", "path", "file", "filename", "image_path", "img")
TAG_COLUMNS = ("labels", "tags", "label")
SEPARATORS = (",", ";", "\t")
# Class-column cells: -1 and empty both mean "not annotated" (CheXpert-style uncertain labels).
POSITIVE_VALUES = ("1", "1.0")
NEGATIVE_VALUES = ("0", "0.0")
UNKNOWN_VALUES = ("-1", "-1.0", "")

StrPath = str | PathLike[str]


def read_text(path: Path) -> str:
    """The whole file as text; unreadable or non-UTF-8 files become a DataError naming the file."""
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: spreadsheet exports often start with a BOM
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None


def join_image_path(root: Path, image: str, where: str, *, allow_absolute: bool = True) -> Path:
    """``root / image`` with "." and ".." folded away, refusing a relative path that climbs out of ``root``.

    A label file from elsewhere must not make training (or a server) read arbitrary files through
    "../../" paths; an absolute path is explicit and stays allowed unless ``allow_absolute`` is False
    (for formats whose entries are image ids, not paths). The path is folded as text and returned folded,
    so the file that is opened is the one that was checked ("link/../x" cannot leave through a symlink).
    """
    if Path(image).is_absolute():
        if not allow_absolute:
            raise DataError(f"{where}: image id {image!r} is an absolute path; ids are names inside {root}")
        return Path(os.path.normpath(image))
    base = os.path.normpath(root)
    path = os.path.normpath(os.path.join(base, image))
    if os.path.commonpath([base, path]) != base:
        raise DataError(
            f"{where}: image path {image!r} escapes the image root {root} (use an absolute path to point outside it)"
        )
    return Path(path)


def csv_rows(text: str, sep: str, name: str) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number of the row's first line, fields), skipping blank rows.

    Rows of only separators (",,,") count as blank: spreadsheets export trailing empty rows that way. A field
    that holds a line break is an error: no image path or label has one, and it is what one unbalanced quote
    does (the csv module then swallows every following row into that field, silently).
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    end = 0
    try:
        for row in reader:
            start, end = end + 1, reader.line_num  # a quoted field may span lines; report where the row starts
            if any("\n" in cell or "\r" in cell for cell in row):
                raise DataError(
                    f"{name}:{start}: a quoted field starts on this line and runs on over the line break (to line "
                    f"{end}); is a quote character unbalanced?"
                )
            if any(cell.strip() for cell in row):
                yield start, row
    except csv.Error as err:
        raise DataError(f"{name}:{reader.line_num}: {err}") from None


def guess_separator(path: Path, text: str) -> str:
    """Tab for .tsv; otherwise the most frequent of , ; tab in the header line (',' when none occurs)."""
    if path.suffix.lower() == ".tsv":
        return "\t"
    header = text.split("\n", 1)[0]
    counts = {sep: header.count(sep) for sep in SEPARATORS}
    best = max(counts, key=lambda sep: counts[sep])  # ties keep the first, i.e. ','
    return best if counts[best] else ","


def read_csv(
    path: StrPath,
    *,
    image_root: StrPath | None = None,
    image_column: str | None = None,
    labels_column: str | None = None,
    label_delimiter: str = " ",
    class_columns: Sequence[str] | str | None = None,
    sep: str | None = None,
    problems: RowErrors | None = None,
) -> list[Record]:
    """Records from a CSV/TSV file with a tag-list column or one 0/1/-1/empty column per class.

    Without ``labels_column`` or ``class_columns`` a column named labels/tags/label is the tag list;
    failing that, every column except the image column is a class. ``class_columns`` may be a
    comma-separated string. Image paths are relative to ``image_root`` (default: the file's folder).
    ``problems``: where a bad row's error goes (default: raised); a broken file structure always raises.
    """
    if not label_delimiter:
        raise DataError("label_delimiter must not be empty")
    path = Path(path).absolute()
    name = path.name
    text = read_text(path)
    rows = csv_rows(text, sep or guess_separator(path, text), name)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{name}:1: no rows (the file is empty)")
    header_line, header = first[0], [column.strip() for column in first[1]]
    image_idx, tag_idx, class_idxs = _layout(
        header, f"{name}:{header_line}", image_column, labels_column, class_columns
    )
    root = Path(image_root).absolute() if image_root is not None else path.parent
    problems = problems or RowErrors()
    records, rows_read = [], 0
    for line, row in rows:
        rows_read += 1
        try:
            records.append(
                _row_record(row, header, (image_idx, tag_idx, class_idxs), root, label_delimiter, f"{name}:{line}")
            )
        except DataError as err:
            problems.add(err)
    if not rows_read:
        raise DataError(f"{name}:{header_line}: no rows below the header")
    return records


def _row_record(row: list[str], header: list[str], layout, root: Path, delimiter: str, where: str) -> Record:
    """The record of one data row; ``layout`` is (image column, tag column or None, class columns)."""
    image_idx, tag_idx, class_idxs = layout
    if len(row) != len(header):
        raise DataError(f"{where}: expected {len(header)} fields like the header, got {len(row)}")
    image = row[image_idx].strip()
    if not image:
        raise DataError(f"{where}: empty image path in column {header[image_idx]!r}")
    if tag_idx is not None:
        positives, unknown = _split_tags(row[tag_idx], delimiter, where), ()
    else:
        positives, unknown = _class_values(row, header, class_idxs, where)
    return Record(path=join_image_path(root, image, where), positives=positives, unknown=unknown, source=where)


def _layout(
    header: list[str],
    where: str,
    image_column: str | None,
    labels_column: str | None,
    class_columns: Sequence[str] | str | None,
) -> tuple[int, int | None, list[int]]:
    """(image column, tag column or None, class columns) as indices into the header."""
    duplicates = sorted({column for column in header if header.count(column) > 1})
    if duplicates:
        raise DataError(f"{where}: duplicate column(s): {', '.join(map(repr, duplicates))}")
    lowered = [column.lower() for column in header]
    alike = sorted({column for column, low in zip(header, lowered, strict=True) if lowered.count(low) > 1})
    if alike:  # the image/tag columns are found case-insensitively: which one is meant?
        raise DataError(f"{where}: columns {', '.join(map(repr, alike))} differ only by case; rename one")
    if labels_column is not None and class_columns is not None:
        raise DataError(f"{where}: pass either a labels column or class columns, not both")
    if image_column is not None:
        image_idx = _column(header, image_column, where)
    else:
        found = _auto_column(header, IMAGE_COLUMNS)
        if found is None:
            raise DataError(
                f"{where}: no image column; expected one of {', '.join(IMAGE_COLUMNS)} "
                f"(or pass --image-column); columns are: {', '.join(header)}"
            )
        image_idx = found
    if class_columns is not None:
        names = class_columns.split(",") if isinstance(class_columns, str) else list(class_columns)
        idxs = [_column(header, column.strip(), where) for column in names]
        for idx in idxs:
            check_label(header[idx], f"{where}: column {idx + 1}")
        return image_idx, None, idxs
    if labels_column is not None:
        return image_idx, _column(header, labels_column, where), []
    tag_idx = _auto_column(header, TAG_COLUMNS)
    if tag_idx is not None:
        return image_idx, tag_idx, []
    class_idxs = [idx for idx in range(len(header)) if idx != image_idx]
    if not class_idxs:
        raise DataError(
            f"{where}: no label columns; expected a tag column ({', '.join(TAG_COLUMNS)}) or one 0/1 column per class"
        )
    for idx in class_idxs:  # each class column's header is a class name
        check_label(header[idx], f"{where}: column {idx + 1}")
    return image_idx, None, class_idxs


def _column(header: list[str], wanted: str, where: str) -> int:
    if wanted in header:
        return header.index(wanted)
    raise DataError(f"{where}: unknown column {wanted!r}; columns are: {', '.join(header)}")


def _auto_column(header: list[str], candidates: tuple[str, ...]) -> int | None:
    """Index of the first candidate name present in the header, compared case-insensitively."""
    lowered = [column.lower() for column in header]
    for candidate in candidates:
        if candidate in lowered:
            return lowered.index(candidate)
    return None


def _split_tags(cell: str, delimiter: str, where: str) -> tuple[str, ...]:
    """Unique non-empty tags in order; a whitespace delimiter splits on any run of whitespace."""
    parts = cell.split() if delimiter.isspace() else cell.split(delimiter)
    return tuple(dict.fromkeys(check_label(tag, where) for tag in parts if tag.strip()))


def _class_values(
    row: list[str], header: list[str], class_idxs: list[int], where: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(positives, unknown) from one 0/1/-1/empty cell per class column."""
    positives, unknown = [], []
    for idx in class_idxs:
        value = row[idx].strip()
        if value in POSITIVE_VALUES:
            positives.append(header[idx])
        elif value in UNKNOWN_VALUES:
            unknown.append(header[idx])
        elif value not in NEGATIVE_VALUES:
            raise DataError(f"{where}: column {header[idx]!r}: value {value!r} is not 1, 0, -1 or empty")
    return tuple(positives), tuple(unknown)

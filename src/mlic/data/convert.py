"""Records -> a CSV or JSON Lines file that mlic's own readers read back to the same records.

Converting once to one of these frees a dataset from its original format (COCO JSON, VOC folders,
Open Images' three CSVs) and makes it easy to edit, split and diff.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

from mlic.data.labels import build_vocabulary
from mlic.data.readers.csv_reader import TAG_COLUMNS, StrPath
from mlic.data.records import DataError, Record

WRITE_FORMATS = ("csv", "tsv", "jsonl")


def write_records(records: Sequence[Record], out_path: StrPath, fmt: str, *, overwrite: bool = False) -> Path:
    """Write ``records`` as ``fmt`` ("csv", "tsv" or "jsonl") to ``out_path``; returns the path written.

    Image paths are written relative to the output file's folder when they lie below it (where the
    readers resolve them by default), otherwise absolute. A CSV is a tag list ("image,labels")
    unless some record has unknowns or verified negatives, or a label holds whitespace: then it has one
    1/0/empty column per class, empty meaning unknown. The file is written whole or not at all.
    """
    if fmt not in WRITE_FORMATS:
        raise DataError(f"cannot write format {fmt!r}; choose one of: {', '.join(WRITE_FORMATS)}")
    if not records:
        raise DataError(f"{out_path}: no records to write (mlic's readers refuse empty files)")
    out = Path(out_path).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")  # same folder, so the rename below is atomic
    try:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            delimiter = "\t" if fmt == "tsv" else ","
            if fmt == "jsonl":
                _write_jsonl(records, handle, out.parent)
            elif needs_class_columns(records):
                _write_class_columns(records, handle, out.parent, delimiter)
            else:
                _write_tags(records, handle, out.parent, delimiter)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def needs_class_columns(records: Sequence[Record]) -> bool:
    """True if a space-separated tag list cannot say what these records say."""
    for record in records:
        if record.negatives is not None or record.unknown:
            return True
        if any(_has_space(label) for label in record.positives):
            return True
    return False


def _relative(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` if it lies inside it, else absolute: the readers refuse "../" paths."""
    try:
        relative = Path(os.path.relpath(path, folder))
    except ValueError:  # Windows: another drive has no relative path
        return str(path)
    return str(Path(path).absolute()) if ".." in relative.parts else relative.as_posix()


def _has_space(text: str) -> bool:
    return any(char.isspace() for char in text)


def _write_tags(records: Sequence[Record], handle, folder: Path, delimiter: str = ",") -> None:
    writer = csv.writer(handle, lineterminator="\n", delimiter=delimiter)
    writer.writerow(["image", "labels"])
    for record in records:
        writer.writerow([_relative(record.path, folder), " ".join(record.positives)])


def _write_class_columns(records: Sequence[Record], handle, folder: Path, delimiter: str = ",") -> None:
    """One column per class: 1 positive, 0 known negative, empty unknown (as the CSV reader reads them)."""
    names = build_vocabulary(records)
    _check_column_names(names)
    writer = csv.writer(handle, lineterminator="\n", delimiter=delimiter)
    writer.writerow(["image", *names])
    for record in records:
        positives, unknown = set(record.positives), set(record.unknown)
        negatives = None if record.negatives is None else set(record.negatives)
        cells = []
        for name in names:
            if name in positives:
                cells.append("1")  # a positive is written as one even if also listed unknown or negative
            elif name in unknown or (negatives is not None and name not in negatives):
                cells.append("")
            else:
                cells.append("0")
        writer.writerow([_relative(record.path, folder), *cells])


def _check_column_names(names: list[str]) -> None:
    """Refuse class names the CSV reader would take for another column or a different separator."""
    for name in names:
        if name.lower() == "image" or name.lower() in TAG_COLUMNS:  # the reader would take it for those columns
            raise DataError(f"class {name!r} cannot be a CSV column (a reserved column name); write jsonl instead")
        if any(char in name for char in ";\t\r\n"):
            raise DataError(f"class {name!r} holds ';', a tab or a line break, unsafe in a CSV header; write jsonl")


def _write_jsonl(records: Sequence[Record], handle, folder: Path) -> None:
    for record in records:
        obj: dict[str, object] = {"image": _relative(record.path, folder), "labels": list(record.positives)}
        if record.negatives is not None:
            obj["negatives"] = [name for name in record.negatives if name not in record.positives]
        if record.unknown:
            obj["unknown"] = [name for name in record.unknown if name not in record.positives]
        handle.write(json.dumps(obj, ensure_ascii=False) + "\n")

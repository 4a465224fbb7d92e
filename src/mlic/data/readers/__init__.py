"""Annotation readers: every format becomes a list of Records, and this module picks the reader.

The factory is a plain if/elif so that which options each format takes is readable in one place.
Option keywords are the reader keyword names; error messages name the CLI flag from OPTION_FLAGS.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mlic.config import LABEL_FORMATS
from mlic.data.readers.coco import read_coco
from mlic.data.readers.csv_reader import StrPath, read_csv, read_text
from mlic.data.readers.folder import read_folder
from mlic.data.readers.jsonl import parse_json, read_jsonl
from mlic.data.readers.openimages import read_openimages
from mlic.data.readers.voc import read_voc
from mlic.data.records import DataError, Record, RowErrors

__all__ = [
    "FORMATS",
    "OPTION_FLAGS",
    "detect_format",
    "read_coco",
    "read_csv",
    "read_folder",
    "read_jsonl",
    "read_openimages",
    "read_records",
    "read_voc",
]

FORMATS = tuple(f for f in LABEL_FORMATS if f != "auto")  # what the if/elif in read_records reads

# read_records keyword -> the command-line flag that sets it, for error messages users can act on
OPTION_FLAGS = {
    "image_root": "--image-root",
    "image_column": "--image-column",
    "labels_column": "--labels-column",
    "label_delimiter": "--label-delimiter",
    "class_columns": "--class-columns",
    "sep": "--sep",
    "min_area": "--coco-min-area",
    "split": "--voc-split",
    "difficult": "--voc-difficult",
    "class_descriptions": "--class-descriptions",
    "match": "--folder-match",
}
_CSV_OPTIONS = ("image_root", "image_column", "labels_column", "label_delimiter", "class_columns", "sep")
_OPENIMAGES_COLUMNS = {"ImageID", "LabelName", "Confidence"}


def detect_format(path: StrPath) -> str:
    """Guess the format from the folder layout, the file suffix and, for .json/.csv, the content."""
    path = Path(path)
    if path.is_dir():
        if (path / "Annotations").is_dir() and (path / "ImageSets").is_dir():
            return "voc"
        return "folder"
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return "tsv"
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".csv":
        return "openimages" if _header_fields(path) >= _OPENIMAGES_COLUMNS else "csv"
    if suffix == ".json":
        data = parse_json(read_text(path), path.name)
        if isinstance(data, dict) and "images" in data and "annotations" in data:
            return "coco"
    raise DataError(f"{path}: cannot tell the annotation format; pass --format (one of: {', '.join(FORMATS)})")


def read_records(
    path: StrPath, fmt: str = "auto", *, problems: RowErrors | None = None, **options: Any
) -> list[Record]:
    """Read annotations at ``path`` in format ``fmt`` ("auto" detects it).

    Options set to None are ignored (so a CLI can pass every flag); an option that the format does
    not take is a DataError naming its flag. For openimages, ``class_descriptions`` defaults to the
    one ``*class-descriptions*.csv`` beside the labels file and ``image_root`` is required.
    ``problems``: where the errors of single rows go (default: raised at the first); a folder layout has none.
    """
    options = {key: value for key, value in options.items() if value is not None}
    for key in options:
        if key not in OPTION_FLAGS:
            raise DataError(f"unknown reader option {key!r}; known: {', '.join(OPTION_FLAGS)}")
    path = Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "csv":
        _check_options(options, fmt, _CSV_OPTIONS)
        return read_csv(path, problems=problems, **options)
    elif fmt == "tsv":
        _check_options(options, fmt, _CSV_OPTIONS)
        return read_csv(path, problems=problems, **{"sep": "\t", **options})
    elif fmt == "jsonl":
        _check_options(options, fmt, ("image_root",))
        return read_jsonl(path, problems=problems, **options)
    elif fmt == "coco":
        _check_options(options, fmt, ("image_root", "min_area"))
        return read_coco(path, problems=problems, **options)
    elif fmt == "voc":
        _check_options(options, fmt, ("split", "difficult"))
        return read_voc(path, problems=problems, **options)
    elif fmt == "openimages":
        _check_options(options, fmt, ("image_root", "class_descriptions"))
        if "image_root" not in options:
            raise DataError(f"{path.name}: format 'openimages' needs --image-root (the folder of <ImageID>.jpg)")
        descriptions = options.get("class_descriptions") or _find_class_descriptions(path)
        return read_openimages(
            path, class_descriptions=descriptions, image_root=options["image_root"], problems=problems
        )
    elif fmt == "folder":
        _check_options(options, fmt, ("match",))
        return read_folder(path, **options)
    raise DataError(f"unknown format {fmt!r}; choose one of: auto, {', '.join(FORMATS)}")


def _check_options(options: dict[str, Any], fmt: str, allowed: tuple[str, ...]) -> None:
    for key in options:
        if key not in allowed:
            raise DataError(f"{OPTION_FLAGS[key]} does not apply to format {fmt!r}")


def _header_fields(path: Path) -> set[str]:
    """Column names in the first line, split on any of , ; tab; quotes and a BOM stripped."""
    try:
        with path.open(encoding="utf-8-sig", errors="replace") as handle:
            first = handle.readline()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    return {field.strip().strip('"').strip() for field in re.split(r"[,;\t]", first)}


def _find_class_descriptions(labels_csv: Path) -> Path:
    """The single *class-descriptions*.csv beside the labels file (how the official files are named)."""
    found = sorted(labels_csv.absolute().parent.glob("*class-descriptions*.csv"))
    if len(found) != 1:
        what = "none" if not found else ", ".join(path.name for path in found)
        raise DataError(
            f"{labels_csv.name}: format 'openimages' needs --class-descriptions; "
            f"*class-descriptions*.csv files beside it: {what}"
        )
    return found[0]

"""JSON Lines annotations: one ``{"image": ..., "labels": [...]}`` object per line.

The one format that can say everything a Record can (verified negatives, unknowns) without
conventions, so it is what to convert odd datasets into.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlic.data.readers.csv_reader import StrPath, join_image_path, read_text
from mlic.data.records import DataError, Record, RowErrors, check_label


def read_jsonl(path: StrPath, *, image_root: StrPath | None = None, problems: RowErrors | None = None) -> list[Record]:
    """Records from a JSON Lines file; blank lines are skipped.

    Each line needs "image" (relative to ``image_root``, default the file's folder, or absolute) and
    "labels"; optional "negatives" (only these are verified absent, all else unknown) and "unknown".
    ``problems``: where a bad line's error goes (default: raised).
    """
    path = Path(path).absolute()
    name = path.name
    root = Path(image_root).absolute() if image_root is not None else path.parent
    problems = problems or RowErrors()
    records, lines_read = [], 0
    # split on "\n" only: str.splitlines would also break on U+2028, which JSON strings may hold raw
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        lines_read += 1
        where = f"{name}:{number}"
        try:
            records.append(_record(parse_json(line, where), root, where))
        except DataError as err:
            problems.add(err)
    if not lines_read:
        raise DataError(f"{name}:1: no records (the file is empty)")
    return records


def parse_json(text: str, where: str):
    """``json.loads``, with invalid and absurdly nested JSON (a RecursionError in the parser) as DataErrors."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        line = f":{err.lineno}" if ":" not in where else ""
        raise DataError(f"{where}{line}: invalid JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deep to be an annotation") from None


def _record(obj: Any, root: Path, where: str) -> Record:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("image", "labels"):
        if key not in obj:
            raise DataError(f"{where}: missing key {key!r}")
    image = obj["image"]
    if not isinstance(image, str) or not image.strip():
        raise DataError(f"{where}: 'image' must be a non-empty string")
    positives = _names(obj["labels"], "labels", where)
    negatives = _names(obj["negatives"], "negatives", where) if obj.get("negatives") is not None else None
    unknown = _names(obj["unknown"], "unknown", where) if obj.get("unknown") is not None else ()
    for other_key, other in (("negatives", negatives or ()), ("unknown", unknown)):
        clash = sorted(set(positives) & set(other))
        if clash:
            raise DataError(f"{where}: {', '.join(map(repr, clash))} in both 'labels' and {other_key!r}")
    return Record(
        path=join_image_path(root, image.strip(), where),
        positives=positives,
        negatives=negatives,
        unknown=unknown,
        source=where,
    )


def _names(value: Any, key: str, where: str) -> tuple[str, ...]:
    """Unique label names in order; anything but a list of non-empty strings is an error."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DataError(f"{where}: {key!r} must be a list of non-empty strings")
    return tuple(dict.fromkeys(check_label(item, f"{where}: {key!r}") for item in value))

"""Open Images image-level labels: partially labelled data with verified negatives.

Only the classes listed for an image were checked by a human: Confidence 1 means present, 0 means
verified absent, and every other class is unknown. So records carry ``negatives`` as a tuple, never None.
"""

from __future__ import annotations

from pathlib import Path

from mlic.data.readers.csv_reader import POSITIVE_VALUES, StrPath, csv_rows, join_image_path, read_text
from mlic.data.records import DataError, Record, RowErrors, check_label

REQUIRED_COLUMNS = ("ImageID", "LabelName", "Confidence")
NEGATIVE_CONFIDENCES = ("0", "0.0")


def read_openimages(
    labels_csv: StrPath, *, class_descriptions: StrPath, image_root: StrPath, problems: RowErrors | None = None
) -> list[Record]:
    """One record per ImageID (in order of first appearance), image path ``image_root/<ImageID>.jpg``.

    MIDs are mapped to display names through ``class_descriptions`` (LabelName,DisplayName; with or
    without a header). A MID missing from it keeps the MID itself as its name, so no label is lost.
    Two MIDs with the same display name become one class. Fractional confidences (the
    machine-generated files) are rejected: use the human-verified labels.
    """
    path = Path(labels_csv).absolute()
    name = path.name
    names = read_class_descriptions(Path(class_descriptions).absolute())
    root = Path(image_root).absolute()
    rows = csv_rows(read_text(path), ",", name)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{name}:1: no rows (the file is empty)")
    header_line, header = first[0], [column.strip() for column in first[1]]
    for column in REQUIRED_COLUMNS:
        if column not in header:
            raise DataError(f"{name}:{header_line}: missing column {column!r}; columns are: {', '.join(header)}")
    image_idx, mid_idx, conf_idx = (header.index(column) for column in REQUIRED_COLUMNS)
    problems = problems or RowErrors()
    sources: dict[str, str] = {}
    labels: dict[str, dict[str, bool]] = {}  # ImageID -> {class name: present}
    for line, row in rows:
        where = f"{name}:{line}"
        try:
            image_id, mid, present = _parse_row(row, header, (image_idx, mid_idx, conf_idx), where)
            if image_id not in sources:
                # an ImageID like "../x" must not leave the root
                join_image_path(root, f"{image_id}.jpg", where, allow_absolute=False)
                sources[image_id] = where
            label = names.get(mid) or check_label(mid, where)
            if labels.setdefault(image_id, {}).setdefault(label, present) != present:
                raise DataError(f"{where}: {label!r} ({mid}) is both present and absent for image {image_id}")
        except DataError as err:
            problems.add(err)
    if not labels and not problems.errors:
        raise DataError(f"{name}:{header_line}: no rows below the header")
    return [
        Record(
            path=root / f"{image_id}.jpg",
            positives=tuple(label for label, present in found.items() if present),
            negatives=tuple(label for label, present in found.items() if not present),
            source=sources[image_id],
        )
        for image_id, found in labels.items()
    ]


def _parse_row(row: list[str], header: list[str], idxs: tuple[int, int, int], where: str) -> tuple[str, str, bool]:
    """(ImageID, MID, present) of one label row."""
    if len(row) != len(header):
        raise DataError(f"{where}: expected {len(header)} fields like the header, got {len(row)}")
    image_id, mid, confidence = (row[i].strip() for i in idxs)
    if not image_id or not mid:
        raise DataError(f"{where}: empty ImageID or LabelName")
    if confidence not in POSITIVE_VALUES + NEGATIVE_CONFIDENCES:
        raise DataError(f"{where}: Confidence {confidence!r} is not 0 or 1 (machine-generated labels unsupported)")
    return image_id, mid, confidence in POSITIVE_VALUES


def read_class_descriptions(path: Path) -> dict[str, str]:
    """MID -> display name. The official file has no header; a "LabelName,DisplayName" first row is skipped."""
    names: dict[str, str] = {}
    for line, row in csv_rows(read_text(path), ",", path.name):
        if not names and row[0].strip().lower() == "labelname":
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"{path.name}:{line}: expected LabelName,DisplayName")
        where = f"{path.name}:{line}"
        names.setdefault(check_label(row[0], where), check_label(row[1], where))
    if not names:
        raise DataError(f"{path.name}:1: no class descriptions (the file is empty)")
    return names

"""COCO instances JSON reduced to image-level label sets.

Boxes are dropped: an image's labels are the categories of its annotations. An image without
annotations is a fully known image with no positives (COCO annotates every listed category exhaustively).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlic.data.readers.csv_reader import StrPath, join_image_path, read_text
from mlic.data.readers.jsonl import parse_json
from mlic.data.records import DataError, Record, RowErrors, check_label


def read_coco(
    path: StrPath, *, image_root: StrPath | None = None, min_area: float = 0.0, problems: RowErrors | None = None
) -> list[Record]:
    """Records from a COCO instances file, one per entry of "images", in file order.

    Annotations with area < ``min_area`` (pixels²) are ignored, so tiny objects do not make a label.
    ``file_name`` is joined with ``image_root`` (default: the JSON's folder). Sources read
    "instances.json:image_id=42". ``problems``: where an image's or annotation's error goes (default: raised).
    """
    path = Path(path).absolute()
    name = path.name
    if min_area < 0:
        raise DataError(f"min_area must be >= 0, got {min_area}")
    root = Path(image_root).absolute() if image_root is not None else path.parent
    data = parse_json(read_text(path), name)
    if not isinstance(data, dict):
        raise DataError(f"{name}:1: expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{name}: missing list {key!r} (not a COCO instances file?)")
    problems = problems or RowErrors()
    categories = _categories(data["categories"], name)
    listed = _images(data["images"], name)
    if not listed:
        raise DataError(f"{name}: no images")
    images = {}
    for image_id, file_name in listed.items():
        try:
            images[image_id] = join_image_path(root, file_name, f"{name}:image_id={image_id}")
        except DataError as err:
            problems.add(err)
    found: dict[Any, set[int]] = {image_id: set() for image_id in images}
    for idx, ann in enumerate(data["annotations"]):
        try:
            image_id, category = _annotation(ann, idx, listed, categories, min_area, name)
        except DataError as err:
            problems.add(err)
            continue
        if image_id in found and category is not None:
            found[image_id].add(category)
    rank = {category: idx for idx, category in enumerate(categories)}  # labels follow the category list
    return [
        Record(
            path=image_path,
            positives=tuple(dict.fromkeys(categories[cat] for cat in sorted(found[image_id], key=rank.__getitem__))),
            source=f"{name}:image_id={image_id}",
        )
        for image_id, image_path in images.items()
    ]


def _annotation(ann: Any, idx: int, images: dict, categories: dict, min_area: float, name: str):
    """(image id, category id, or None for an annotation below ``min_area``) of one annotation."""
    image_id = ann.get("image_id") if isinstance(ann, dict) else None
    if not _is_id(image_id) or image_id not in images:
        raise DataError(f"{name}:annotations[{idx}]: unknown image id {image_id!r}")
    where = f"{name}:image_id={image_id}"
    category = ann.get("category_id")
    if not _is_id(category) or category not in categories:
        raise DataError(f"{where}: annotation {ann.get('id', idx)} has unknown category id {category!r}")
    if min_area > 0 and _area(ann, where) < min_area:
        return image_id, None
    return image_id, category


def _categories(entries: list[Any], name: str) -> dict[Any, str]:
    """Category id -> name, in file order. Two ids with one name would become one class: refused."""
    categories: dict[Any, str] = {}
    ids_by_name: dict[str, Any] = {}
    for idx, entry in enumerate(entries):
        where = f"{name}:categories[{idx}]"
        if not isinstance(entry, dict) or not _is_id(entry.get("id")) or not isinstance(entry.get("name"), str):
            raise DataError(f"{where}: needs an 'id' and a string 'name'")
        if entry["id"] in categories:
            raise DataError(f"{where}: duplicate category id {entry['id']!r}")
        label = check_label(entry["name"], where)
        if label in ids_by_name:
            raise DataError(f"{where}: category name {label!r} is also id {ids_by_name[label]!r}'s; names must differ")
        categories[entry["id"]], ids_by_name[label] = label, entry["id"]
    return categories


def _images(entries: list[Any], name: str) -> dict[Any, str]:
    """Image id -> file_name, in file order."""
    images: dict[Any, str] = {}
    for idx, entry in enumerate(entries):
        if not isinstance(entry, dict) or not _is_id(entry.get("id")):
            raise DataError(f"{name}:images[{idx}]: needs an integer or string 'id'")
        where = f"{name}:image_id={entry['id']}"
        if entry["id"] in images:
            raise DataError(f"{where}: duplicate image id")
        file_name = entry.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip():
            raise DataError(f"{where}: missing 'file_name'")
        images[entry["id"]] = file_name.strip()
    return images


def _area(ann: dict[str, Any], where: str) -> float:
    """The annotation's "area", or its box's width × height when the area is missing."""
    area = ann.get("area")
    bbox = ann.get("bbox")
    if area is None and isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox)):
        area = bbox[2] * bbox[3]
    if not _is_number(area):
        raise DataError(f"{where}: annotation {ann.get('id', '?')} has no numeric 'area' (needed for min_area)")
    return float(area)


def _is_id(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

"""Folder-per-label layout: ``root/<label>/<images>``, made multi-label by finding the same image twice.

Single-label tools (ImageFolder) cannot express an image with two labels; copying the image into
each label folder can, and matching by name or by content turns the copies back into one record.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mlic.data.readers.csv_reader import StrPath
from mlic.data.records import DataError, Record, check_label

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MATCH_CHOICES = ("name", "hash")


def read_folder(root: StrPath, *, match: str = "name") -> list[Record]:
    """One record per distinct image; it gets the name of every label folder it appears under.

    ``match="name"`` treats equal file names as the same image, ``"hash"`` equal SHA-256 of the bytes.
    Files in nested folders belong to the top label folder; files directly in ``root`` and hidden
    files or folders (".DS_Store", ".ipynb_checkpoints") are skipped. Walking is sorted, so the record
    path (the first copy found) and the record order are the same on every machine.
    """
    if match not in MATCH_CHOICES:
        raise DataError(f"match must be one of {', '.join(MATCH_CHOICES)}; got {match!r}")
    root = Path(root).absolute()
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    groups: dict[str, tuple[Path, list[str]]] = {}  # match key -> (first path, labels)
    for label_dir in sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")):
        check_label(label_dir.name, f"{root}: folder {label_dir.name!r}")
        for image in _images_under(label_dir):
            key = image.name if match == "name" else _sha256(image)
            labels = groups.setdefault(key, (image, []))[1]
            if label_dir.name not in labels:
                labels.append(label_dir.name)
    if not groups:
        raise DataError(f"{root}: no images found; expected {root}/<label>/<image> with one of {_extensions()}")
    return [
        Record(path=path, positives=tuple(labels), source=path.relative_to(root).as_posix())
        for path, labels in groups.values()
    ]


def _images_under(label_dir: Path) -> list[Path]:
    """Image files anywhere below ``label_dir``, sorted, skipping hidden files and folders."""
    found = []
    for path in label_dir.rglob("*"):
        parts = path.relative_to(label_dir).parts
        if path.suffix.lower() in IMAGE_EXTENSIONS and not any(p.startswith(".") for p in parts) and path.is_file():
            found.append(path)
    return sorted(found)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    return digest.hexdigest()


def _extensions() -> str:
    return " ".join(sorted(IMAGE_EXTENSIONS))

"""Datasets mlic writes itself (demo scenes, Fashion-MNIST collages): real image files plus tag CSVs,
built once and reused while their manifest matches.

The manifest holds the generation parameters and is written last, atomically: its presence means
everything else is on disk, so an interrupted build is never mistaken for a complete one.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

MANIFEST_NAME = "manifest.json"


def check_build_args(counts: dict[str, int], image_size: int, seed: int, min_image_size: int) -> None:
    """Reject impossible generation parameters before anything is written."""
    for name, value in counts.items():
        if value < 0:
            raise ValueError(f"num_{name} must be >= 0, got {value}")
    if image_size < min_image_size:
        raise ValueError(f"image_size must be >= {min_image_size}, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def is_complete(root: Path, manifest: dict, needed: Iterable[Path]) -> bool:
    """True if ``root`` holds a finished dataset written with exactly these parameters and files."""
    try:
        stored = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stored == manifest and all(p.is_file() for p in needed)


def begin_build(root: Path) -> None:
    """Create ``root`` and drop any old manifest first: a build interrupted from here must not look complete."""
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST_NAME).unlink(missing_ok=True)


def write_tag_csv(path: Path, rows: Iterable[Sequence[str]]) -> None:
    """``image,labels`` rows, the layout mlic's CSV reader reads by default."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("image", "labels"))
        writer.writerows(rows)


def finish_build(root: Path, manifest: dict) -> None:
    """Write the manifest last, atomically."""
    tmp = root / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, root / MANIFEST_NAME)

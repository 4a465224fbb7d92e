"""What to predict: files, folders, globs and list files, expanded lazily into image paths."""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from mlic.data.images import is_image_file

# Column names that mark the path column of a --list CSV (compared lower-case).
LIST_PATH_COLUMNS = ("image", "path", "file", "filename")


def iter_inputs(
    inputs: Iterable[str | Path], *, list_file: str | Path | None = None, image_root: str | Path | None = None
) -> Iterator[Path]:
    """Files as given, folders recursively (image files only), glob patterns, then the paths of ``list_file``.

    Lazy: folders are walked with ``os.scandir`` one directory at a time (entries sorted by name, so
    the order is deterministic and equals sorting the whole tree), and a list file is read line by
    line. Glob matches are sorted, so a glob's matches are held in memory; use a folder or a list
    file for millions of images. A path that does not exist is kept, so it is reported as an error
    in the output instead of silently vanishing.

    ``list_file``: ``.csv`` (the column named image/path/file/filename, else the first; a first row
    whose first cell is not an image file name is taken as a header) or any other text file with
    one path per line (blank lines and ``#`` comments skipped). Relative paths in it are relative
    to ``image_root`` (default: the list file's folder, as for training CSVs).
    """
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            yield from _walk_images(p)
        elif not p.exists() and any(ch in str(item) for ch in "*?["):
            yield from sorted(Path(m) for m in glob.glob(str(item), recursive=True) if Path(m).is_file())
        else:
            yield p
    if list_file is not None:
        yield from _iter_list_file(Path(list_file), Path(image_root) if image_root else None)


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """``iter_inputs`` as a list (for small inputs; prediction at scale streams ``iter_inputs`` instead)."""
    return list(iter_inputs(inputs))


def _walk_images(folder: Path) -> Iterator[Path]:
    """Image files under ``folder``, depth first, each directory's entries sorted by name.

    Symlinked folders are not followed (no loops), as ``Path.rglob``. A folder that cannot be listed
    is yielded itself, so it shows up in the output as an error instead of being skipped unseen.
    """
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        yield folder
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_images(Path(entry.path))
        elif entry.is_file() and is_image_file(entry.name):
            yield Path(entry.path)


def _iter_list_file(path: Path, image_root: Path | None) -> Iterator[Path]:
    root = image_root if image_root is not None else path.parent
    with open(path, newline="", encoding="utf-8") as f:
        if path.suffix.lower() != ".csv":
            for line in f:
                name = line.strip()
                if name and not name.startswith("#"):
                    yield root / name
            return
        reader = csv.reader(f)
        first = next(reader, None)
        if not first:
            return
        names = [c.strip().lower() for c in first]
        column = next((names.index(n) for n in LIST_PATH_COLUMNS if n in names), 0)
        if column == 0 and names[0] not in LIST_PATH_COLUMNS and is_image_file(first[0].strip()):
            yield root / first[0].strip()  # no header: the first row is data
        for row in reader:
            if len(row) > column and row[column].strip():
                yield root / row[column].strip()

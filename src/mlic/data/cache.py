"""The decoded-image cache: every image decoded and resized once into a uint8 array file, memory-mapped.

Decoding is the slow part of reading an image (a 10-megapixel JPEG takes ~100 ms; even with reduced-size
decoding it is most of a small model's step), and the seed's pipeline paid for it every epoch. Here the first
use of a data set decodes each image once, resizes it to the pipeline's stage size, and stores it; later
epochs and later runs read rows of a memory-mapped file instead.

Layout, under ``cache_root()`` (``$MLIC_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlic``, else ``~/.cache/mlic``), never
inside the user's image folders:

    decoded/<key>/pixels.u8    (N, 3, S, S) uint8; row i is records[i] as staged
    decoded/<key>/meta.json    shape, staging spec, and the rows that could not be decoded with the reason;
                               written last, then the folder is renamed into place: no meta, no cache

The key hashes the format version, the Pillow version (the decoder), the staging spec (size, resize mode,
reduced-size decoding), the pixel limit and every record's absolute path, byte size, inode, and modification
and status-change times in nanoseconds. So editing, replacing, adding, removing or reordering images, or
changing the preprocessing, gives another key and a rebuild. The file's metadata stands for its content, as in
git's index, because hashing every byte of a photo collection at each start would cost more than it saves; the
status-change time (ctime) is what no copy tool can restore, so a file replaced by another of the same size with
its mtime put back (``cp -p``, ``tar x``, ``rsync -t``) still counts as changed.

A cache is pixels that training trusts, so a cache folder that another user owns or may write is never used:
mlic then builds a private one for this process (in a fresh temporary folder) and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL
import torch
from torch.utils.data import DataLoader, Dataset

from mlic.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError
from mlic.data.pixels import PixelLoader
from mlic.data.records import Record
from mlic.data.transforms import Pipeline
from mlic.runtime.console import log, progress_bar
from mlic.runtime.cpu import cpu_count

CACHE_VERSION = 2  # 2: non-JPEG images far above the input size are box-reduced before staging
# Room left on the cache's disk after it is written; below that, "auto" trains without a cache.
FREE_SPACE_MARGIN = 1 << 30


class CacheUnavailable(RuntimeError):
    """The cache cannot be written here (no room, read-only folder); callers may read images directly."""


def cache_root() -> Path:
    if root := os.environ.get("MLIC_CACHE_DIR"):
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlic"


_private_roots: dict[Path, Path] = {}  # an unsafe root -> the private folder used instead, for this process


def usable_root(root: str | Path | None = None) -> Path:
    """The cache folder to use: ``root`` (default ``cache_root()``) when only this user can write it and its
    ``decoded/`` folder, else a private temporary folder (made once per process, mode 0700)."""
    root = Path(root or cache_root())
    problem = _unsafe(root) or _unsafe(root / "decoded")
    if problem is None:
        return root
    if root not in _private_roots:
        _private_roots[root] = Path(tempfile.mkdtemp(prefix="mlic-cache-"))
        log(f"warning: not using the image cache in {root}: {problem}; building a private one in "
            f"{_private_roots[root]}")  # fmt: skip
    return _private_roots[root]


def _unsafe(folder: Path) -> str | None:
    """Why ``folder`` (if it exists) must not hold pixels that training trusts, or None."""
    if not hasattr(os, "getuid"):  # no POSIX owners: nothing to check
        return None
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return f"{folder} is a symbolic link"
    if st.st_uid != os.getuid():
        return f"{folder} belongs to user id {st.st_uid}, not to this user ({os.getuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{folder} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


@dataclass
class DecodedCache:
    """Staged uint8 images of a list of records, read from a memory-mapped file (opened lazily per process,
    so DataLoader workers map the file themselves instead of receiving a copy of it)."""

    folder: Path
    shape: tuple[int, int, int, int]  # (N, 3, S, S)
    errors: dict[int, str]  # row -> why it could not be decoded
    index: dict[str, int]  # absolute path -> row
    _pixels: np.ndarray | None = field(default=None, repr=False)

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_pixels": None}

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.memmap(self.folder / "pixels.u8", dtype=np.uint8, mode="r", shape=self.shape)
        return self._pixels

    def row(self, path: str | Path) -> int:
        return self.index[os.path.abspath(path)]

    def image(self, row: int) -> torch.Tensor:
        """uint8 (3, S, S), copied out of the map (a writable tensor that outlives the mapping)."""
        if row in self.errors:
            raise ImageDecodeError(self.errors[row])
        return torch.from_numpy(np.array(self.pixels[row]))


def cache_key(records: Sequence[Record], pipeline: Pipeline, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    h = hashlib.sha256()
    spec = {"version": CACHE_VERSION, "pillow": PIL.__version__, "max_pixels": max_pixels, **pipeline.cache_spec}
    h.update(json.dumps(spec).encode())
    for record in records:
        path = os.path.abspath(record.path)
        try:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_ino}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode())
        except OSError:  # a missing file is keyed as missing; it becomes an unreadable row
            h.update(f"{path}\0missing\n".encode())
    return h.hexdigest()[:32]


def cache_folder(
    records: Sequence[Record], pipeline: Pipeline, root: str | Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Path:
    return usable_root(root) / "decoded" / cache_key(records, pipeline, max_pixels)


def open_cache(
    records: Sequence[Record], pipeline: Pipeline, root: str | Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> DecodedCache | None:
    """The cache of exactly these records, preprocessing and pixel limit, or None if it has not been built."""
    folder = cache_folder(records, pipeline, root, max_pixels)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        shape = tuple(meta["shape"])
        complete = (folder / "pixels.u8").stat().st_size == int(np.prod(shape)) and shape[0] == len(records)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not complete:
        return None
    errors = {int(k): v for k, v in meta["errors"].items()}
    return DecodedCache(folder, shape, errors, {os.path.abspath(r.path): i for i, r in enumerate(records)})


def ensure_cache(
    records: Sequence[Record], pipeline: Pipeline, *, root: str | Path | None = None, **build_options
) -> tuple[DecodedCache, bool]:
    """(the cache of ``records``, whether it was built now); built by ``build_cache`` (which takes
    ``build_options``) if absent. Raises CacheUnavailable."""
    cache = open_cache(records, pipeline, root, build_options.get("max_pixels", DEFAULT_MAX_PIXELS))
    if cache is not None:
        return cache, False
    return build_cache(records, pipeline, root=root, **build_options), True


def build_cache(
    records: Sequence[Record],
    pipeline: Pipeline,
    *,
    root: str | Path | None = None,
    num_workers: int = -1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    desc: str = "caching",
) -> DecodedCache:
    """Decode and stage every record into a new cache folder (written aside, then renamed into place)."""
    if not records:
        raise CacheUnavailable("nothing to cache: no records")
    folder = cache_folder(records, pipeline, root, max_pixels)
    size = pipeline.stage_size
    shape = (len(records), 3, size, size)
    parent = folder.parent
    try:
        parent.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        parent.mkdir(exist_ok=True, mode=0o700)
        free = shutil.disk_usage(parent).free
    except OSError as exc:
        raise CacheUnavailable(f"cannot create the image cache folder {parent}: {exc}") from exc
    needed = int(np.prod(shape))
    if needed + FREE_SPACE_MARGIN > free:
        raise CacheUnavailable(
            f"the image cache needs {needed / 1e9:.1f} GB in {parent} and {free / 1e9:.1f} GB are free "
            "(set MLIC_CACHE_DIR to a bigger disk, or train with --cache off)"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=parent))
    try:
        pixels = np.memmap(tmp / "pixels.u8", dtype=np.uint8, mode="w+", shape=shape)
        errors = _decode_into(pixels, records, pipeline, num_workers, max_pixels, progress, desc)
        pixels.flush()
        del pixels
        meta = {"version": CACHE_VERSION, "shape": list(shape), **pipeline.cache_spec,
                "errors": {str(k): v for k, v in errors.items()},
                "first_image": str(records[0].path) if records else None}  # fmt: skip
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process (a DDP rank, a parallel run) finished the same cache first
            if open_cache(records, pipeline, root, max_pixels) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cache = open_cache(records, pipeline, root, max_pixels)
    assert cache is not None, folder
    return cache


def clear_cache(root: str | Path | None = None) -> int:
    """Delete every cached data set (and any half-written one); returns the bytes freed."""
    folder = usable_root(root) / "decoded"
    if not folder.is_dir():
        return 0
    freed = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    shutil.rmtree(folder)
    return freed


class _StageDataset(Dataset):
    def __init__(self, records: Sequence[Record], loader: PixelLoader) -> None:
        self.paths = [str(r.path) for r in records]
        self.loader = loader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        return (i, *self.loader.load_or_reason(self.paths[i]))


def _decode_into(pixels, records, pipeline, num_workers, max_pixels, progress, desc) -> dict[int, str]:
    """Fill ``pixels`` row by row; decoding runs in worker processes, writing in this one."""
    if num_workers < 0:
        cpus = cpu_count()
        # building is all decoding: use every core (training's rule keeps cores free for the model)
        num_workers = 0 if len(records) < 128 or cpus < 2 else min(cpus, 8)  # workers start in ~1 s
    loader = DataLoader(
        _StageDataset(records, PixelLoader(pipeline.pre, pipeline.stage, max_pixels)),
        batch_size=16,
        num_workers=num_workers,
        collate_fn=list,
        # workers decode in one thread each: torch's intra-op threads would only fight over the cores
        worker_init_fn=_one_thread if num_workers else None,
    )
    errors: dict[int, str] = {}
    with progress_bar(total=len(records), progress=progress, desc=desc, unit="img", leave=False) as bar:
        for items in loader:
            for i, image, error in items:
                if error is None:
                    pixels[i] = image.numpy()
                else:
                    errors[i] = error
            bar.update(len(items))
    return errors


def _one_thread(worker_id: int) -> None:
    torch.set_num_threads(1)

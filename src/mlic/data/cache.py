"""The decoded-image cache: every image decoded and resized once into a uint8 array file, memory-mapped.

Decoding is the slow part of reading an image (a 10-megapixel JPEG takes ~100 ms; even with reduced-size
decoding it is most of a small model's step), and the seed's pipeline paid for it every epoch. Here the first
use of a data set decodes each image once, resizes it to the pipeline's stage size, and stores it; later
epochs and later runs read rows of a memory-mapped file instead.

Layout, under ``cache_root()`` (``$MLIC_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlic``, else ``~/.cache/mlic``), never
inside the user's image folders:

    decoded/<key>/pixels-00000.u8, ...   (N, 3, S, S) uint8 in files of at most 4 GiB (``CACHE_FILE_BYTES``):
                               row i is records[i] as staged. Open Images at 224 px is 250 GB; one file that
                               size defeats copying, quotas and file systems with a file-size limit.
    decoded/<key>/meta.json    shape, rows per file, staging spec, and the rows that could not be decoded with
                               the reason; written last, then the folder is renamed into place: no meta, no
                               cache. Its modification time is the cache's last use.

A disk budget (``--cache-max-gb``, default 100) bounds all caches together: before a new cache is written,
the least recently used ones are deleted until it fits, except caches used in the last ``IN_USE_S`` seconds
(another run may be reading them); a cache larger than the budget by itself is not built (``auto`` then
reads the image files). Half-written folders of crashed builds older than a day are removed on the way.
Streamed shards are never cached (``mlic.data.streaming``).

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

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
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

CACHE_VERSION = 3  # 2: non-JPEG images far above the input size are box-reduced; 3: pixels in several files
CACHE_FILE_BYTES = 1 << 32
IN_USE_S = 3600  # a cache used this recently may be open in another run: never evicted
STALE_BUILD_S = 86400  # a half-written cache folder this old is a crashed build's
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


def rows_per_file(shape: Sequence[int]) -> int:
    """How many staged images go in one pixel file."""
    return max(1, CACHE_FILE_BYTES // int(np.prod(shape[1:])))


def _file_rows(shape: Sequence[int], per_file: int) -> list[int]:
    n = int(shape[0])
    return [min(per_file, n - start) for start in range(0, n, per_file)]


def _pixel_file(folder: Path, k: int) -> Path:
    return folder / f"pixels-{k:05d}.u8"


@dataclass
class DecodedCache:
    """Staged uint8 images of a list of records, read from memory-mapped files (opened lazily per process,
    so DataLoader workers map the files themselves instead of receiving a copy of them)."""

    folder: Path
    shape: tuple[int, int, int, int]  # (N, 3, S, S)
    errors: dict[int, str]  # row -> why it could not be decoded
    index: dict[str, int]  # absolute path -> row
    per_file: int = 0  # rows in each pixel file (the last may hold fewer); 0: from the shape
    _maps: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.per_file = self.per_file or rows_per_file(self.shape)

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_maps": {}}

    def _map(self, k: int) -> np.ndarray:
        if k not in self._maps:
            rows = _file_rows(self.shape, self.per_file)[k]
            self._maps[k] = np.memmap(_pixel_file(self.folder, k), dtype=np.uint8, mode="r",
                                      shape=(rows, *self.shape[1:]))  # fmt: skip
        return self._maps[k]

    def row(self, path: str | Path) -> int:
        return self.index[os.path.abspath(path)]

    def image(self, row: int) -> torch.Tensor:
        """uint8 (3, S, S), copied out of the map (a writable tensor that outlives the mapping)."""
        if row in self.errors:
            raise ImageDecodeError(self.errors[row])
        k, r = divmod(row, self.per_file)
        return torch.from_numpy(np.array(self._map(k)[r]))


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
        shape, per_file = tuple(meta["shape"]), int(meta["rows_per_file"])
        sizes = [rows * int(np.prod(shape[1:])) for rows in _file_rows(shape, per_file)]
        complete = shape[0] == len(records) and all(
            _pixel_file(folder, k).stat().st_size == size for k, size in enumerate(sizes)
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not complete:
        return None
    with contextlib.suppress(OSError):  # the last use, for the budget's eviction order
        os.utime(folder / "meta.json")
    errors = {int(k): v for k, v in meta["errors"].items()}
    index = {os.path.abspath(r.path): i for i, r in enumerate(records)}
    return DecodedCache(folder, shape, errors, index, per_file)


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
    max_bytes: int = 0,
    progress: bool = True,
    desc: str = "caching",
) -> DecodedCache:
    """Decode and stage every record into a new cache folder (written aside, then renamed into place);
    ``max_bytes``: the budget of all caches together (0: none), made room for by evicting old ones."""
    if not records:
        raise CacheUnavailable("nothing to cache: no records")
    folder = cache_folder(records, pipeline, root, max_pixels)
    size = pipeline.stage_size
    shape = (len(records), 3, size, size)
    parent = folder.parent
    try:
        parent.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        parent.mkdir(exist_ok=True, mode=0o700)
    except OSError as exc:
        raise CacheUnavailable(f"cannot create the image cache folder {parent}: {exc}") from exc
    needed = int(np.prod(shape))
    make_room(parent, needed, max_bytes, keep=folder.name)
    free = shutil.disk_usage(parent).free
    if needed + FREE_SPACE_MARGIN > free:
        raise CacheUnavailable(
            f"the image cache needs {needed / 1e9:.1f} GB in {parent} and {free / 1e9:.1f} GB are free "
            "(set MLIC_CACHE_DIR to a bigger disk, or train with --cache off)"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=parent))
    try:
        per_file = rows_per_file(shape)
        errors = _decode_into(_PixelWriter(tmp, shape, per_file), records, pipeline, num_workers, max_pixels,
                              progress, desc)  # fmt: skip
        meta = {"version": CACHE_VERSION, "shape": list(shape), "rows_per_file": per_file, **pipeline.cache_spec,
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


class _PixelWriter:
    """Rows written into the pixel files of a cache being built, each file created when its first row comes."""

    def __init__(self, folder: Path, shape: tuple[int, ...], per_file: int) -> None:
        self.folder, self.shape, self.per_file = folder, shape, per_file
        self.rows = _file_rows(shape, per_file)
        self.k, self.current = -1, None
        for k, rows in enumerate(self.rows):  # every file exists at its full size, even if rows fail to decode
            np.memmap(_pixel_file(folder, k), dtype=np.uint8, mode="w+", shape=(rows, *shape[1:])).flush()

    def __setitem__(self, row: int, image: np.ndarray) -> None:
        k, r = divmod(row, self.per_file)
        if k != self.k:
            if self.current is not None:
                self.current.flush()
            self.current = np.memmap(_pixel_file(self.folder, k), dtype=np.uint8, mode="r+",
                                     shape=(self.rows[k], *self.shape[1:]))  # fmt: skip
            self.k = k
        self.current[r] = image

    def close(self) -> None:
        if self.current is not None:
            self.current.flush()
            self.current = None


def cache_sizes(decoded: Path) -> list[tuple[float, int, Path]]:
    """(last use, bytes, folder) of every complete cache in ``decoded``, least recently used first."""
    found = []
    for folder in decoded.iterdir() if decoded.is_dir() else ():
        meta = folder / "meta.json"
        if ".tmp-" in folder.name or not meta.is_file():
            continue
        with contextlib.suppress(OSError):
            found.append((meta.stat().st_mtime, sum(f.stat().st_size for f in folder.iterdir()), folder))
    return sorted(found)


def make_room(decoded: Path, needed: int, max_bytes: int, *, keep: str = "") -> None:
    """Delete the least recently used caches in ``decoded`` until ``needed`` more bytes fit ``max_bytes``
    (0: no budget); remove crashed builds' leftovers. Raises CacheUnavailable if it cannot fit."""
    now = time.time()
    for folder in decoded.glob("*.tmp-*"):
        with contextlib.suppress(OSError):
            if now - folder.stat().st_mtime > STALE_BUILD_S:
                shutil.rmtree(folder, ignore_errors=True)
    if max_bytes <= 0:
        return
    if needed > max_bytes:
        raise CacheUnavailable(
            f"the image cache needs {needed / 1e9:.1f} GB, above the cache budget of {max_bytes / 1e9:.1f} GB "
            "(raise --cache-max-gb, or train with --cache off)"
        )
    caches = [c for c in cache_sizes(decoded) if c[2].name != keep]
    total = sum(size for _, size, _ in caches)
    for used, size, folder in caches:
        if total + needed <= max_bytes:
            break
        if now - used < IN_USE_S:
            continue  # perhaps open in another run right now
        shutil.rmtree(folder, ignore_errors=True)
        total -= size
        log(f"cache: deleted {folder.name} ({size / 1e9:.1f} GB, last used {(now - used) / 86400:.1f} days ago) "
            "to stay within --cache-max-gb")  # fmt: skip
    if total + needed > max_bytes:
        raise CacheUnavailable(
            f"the image cache needs {needed / 1e9:.1f} GB and the caches used in the last hour already take "
            f"{total / 1e9:.1f} GB of the {max_bytes / 1e9:.1f} GB budget (raise --cache-max-gb)"
        )


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
    pixels.close()
    return errors


def _one_thread(worker_id: int) -> None:
    torch.set_num_threads(1)

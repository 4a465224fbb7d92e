"""A fast pre-flight scan of a data set's image files: headers and file ends, no pixel decoding.

A bad file found at epoch 3 wastes two epochs and reports a path far from the label file that listed it.
The scan reads only what is cheap, so it can run before every training run (10k files in about a second
on a local disk): the file's size, the header Pillow needs to identify the format and the declared size,
and the last few bytes, where a complete JPEG has its end marker and a complete PNG its IEND chunk.

A missing end marker only makes a file suspect: phones append data after a JPEG's end (Samsung's trailer)
and Pillow reads a PNG without IEND when the pixel data is complete. Suspects are therefore decoded once
with the very decoder training uses (JPEGs at 1/8 scale, which still reads every byte), so the scan never
flags a file that the data loader would read, and healthy data sets pay for no decoding at all.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import stat
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import BinaryIO

import numpy as np
from PIL import Image

from mlic.data.images import DEFAULT_MAX_PIXELS, LIMIT_FLAG, ImageDecodeError, decode_image, read_image_size
from mlic.data.records import DataError, Record
from mlic.data.table import as_table
from mlic.runtime.console import log, progress_bar
from mlic.runtime.cpu import cpu_count

# How far from the end of the file an end marker may sit: covers padding after it, yet stays too short to
# reach back to an EXIF thumbnail's own end marker in a file cut just after its header.
TAIL_BYTES = 32
# Parsing a header in Pillow costs about 200 us of Python per file (the reads are the cheap part), so a large
# set is scanned by one process per core: 900,000 files took 100 s in one process on 2 cores. Below
# PARALLEL_FROM files starting the processes would cost more than it saves. Blocks keep a million-file scan
# from becoming a million tasks.
PARALLEL_FROM, SCAN_BLOCK = 20_000, 2_048

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
_TIFF_STRIP_OFFSETS, _TIFF_STRIP_BYTE_COUNTS, _TIFF_TILE_OFFSETS, _TIFF_TILE_BYTE_COUNTS = 273, 279, 324, 325

# Formats Pillow is not allowed to open here, recognised by their first bytes to say what the file really is
# (a phone's HEIC saved as .jpg is the usual case). offset -> magic -> name.
_UNSUPPORTED_MAGIC = (
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
    (0, b"8BPS", "Photoshop PSD"),
    (0, b"%PDF", "PDF"),
    (0, b"%!PS", "PostScript"),
    (0, b"\x00\x00\x01\x00", "Windows ICO"),
    (0, b"\xff\x0a", "JPEG XL"),
    (4, b"JXL ", "JPEG XL"),
    (0, b"<svg", "SVG"),
    (0, b"<?xml", "XML/SVG"),
)


@dataclass(frozen=True)
class BadImage:
    """One image file that training would skip: its path, the label file line that lists it, and why."""

    path: str
    source: str
    reason: str


def scan_images(
    records: Sequence[Record], *, max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False
) -> list[BadImage]:
    """Every record whose image is missing, empty, not a supported image, over ``max_pixels`` or truncated.

    Same limit and same decoder as MultiLabelDataset, so a flagged file is one the loader would skip.
    Body corruption that leaves the header and the file end intact is only found by a full decode.
    A path listed by several records is read once and reported for each.
    """
    table = as_table(records)
    paths = list(dict.fromkeys(table.paths))  # each file once, in order
    reasons: dict[str, str] = {}
    blocks = [paths[i : i + SCAN_BLOCK] for i in range(0, len(paths), SCAN_BLOCK)]
    with (
        _block_runner(len(paths)) as run,
        progress_bar(total=len(paths), progress=progress, desc="scan images", unit="img", leave=False) as bar,
    ):
        for block, found in zip(blocks, run(partial(_check_block, max_pixels=max_pixels), blocks), strict=True):
            reasons.update((p, r) for p, r in zip(block, found, strict=True) if r is not None)
            bar.update(len(block))
    if not reasons:
        return []
    return [BadImage(path=p, source=s, reason=reasons[p]) for p, s in zip(table.paths, table.sources, strict=True)
            if p in reasons]  # fmt: skip


@contextlib.contextmanager
def _block_runner(num_files: int):
    """``map`` over blocks: in this process for small sets, else in one forked process per core. Fork, as the
    DataLoader's workers do: spawn would re-run a user's script that lacks the ``__main__`` guard, and the
    children only parse file headers, so threads the parent holds (torch's) do not matter to them."""
    workers = cpu_count()
    if num_files < PARALLEL_FROM or workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        yield map
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        yield pool.map


def _check_block(paths: list[str], max_pixels: int) -> list[str | None]:
    return [_check(path, max_pixels) for path in paths]


def format_bad_images(bad: Sequence[BadImage], limit: int = 20) -> str:
    """A summary for logs and error messages: one line per file (label file line, path, reason), up to limit."""
    if not bad:
        return "no unreadable images"
    lines = [f"{len(bad)} unreadable image(s):"]
    lines += [f"  {item.source or '?'}: {item.path}: {item.reason}" for item in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    return "\n".join(lines)


def _check(path: str, max_pixels: int) -> str | None:
    """Why the file at ``path`` cannot be used, or None if its header and end look sound."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        if info.st_size == 0:
            return "empty file (0 bytes)"
        with open(path, "rb") as handle:
            head = handle.read(16)
            handle.seek(0)
            try:
                width, height = read_image_size(handle)
            except ImageDecodeError as exc:
                return _unsupported(head) or exc.reason
            if width * height > max_pixels:
                return (
                    f"image declares {width}x{height} = {width * height:,} pixels, above the limit of "
                    f"{max_pixels:,} ({LIMIT_FLAG} raises it)"
                )
            suspicion = _truncation_suspicion(handle, head, info.st_size)
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:  # permission denied, a symlink loop, an I/O error
        return f"cannot read: {exc.strerror or exc}"
    if suspicion is None:
        return None
    try:  # confirm with the real decoder; draft_size only speeds up JPEGs and still reads the whole file
        decode_image(path, max_pixels=max_pixels, draft_size=(1, 1))
    except ImageDecodeError as exc:
        return f"truncated: {suspicion}; decoding fails: {exc.reason}"
    return None


def _truncation_suspicion(handle: BinaryIO, head: bytes, size: int) -> str | None:
    """What looks cut off, from the first 16 bytes, the last TAIL_BYTES and the size; None if nothing does."""
    handle.seek(max(0, size - TAIL_BYTES))
    tail = handle.read()
    if head.startswith(b"\xff\xd8\xff") and b"\xff\xd9" not in tail:
        return "no JPEG end marker (FFD9) at the end of the file"
    if head.startswith(b"\x89PNG\r\n\x1a\n") and b"IEND" not in tail:
        return "no PNG IEND chunk at the end of the file"
    # A GIF ends with a block terminator (00) and the trailer (3B); 3B alone is a common byte inside the data.
    if head.startswith((b"GIF87a", b"GIF89a")) and not tail.endswith(b"\x00;"):
        return "no GIF trailer (00 3B) at the end of the file"
    if head.startswith(b"BM"):
        declared = int.from_bytes(head[2:6], "little")  # some writers leave it 0
        if declared > size:
            return f"BMP header declares {declared:,} bytes, the file has {size:,}"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        declared = int.from_bytes(head[4:8], "little") + 8
        if declared > size:
            return f"WebP header declares {declared:,} bytes, the file has {size:,}"
    if head.startswith(_TIFF_MAGIC):
        data_end = _tiff_data_end(handle)
        if data_end is not None and data_end > size:
            return f"TIFF pixel data ends at byte {data_end:,}, the file has {size:,}"
    return None


def _tiff_data_end(handle: BinaryIO) -> int | None:
    """Where the first page's strips or tiles end according to its IFD (TIFF has no end marker); None if unknown.

    Only the IFD is read (Pillow parses it at open), not the pixel data.
    """
    try:
        handle.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # corrupt-EXIF and similar warnings: the decoder reports real failures
            im = Image.open(handle, formats=["TIFF"])
        with im:
            tags = im.tag_v2
            offsets = tags.get(_TIFF_STRIP_OFFSETS) or tags.get(_TIFF_TILE_OFFSETS)
            counts = tags.get(_TIFF_STRIP_BYTE_COUNTS) or tags.get(_TIFF_TILE_BYTE_COUNTS)
            if not offsets:
                return None
            if not counts:  # an IFD cut short can lose the counts; data must still start inside the file
                return max(int(offset) for offset in _as_tuple(offsets)) + 1
            pairs = zip(_as_tuple(offsets), _as_tuple(counts), strict=False)
            return max(int(offset) + int(count) for offset, count in pairs)
    except Exception:  # the header already opened once; anything odd here is left to the decoder
        return None


def _as_tuple(value: object) -> tuple:
    return tuple(value) if isinstance(value, tuple | list) else (value,)


def _unsupported(head: bytes) -> str | None:
    """A clearer reason than "not a recognised image" for well-known formats we do not decode."""
    for offset, magic, name in _UNSUPPORTED_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return f"unsupported format ({name}); convert it to JPEG or PNG"
    return None


def drop_bad_images(
    records: list[Record], *, skip: bool, max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False
) -> list[Record]:
    """Scan before training: a missing, unreadable, truncated or oversized file stops the run, naming every one,
    unless ``skip`` (``--skip-bad-images``) leaves them all out with a summary."""
    bad = scan_images(records, max_pixels=max_pixels, progress=progress) if len(records) else []
    if not bad:
        return records
    if not skip:
        details = format_bad_images(bad).split("\n", 1)[1]
        raise DataError(
            f"{len(bad)} unreadable image(s); fix or remove them, or pass --skip-bad-images to leave them out\n"
            + details
        )
    log(format_bad_images(bad) + "\nleaving them out (--skip-bad-images)")
    bad_paths = {b.path for b in bad}
    if isinstance(records, list):
        return [r for r in records if str(r.path) not in bad_paths]
    table = as_table(records)
    return table.take(np.array([i for i, path in enumerate(table.paths) if path not in bad_paths], np.int64))

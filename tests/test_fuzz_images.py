"""Fuzz the real data path with broken image files: no crash, no hang, every file accounted for.

Valid images in every supported format are made on the fly, then mutated (seeded): truncated, bytes flipped
in the header and in the body, emptied, spliced across formats, replaced by garbage, or made to declare a
huge size. All of them go through load_records -> MultiLabelDataset -> build_loader with two workers and
the eval transform, under a hard timeout; then through scan_images.
"""

from __future__ import annotations

import io
import random
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timeouts import hard_timeout

from mlic.data.dataset import MultiLabelDataset
from mlic.data.images import decode_image
from mlic.data.labels import build_vocabulary
from mlic.data.loader import build_loader
from mlic.data.scan import scan_images
from mlic.data.sources import load_records
from mlic.data.transforms import Preprocessing, batch_inputs, build_eval_pipeline

# Far below the default so that a flipped size byte cannot make a worker allocate gigabytes; the
# "huge" mutants declare sizes both between this and Pillow's limit and far above it.
MAX_PIXELS = 1_000_000
IMAGE_SIZE = 16
HEADER_CUT = 16  # truncations before this byte leave no usable header in any format
KINDS = ("truncate", "truncate_header", "flip_header", "flip_body", "zero", "splice", "garbage", "huge")


# ---- valid images ------------------------------------------------------------------------------------------


def _encode(im: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_rgb16(pixels: np.ndarray) -> bytes:
    """16-bit RGB PNG, which Pillow cannot write: (H, W, 3) uint16 big-endian rows with filter byte 0."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def valid_images() -> dict[str, tuple[str, bytes]]:
    """name -> (suffix, bytes): every format and the awkward modes within it."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (18, 24, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (18, 24, 4), dtype=np.uint8))
    gray16 = Image.fromarray(rng.integers(0, 65536, (18, 24), dtype=np.uint16))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the decoder must swap the size
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return {
        "jpeg_rgb": (".jpg", _encode(rgb, "JPEG", quality=90)),
        "jpeg_gray": (".jpg", _encode(rgb.convert("L"), "JPEG")),
        "jpeg_cmyk": (".jpg", _encode(rgb.convert("CMYK"), "JPEG")),
        "jpeg_progressive": (".jpeg", _encode(rgb, "JPEG", progressive=True)),
        "jpeg_exif": (".jpg", _encode(rgb, "JPEG", exif=exif.tobytes())),
        "png_rgb": (".png", _encode(rgb, "PNG")),
        "png_rgba": (".png", _encode(rgba, "PNG")),
        "png_la": (".png", _encode(rgba.convert("LA"), "PNG")),
        "png_palette_trns": (".png", _encode(palette, "PNG", transparency=0)),
        "png_gray16": (".png", _encode(gray16, "PNG")),
        "png_rgb16": (".png", _png_rgb16(rng.integers(0, 65536, (18, 24, 3), dtype=np.uint16))),
        "webp_lossy": (".webp", _encode(rgb, "WEBP", quality=80)),
        "webp_lossless_rgba": (".webp", _encode(rgba, "WEBP", lossless=True)),
        "bmp_rgb": (".bmp", _encode(rgb, "BMP")),
        "bmp_palette": (".bmp", _encode(palette, "BMP")),
        "gif": (".gif", _encode(palette, "GIF", transparency=0)),
        "gif_animated": (".gif", _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])),
        "tiff_raw": (".tif", _encode(rgb, "TIFF")),
        "tiff_lzw": (".tiff", _encode(rgba, "TIFF", compression="tiff_lzw")),
        "tiff_gray16": (".tif", _encode(gray16, "TIFF")),
    }


# ---- mutations ---------------------------------------------------------------------------------------------


def _flip(data: bytes, rng: random.Random, start: int, end: int, count: int) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        pos = rng.randrange(start, end)
        out[pos] ^= rng.randrange(1, 256)
    return bytes(out)


def _declare_size(data: bytes, width: int, height: int) -> bytes | None:
    """The same file with its header declaring width x height, or None for formats not handled here."""
    out = bytearray(data)
    if data.startswith(b"\x89PNG"):  # IHDR data at 16..29, its CRC at 29..33
        out[16:24] = struct.pack(">II", width, height)
        out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])))
    elif data.startswith(b"BM"):
        out[18:26] = struct.pack("<ii", width, height)
    elif data.startswith(b"GIF"):
        out[6:10] = struct.pack("<HH", min(width, 65535), min(height, 65535))
    elif data.startswith(b"\xff\xd8"):  # walk the segments to the start-of-frame marker
        pos = 2
        while pos + 9 < len(data) and data[pos] == 0xFF:
            marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2 : pos + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2):
                out[pos + 5 : pos + 9] = struct.pack(">HH", min(height, 65535), min(width, 65535))
                return bytes(out)
            pos += 2 + length
        return None
    else:
        return None
    return bytes(out)


def mutate(kind: str, data: bytes, other: bytes, rng: random.Random) -> bytes:
    """One seeded mutant of ``data``; ``other`` is a file of another format for splicing."""
    if kind == "truncate":
        return data[: rng.randrange(1, len(data))]
    if kind == "truncate_header":
        return data[: rng.randrange(1, HEADER_CUT)]
    if kind == "flip_header":
        return _flip(data, rng, 0, min(64, len(data)), rng.randint(1, 4))
    if kind == "flip_body":
        return _flip(data, rng, min(64, len(data) - 1), len(data), rng.randint(1, 8))
    if kind == "zero":
        return b""
    if kind == "splice":
        cut = rng.randrange(8, 64)
        return data[:cut] + other[cut:]
    if kind == "garbage":
        return rng.randbytes(rng.randrange(1, 4096))
    if kind == "huge":
        width, height = rng.choice([(2000, 2000), (5000, 3000), (30000, 30000), (65000, 65000)])
        declared = _declare_size(data, width, height)
        assert declared is not None, "huge mutants are only made from PNG, BMP, GIF and JPEG files"
        return declared
    raise ValueError(kind)


@dataclass
class FuzzSet:
    csv: Path
    kinds: dict[str, str]  # absolute path -> "valid" or the mutation kind


def make_fuzz_set(root: Path, num_mutants: int, seed: int = 1234) -> FuzzSet:
    """Valid images plus ``num_mutants`` mutants cycling through KINDS, all listed in root/labels.csv."""
    rng = random.Random(seed)
    bases = valid_images()
    names = sorted(bases)
    sizable = [name for name in names if _declare_size(bases[name][1], 1, 1) is not None]
    files: list[tuple[str, str, bytes]] = [(f"valid_{name}{bases[name][0]}", "valid", bases[name][1]) for name in names]
    for i in range(num_mutants):
        kind = KINDS[i % len(KINDS)]
        name = rng.choice(sizable if kind == "huge" else names)
        other = rng.choice([n for n in names if bases[n][0] != bases[name][0]])
        data = mutate(kind, bases[name][1], bases[other][1], rng)
        files.append((f"{i:05d}_{kind}_{name}{bases[name][0]}", kind, data))
    (root / "images").mkdir()
    lines = ["image,labels"]
    kinds = {}
    for file_name, kind, data in files:
        (root / "images" / file_name).write_bytes(data)
        lines.append(f"images/{file_name},{' '.join(rng.sample(['cat', 'dog', 'bird'], rng.randint(1, 3)))}")
        kinds[str(root / "images" / file_name)] = kind
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return FuzzSet(root / "labels.csv", kinds)


# ---- the run -----------------------------------------------------------------------------------------------


@dataclass
class PipelineResult:
    num_records: int
    good: list[str]  # paths that came out as tensors
    errors: list[tuple[str, str]]  # (path, reason) from Batch.errors
    seconds: float


def run_pipeline(fuzz: FuzzSet) -> PipelineResult:
    """Every listed file through the training data path, eval transform, two workers."""
    start = time.perf_counter()
    records = load_records(fuzz.csv, on_warning=pytest.fail)  # no duplicates were written
    dataset = MultiLabelDataset(
        records,
        build_vocabulary(records),
        build_eval_pipeline(Preprocessing(image_size=IMAGE_SIZE)),
        max_pixels=MAX_PIXELS,
    )
    loader = build_loader(dataset, batch_size=32, shuffle=False, num_workers=2)
    good, errors = [], []
    with hard_timeout(240):
        for batch in loader:
            if len(batch):
                assert batch.images.shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE)
                assert batch.images.dtype == torch.uint8  # staged pixels; floats are made per batch
                x = batch_inputs(batch.images, batch.flips, Preprocessing(image_size=IMAGE_SIZE), torch.device("cpu"))
                finite = torch.isfinite(x).flatten(1).all(dim=1)
                assert bool(finite.all()), f"non-finite pixels in {batch.indices[~finite].tolist()}"
            good += [str(records[i].path) for i in batch.indices.tolist()]
            errors += batch.errors
    del loader  # persistent workers stop with it
    return PipelineResult(len(records), good, errors, time.perf_counter() - start)


def check_pipeline(fuzz: FuzzSet, result: PipelineResult) -> None:
    assert result.num_records == len(fuzz.kinds)
    assert len(result.good) + len(result.errors) == len(fuzz.kinds)
    failed = [path for path, _ in result.errors]
    assert set(result.good) | set(failed) == set(fuzz.kinds)
    assert not set(result.good) & set(failed)
    for path, reason in result.errors:
        assert isinstance(reason, str) and reason.strip(), f"{path}: empty reason"
    by_kind = {path: fuzz.kinds[path] for path in failed}
    for path, kind in fuzz.kinds.items():
        if kind == "valid":
            assert path in result.good, f"valid image rejected: {path}: {dict(result.errors).get(path)}"
        if kind in ("zero", "garbage", "truncate_header", "huge"):
            assert path in by_kind, f"{kind} file decoded: {path}"


def check_scan(fuzz: FuzzSet, result: PipelineResult) -> float:
    """The scan flags every file unusable from its header or cut short, and never a file the loader reads."""
    records = load_records(fuzz.csv)
    start = time.perf_counter()
    bad = scan_images(records, max_pixels=MAX_PIXELS)
    seconds = time.perf_counter() - start
    flagged = {item.path: item for item in bad}
    assert len(flagged) == len(bad)
    rejected = {path for path, _ in result.errors}
    assert set(flagged) <= rejected, "scan flagged a file the loader decodes"
    for path, kind in fuzz.kinds.items():
        if kind in ("zero", "garbage", "truncate_header", "huge"):
            assert path in flagged, f"scan missed a {kind} file: {path}"
        if kind == "truncate" and path in rejected:  # truncations the decoder survives (PNG without IEND) pass
            assert path in flagged, f"scan missed a truncated file: {path}"
    assert all(item.reason and item.source.startswith("labels.csv:") for item in bad)
    assert seconds < 0.005 * len(records) + 2, f"scan took {seconds:.1f} s for {len(records)} files"
    return seconds


def _fuzz(tmp_path: Path, num_mutants: int, seed: int = 1234) -> None:
    fuzz = make_fuzz_set(tmp_path, num_mutants, seed)
    result = run_pipeline(fuzz)
    check_pipeline(fuzz, result)
    scan_seconds = check_scan(fuzz, result)
    print(
        f"{len(fuzz.kinds)} files ({num_mutants} mutants): {len(result.good)} decoded, {len(result.errors)} "
        f"reported bad, pipeline {result.seconds:.1f} s, scan {scan_seconds:.2f} s"
    )


def test_fuzzed_images_never_crash_or_hang_the_loader(tmp_path: Path) -> None:
    _fuzz(tmp_path, 2400)  # about 5 s on two cores


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzzed_images_deep(tmp_path: Path, seed: int) -> None:
    _fuzz(tmp_path, 20_000, seed)


def test_fuzz_inputs_are_what_they_claim() -> None:
    """Bases decode with the real decoder; every mutant differs; a huge mutant declares the size asked for."""
    rng = random.Random(0)
    bases = valid_images()
    for name, (_, data) in bases.items():
        assert decode_image(data).size in ((24, 18), (18, 24)), name
    for kind in KINDS:
        base = bases["png_rgb"][1]
        assert mutate(kind, base, bases["gif"][1], rng) != base, kind
    for name in ("png_rgb", "bmp_rgb", "gif", "jpeg_rgb"):
        assert Image.open(io.BytesIO(_declare_size(bases[name][1], 5000, 3000))).size == (5000, 3000), name

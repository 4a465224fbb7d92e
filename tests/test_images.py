"""Golden tests for the shared image decoder; every fixture is built on the fly in tmp_path."""

from __future__ import annotations

import io
import pickle
import resource
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pngs import png_declaring

from mlic.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    decode_image,
    is_image_file,
    read_image_size,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _save(im: Image.Image, path: Path, **params) -> Path:
    im.save(path, **params)
    return path


def _close(pixel: tuple[int, ...], expected: tuple[int, ...], tol: int) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True))


def _exif_jpeg(path: Path, size: tuple[int, int], orientation: int) -> Path:
    """Blue JPEG with a red square in the STORED top-left corner and the given EXIF orientation."""
    im = Image.new("RGB", size, BLUE)
    im.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(im, path, quality=95, exif=exif.tobytes())


# ---- modes -------------------------------------------------------------------------------------------------


def test_rgba_transparent_region_is_white_and_opaque_kept(tmp_path: Path) -> None:
    im = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent BLACK: must not come out black
    im.paste((255, 0, 0, 255), (0, 0, 4, 8))
    out = decode_image(_save(im, tmp_path / "a.png"))
    assert out.mode == "RGB"
    assert out.getpixel((6, 4)) == WHITE
    assert out.getpixel((1, 4)) == RED


def test_rgba_half_transparent_blends_towards_white(tmp_path: Path) -> None:
    out = decode_image(_save(Image.new("RGBA", (4, 4), (0, 0, 0, 128)), tmp_path / "half.png"))
    assert _close(out.getpixel((1, 1)), (127, 127, 127), 1)


def test_la_transparent_region_is_white(tmp_path: Path) -> None:
    im = Image.new("LA", (8, 8), (0, 0))
    im.paste((50, 255), (0, 0, 4, 8))
    out = decode_image(_save(im, tmp_path / "la.png"))
    assert out.mode == "RGB"
    assert out.getpixel((6, 2)) == WHITE
    assert out.getpixel((1, 2)) == (50, 50, 50)


def test_palette_transparent_index_is_white(tmp_path: Path) -> None:
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))  # index 0 black (transparent), 1 green
    im.paste(1, (0, 0, 4, 8))
    path = _save(im, tmp_path / "p.png", transparency=0)
    assert Image.open(path).mode == "P"  # the fixture really is a palette image with a tRNS index
    out = decode_image(path)
    assert out.getpixel((6, 2)) == WHITE
    assert out.getpixel((1, 2)) == (0, 255, 0)


def test_palette_without_transparency_and_bilevel(tmp_path: Path) -> None:
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 10, 20, 30] + [0] * (256 * 3 - 6))
    assert decode_image(_save(im, tmp_path / "p.gif")).getpixel((0, 0)) == (10, 20, 30)
    bilevel = Image.new("1", (4, 4), 1)
    bilevel.putpixel((0, 0), 0)
    out = decode_image(_save(bilevel, tmp_path / "b.png"))
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((3, 3)) == WHITE


def test_grayscale_has_equal_channels(tmp_path: Path) -> None:
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    out = np.asarray(decode_image(_save(Image.fromarray(gray), tmp_path / "g.png")))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert (out[..., 0] == gray).all() and (out[..., 1] == gray).all() and (out[..., 2] == gray).all()


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 1000, 32896, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "16.png")
    assert Image.open(path).mode.startswith("I;16")
    out = np.asarray(decode_image(path))[0, :, 0].astype(int)
    expected = np.array([0, 1, 4, 128, 255])
    assert np.abs(out - expected).max() <= 1, out


def test_float_tiff_in_unit_range_is_scaled(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    path = _save(Image.fromarray(values), tmp_path / "f.tif")
    assert Image.open(path).mode == "F"
    out = np.asarray(decode_image(path))[0, :, 1].astype(int)
    assert np.abs(out - np.array([0, 128, 255])).max() <= 1, out


@pytest.mark.parametrize(("cmyk", "rgb"), [((0, 255, 255, 0), RED), ((255, 0, 0, 0), (0, 255, 255))])
def test_cmyk_jpeg_decodes_to_expected_colour(tmp_path: Path, cmyk: tuple, rgb: tuple) -> None:
    path = _save(Image.new("CMYK", (16, 16), cmyk), tmp_path / "c.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    out = decode_image(path)
    assert out.mode == "RGB"
    assert _close(out.getpixel((8, 8)), rgb, 12), out.getpixel((8, 8))


# ---- EXIF orientation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "marked", "plain"),
    [
        (6, (30, 10), (10, 10)),  # rotated 90 deg clockwise for display: stored top-left -> top-right
        (8, (10, 50), (10, 10)),  # rotated 90 deg counter-clockwise: stored top-left -> bottom-left
    ],
)
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, marked: tuple, plain: tuple) -> None:
    path = _exif_jpeg(tmp_path / "r.jpg", (60, 40), orientation)
    out = decode_image(path)
    assert out.size == (40, 60)  # stored wide, displayed tall
    assert _close(out.getpixel(marked), RED, 40), out.getpixel(marked)
    assert _close(out.getpixel(plain), BLUE, 40), out.getpixel(plain)
    assert read_image_size(path) == (40, 60)


# ---- broken and hostile inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file_raises_decode_error_naming_path(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)  # noise, so the pixel data is long and truncation hits it
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    full = _save(noise, tmp_path / f"full{suffix}").read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: ")


def test_text_file_named_jpg_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("just some text, definitely not a JPEG\n")
    with pytest.raises(ImageDecodeError, match="not a recognised image") as info:
        decode_image(path)
    assert info.value.path == str(path)
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        read_image_size(path)


def test_missing_file_is_a_decode_error(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(tmp_path / "nope.png")
    assert info.value.path == str(tmp_path / "nope.png")


def test_png_bomb_header_is_rejected_fast_and_small(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(50_000, 50_000))
    limit_before = Image.MAX_IMAGE_PIXELS
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageDecodeError) as info:
            decode_image(path)
    elapsed = time.perf_counter() - start
    rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert elapsed < 1.0
    assert rss_growth_mb < 100
    assert "bomb" in info.value.reason or "pixels" in info.value.reason
    assert info.value.path == str(path)
    assert caught == []  # Pillow's warnings are kept inside
    assert limit_before == Image.MAX_IMAGE_PIXELS  # the global limit is never mutated


def test_max_pixels_is_checked_from_the_header(tmp_path: Path) -> None:
    # 5000 x 5000 is below Pillow's own limit, so only our header check can stop it before decoding.
    data = png_declaring(5000, 5000)
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="--max-image-pixels raises it") as info:
        decode_image(data, max_pixels=1_000_000)
    assert time.perf_counter() - start < 1.0
    assert info.value.path is None and "5000x5000" in str(info.value)
    assert read_image_size(data) == (5000, 5000)  # header-only read does not decode the (bogus) pixels


def test_pillow_bomb_warning_does_not_leak(tmp_path: Path) -> None:
    # Just above Pillow's warning threshold and our default: Pillow warns at open, we refuse from the header.
    data = png_declaring(10_000, 9_000)
    assert DEFAULT_MAX_PIXELS < 10_000 * 9_000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageDecodeError, match="--max-image-pixels raises it"):
            decode_image(data)
    assert caught == []


# ---- sources, draft mode, helpers -------------------------------------------------------------------------


def test_bytes_and_file_object_sources_match_path(tmp_path: Path) -> None:
    im = Image.new("RGBA", (6, 4), (0, 0, 0, 0))
    im.paste((0, 0, 255, 255), (0, 0, 3, 4))
    path = _save(im, tmp_path / "s.png")
    from_path = np.asarray(decode_image(path))
    from_str = np.asarray(decode_image(str(path)))
    from_bytes = np.asarray(decode_image(path.read_bytes()))
    with path.open("rb") as handle:
        from_file = np.asarray(decode_image(handle))
        assert not handle.closed  # a caller's file object stays the caller's to close
    from_buffer = np.asarray(decode_image(io.BytesIO(path.read_bytes())))
    for other in (from_str, from_bytes, from_file, from_buffer):
        assert np.array_equal(from_path, other)
    assert tuple(from_path[0, 5]) == WHITE and tuple(from_path[0, 0]) == BLUE


def test_bytes_error_has_no_path_and_file_object_error_has_its_name(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(b"GIF89a broken")
    assert info.value.path is None and str(info.value) == info.value.reason
    path = tmp_path / "bad.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with path.open("rb") as handle, pytest.raises(ImageDecodeError) as info:
        decode_image(handle)
    assert info.value.path == str(path)


def test_draft_decodes_big_jpeg_smaller_but_not_below_target(tmp_path: Path) -> None:
    im = Image.new("RGB", (1600, 1200), BLUE)
    im.paste(RED, (0, 0, 800, 600))
    path = _save(im, tmp_path / "big.jpg", quality=90)
    assert decode_image(path).size == (1600, 1200)
    small = decode_image(path, draft_size=(200, 200))
    assert small.mode == "RGB"
    assert small.width < 1600 and small.height < 1200
    assert small.width >= 200 and small.height >= 200
    assert _close(small.getpixel((small.width // 4, small.height // 4)), RED, 40)
    assert decode_image(tmp_path.joinpath("big.jpg").read_bytes(), draft_size=(4000, 4000)).size == (1600, 1200)


def test_draft_respects_exif_rotation(tmp_path: Path) -> None:
    # Upright the image is 1200 x 1600. Drafting the STORED image towards (400, 300) would give 1/4 scale,
    # i.e. upright 300 x 400, narrower than asked; the target must be swapped before drafting.
    path = _exif_jpeg(tmp_path / "rot.jpg", (1600, 1200), 6)
    out = decode_image(path, draft_size=(400, 300))
    assert out.height > out.width
    assert out.width >= 400 and out.height >= 300
    assert out.width < 1200


def test_draft_size_is_validated() -> None:
    with pytest.raises(ValueError, match="draft_size"):
        decode_image(b"irrelevant", draft_size=(0, 10))


def test_read_image_size_reads_header(tmp_path: Path) -> None:
    assert read_image_size(_save(Image.new("RGB", (13, 7)), tmp_path / "x.webp")) == (13, 7)
    assert read_image_size(_save(Image.new("L", (5, 9)), tmp_path / "x.bmp")) == (5, 9)


def test_image_extensions_and_is_image_file() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"} == set(IMAGE_EXTENSIONS)
    assert is_image_file("a/B.JPG") and is_image_file(Path("x.TiFf"))
    assert not is_image_file("labels.csv") and not is_image_file("jpg") and not is_image_file("x.jpg.txt")


def test_decode_error_str_pickle_and_single_argument() -> None:
    err = ImageDecodeError("truncated", "/data/a.jpg")
    assert str(err) == "/data/a.jpg: truncated" and err.reason == "truncated" and err.path == "/data/a.jpg"
    copy = pickle.loads(pickle.dumps(err))  # DataLoader workers send errors across processes
    assert (copy.reason, copy.path, str(copy)) == (err.reason, err.path, str(err))
    assert str(ImageDecodeError("worker message")) == "worker message"  # how torch re-raises worker errors

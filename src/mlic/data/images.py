"""Image bytes -> RGB pixels: the one decoder shared by training, evaluation, prediction and serving.

Training and serving call the very same `decode_image`, so a photo cannot look different to the model at
train time and at request time (alpha composited on white in both, EXIF rotation applied in both, ...).

Pillow rather than torchvision.io: torchvision.io decodes JPEG/PNG fast but does not cover what real datasets
contain: EXIF orientation, CMYK and Adobe-inverted CMYK JPEGs, palette images with a transparent index,
16-bit PNGs, TIFF, BMP, animated GIF/WebP. Pillow handles all of these and lets us read the header (and
refuse a decompression bomb) before any pixel is decoded.

Every failure surfaces here as `ImageDecodeError`, never as a bare Pillow exception and never later at
first pixel access: the full decode is forced inside `decode_image`.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from mlic.config import DEFAULT_MAX_IMAGE_PIXELS
from mlic.errors import UserError

# The default limit is Pillow's own (about 9459 x 9459; see mlic.config.DEFAULT_MAX_IMAGE_PIXELS). We enforce
# `max_pixels` from the header ourselves. Pillow refuses images above 2 * Image.MAX_IMAGE_PIXELS at open time,
# so for a larger `max_pixels` its limit is lifted for the duration of the open (`_pillow_limit`).
DEFAULT_MAX_PIXELS = DEFAULT_MAX_IMAGE_PIXELS
LIMIT_FLAG = "--max-image-pixels"  # what a user raises the limit with, named in the error

# Lower-case suffixes treated as images when scanning folders.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Formats Pillow may try. Restricting them matters for untrusted bytes in the HTTP server: e.g. EPS would
# start Ghostscript. JPEG includes MPO, which many phone cameras write inside a .jpg file.
_ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")

_EXIF_ORIENTATION = 0x0112
_WHITE = (255, 255, 255)
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Modes whose values are not intensities (palette indices, bits, big-endian 16-bit): not averaged by reduce()
_NO_REDUCE = ("1", "P", "PA", "I;16", "I;16B", "I;16L", "I;16N")
_LIMIT_LOCK = threading.Lock()

ImageSource = str | Path | bytes | bytearray | memoryview | BinaryIO


class ImageDecodeError(UserError):
    """An image source that did not yield pixels; `path` is None for in-memory bytes."""

    def __init__(self, reason: str, path: str | Path | None = None, kind: str = "corrupt") -> None:
        # args = (reason, path, kind) keeps the error picklable (DataLoader workers send it across processes),
        # and a single-argument call still works, as torch's ExceptionWrapper re-raises with one message.
        super().__init__(reason, path, kind)
        self.reason = reason
        self.path = None if path is None else str(path)
        self.kind = kind  # "too_large" (pixel limit, bombs), "not_image", or "corrupt": for callers to branch on

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


def is_image_file(path: str | Path) -> bool:
    """True if the file name has one of IMAGE_EXTENSIONS (case-insensitive); the contents are not read."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_image_size(source: ImageSource) -> tuple[int, int]:
    """(width, height) as `decode_image` would return it, from the header only (no pixel decoding).

    EXIF orientation is taken into account where the header carries it (JPEG, TIFF, WebP, and PNG with the
    eXIf chunk before the pixel data), so a portrait phone photo reports a portrait size.
    """
    path = _source_path(source)
    with _quiet_pillow(), _open(source, path) as im:
        width, height = im.size
        if _orientation(im) in (5, 6, 7, 8):
            width, height = height, width
    return width, height


def decoded_pixels(source: ImageSource, draft_size: tuple[int, int] | None = None) -> int:
    """How many pixels ``decode_image(source, draft_size=...)`` will decode (a JPEG's reduced DCT scale counted),
    from the header alone: what a server weighs a request by before it spends any memory on it."""
    path = _source_path(source)
    with _quiet_pillow(), _open(source, path) as im:
        if draft_size is not None and im.format in ("JPEG", "MPO"):
            target = draft_size[::-1] if _orientation(im) in (5, 6, 7, 8) else draft_size
            im.draft(im.mode, (int(target[0]), int(target[1])))  # sets the decode size; decodes nothing
        width, height = im.size
    return width * height


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read without decoding a pixel."""

    format: str  # Pillow's name for it: "JPEG", "MPO", "PNG", ...
    mode: str  # the stored pixels' mode: "L", "RGB", "CMYK", ...
    width: int  # as stored, before EXIF orientation
    height: int
    orientation: int  # EXIF 1..8; 1 when absent or unreadable


def read_header(source: ImageSource) -> ImageHeader:
    """The header of ``source``, no pixels decoded: what ``data.device_decode`` sends a file to a decoder by."""
    path = _source_path(source)
    with _quiet_pillow(), _open(source, path) as im:
        return ImageHeader(im.format, im.mode, im.width, im.height, _orientation(im))


def decode_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
    limit_flag: str = LIMIT_FLAG,
) -> Image.Image:
    """Decode a path, bytes or binary file object into an 8-bit RGB image, upright per EXIF orientation.

    max_pixels: images whose header declares more pixels are refused before decoding (bomb protection);
        ``limit_flag`` is the setting the error tells the user to raise.
    draft_size: (width, height) the caller will resize to. JPEGs are decoded at a reduced DCT scale (1/2, 1/4
        or 1/8) that stays at least this large in the upright orientation: a big speed-up for camera photos that
        end up at 224 px. Any image still at least twice that large per side is then box-reduced by a whole
        factor (alpha premultiplied) before its colours are converted, so the copies that conversion and EXIF
        rotation make are small: a 168-megapixel PNG then costs its decoded size once, not four times.
    Transparent pixels are composited on white, since datasets' "transparent background" means paper/page,
    and black would invent a dark frame the model could learn from.
    """
    if draft_size is not None and (len(draft_size) != 2 or min(draft_size) < 1):
        raise ValueError(f"draft_size must be two positive ints, got {draft_size!r}")
    path = _source_path(source)
    with _quiet_pillow(), _pillow_limit(max_pixels), _open(source, path) as im:
        width, height = im.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                f"image declares {width}x{height} = {width * height:,} pixels, above the limit of "
                f"{max_pixels:,} ({limit_flag} raises it)",
                path,
                kind="too_large",
            )
        rgb, failure = _decode_opened(im, draft_size)
    if failure is not None:
        # Raised here, outside any handler: chained to Pillow's exception, whose traceback holds the decoder (and
        # with it the decoded pixels), the error would keep them alive until the cycle collector happened by.
        raise ImageDecodeError(failure, path)
    return rgb  # safe after `im` is closed: a separate image, never the file-backed one


def _decode_opened(im: Image.Image, draft_size: tuple[int, int] | None) -> tuple[Image.Image | None, str | None]:
    """(upright RGB image, None), or (None, why it could not be decoded)."""
    try:
        rotated = _orientation(im) in (5, 6, 7, 8)
        target = None if draft_size is None else (draft_size[::-1] if rotated else draft_size)  # stored axes
        if target is not None and im.format in ("JPEG", "MPO"):
            im.draft(im.mode, (int(target[0]), int(target[1])))
        im.load()  # force the full decode here so truncation surfaces now, not at first pixel access
        orientation = _orientation(im)  # after load: a PNG may carry its eXIf chunk after the pixels
        return _to_rgb(_upright(_reduced(im, target), orientation)), None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, zlib/struct errors
        return None, _describe(exc)


@contextmanager
def _pillow_limit(max_pixels: int) -> Iterator[None]:
    """Let Pillow open images up to ``max_pixels`` (its own bomb check refuses above twice its global limit).

    The global is raised only while a file is opened, under a lock; other threads opening images meanwhile see
    a more permissive Pillow, never a stricter one, and mlic checks their own limit right after opening.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or max_pixels <= limit:
        yield
        return
    with _LIMIT_LOCK:
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _reduced(im: Image.Image, target: tuple[int, int] | None) -> Image.Image:
    """``im`` box-reduced by the largest whole factor that keeps it at least ``target`` (stored axes), or as is."""
    if target is None:
        return im
    factor = min(im.width // max(int(target[0]), 1), im.height // max(int(target[1]), 1))
    if factor < 2 or im.mode in _NO_REDUCE:
        return im
    if im.mode in ("RGBA", "LA"):  # premultiplied, so transparent pixels' colour does not bleed into the average
        return _reduce_premultiplied(im, factor)
    return im.reduce(factor)


def _reduce_premultiplied(im: Image.Image, factor: int, rows: int = 64) -> Image.Image:
    """``im.convert("RGBa").reduce(factor)``, strip by strip, so no full-size premultiplied copy is made.

    Strips are whole multiples of ``factor`` rows high, so every box lies in one strip: the result is the
    whole-image reduction's, pixel for pixel.
    """
    mode = "RGBa" if im.mode == "RGBA" else "La"
    out = Image.new(mode, (-(-im.width // factor), -(-im.height // factor)))
    step = rows * factor
    for top in range(0, im.height, step):
        strip = im.crop((0, top, im.width, min(top + step, im.height))).convert(mode).reduce(factor)
        out.paste(strip, (0, top // factor))
    return out


def _source_path(source: ImageSource) -> str | None:
    """The name to put in error messages: the path, a file object's name, or None for raw bytes."""
    if isinstance(source, str | Path):
        return str(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else None


@contextmanager
def _open(source: ImageSource, path: str | None) -> Iterator[Image.Image]:
    """Image.open with every failure turned into ImageDecodeError; a path is opened and closed here, a caller's
    file object is left open."""
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(source)
    try:
        image = Image.open(source, formats=_ALLOWED_FORMATS)
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not a recognised image", path, kind="not_image") from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"refused as a decompression bomb: {exc}", path, kind="too_large") from exc
    except OSError as exc:  # missing file, permission denied, or a header Pillow could not parse
        raise ImageDecodeError(f"cannot read image: {_describe(exc)}", path) from exc
    except Exception as exc:  # malformed headers raise SyntaxError, ValueError, struct.error, ...
        raise ImageDecodeError(f"malformed image header: {_describe(exc)}", path) from exc
    try:
        with image:  # closes the file only if Pillow opened it (a path), not a caller's handle
            yield image
    finally:
        # Drop the decoded pixels now (the base class's close touches no file): whatever keeps this frame alive
        # (a traceback in a cycle, an exception stored by a thread pool) must not keep them.
        Image.Image.close(image)


@contextmanager
def _quiet_pillow() -> Iterator[None]:
    """Silence Pillow's per-image warnings (bomb warning, corrupt EXIF, palette transparency) while decoding.

    Our max_pixels check is authoritative, and a dataset with many such files would otherwise flood the log.
    Before Python 3.14 the warning filters are process-global, so under threads the worst case is that these
    categories stay silenced process-wide, which is the intent anyway.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def _upright(im: Image.Image, orientation: int) -> Image.Image:
    """A new image (never the file-backed one, which closes) turned upright per EXIF ``orientation``."""
    method = _UPRIGHT.get(orientation)
    return im.transpose(method) if method is not None else im.copy()


def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1..8) from the header; 1 if absent or unreadable. Never decodes pixels."""
    try:
        if im.format == "PNG":
            # PngImageFile.getexif() decodes the whole image when eXIf is not in the header; avoid that.
            raw = im.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = im.getexif()
        value = exif.get(_EXIF_ORIENTATION, 1)
        return value if isinstance(value, int) and 1 <= value <= 8 else 1
    except Exception:  # corrupt EXIF: decoding still works, with the pixels as stored
        return 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, with transparency composited on white."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_rgb(im)
    if mode == "La":  # premultiplied; Pillow cannot go La -> RGBA directly
        im, mode = im.convert("LA"), "LA"
    if im.has_transparency_data:
        # Covers RGBA, LA, PA, RGBa, and P/L/RGB with a tRNS transparent colour or palette index.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return im
    # P, L, 1, CMYK (Pillow already undid Adobe's inverted CMYK while decoding), YCbCr, LAB, HSV.
    return im.convert("RGB")


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float grayscale to 8 bits instead of clipping like Image.convert does.

    I;16* and I: treated as 16-bit (0..65535 -> 0..255, so 65535 -> 255 and 32896 -> 128), which is what
    16-bit PNG/TIFF files hold; values outside that range are clipped. F: values in [0, 1] are scaled by 255,
    anything else is taken as already 0..255 and clipped.
    """
    values = np.asarray(im.convert("I") if im.mode.startswith("I;16") else im)
    if im.mode == "F":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    else:
        values = np.clip(values.astype(np.int64), 0, 65535)
        gray = ((2 * values + 257) // 514).astype(np.uint8)  # round(v / 257) in integer arithmetic
    return Image.fromarray(gray).convert("RGB")


def _describe(exc: BaseException) -> str:
    """Short reason text; Pillow's messages are fine but some exceptions have none."""
    text = str(exc).strip()
    if isinstance(exc, OSError) and "truncated" in text.lower():
        return f"truncated or corrupt file ({text})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

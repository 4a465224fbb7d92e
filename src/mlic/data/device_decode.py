"""Training JPEGs decoded on the training device: the loader's workers read files, nvjpeg decodes each batch.

On a GPU, an epoch that reads image files (no decoded-image cache: ``--cache off``, or a set the cache's disk
cannot hold) is bound by Pillow decoding on the host's few cores while the device waits. Here the DataLoader's
workers only read each file's bytes and header, and the main process decodes the batch's JPEGs on the device
with ``torchvision.io.decode_jpeg`` (nvjpeg, batched, on CUDA), turns them upright per EXIF, and resizes each
with the stage transform itself (``Pipeline.stage``, run on the device tensor), so preprocessing stays defined
once in ``data.transforms``. Flips, targets, masks, order and errors are the DataLoader path's, batch for
batch, mid-epoch resumes included (tested on CPU, where the same code runs with ``device=cpu``).

What differs from the CPU path is the pixels, slightly: there is no reduced-size ("draft") JPEG decoding on the
device, so each JPEG is decoded at full size and then given the same antialiased resize, by a different JPEG
decoder (libjpeg-turbo's in torchvision on CPU, nvjpeg on CUDA). Measured on CPU against the DataLoader path
(tests/test_device_decode.py, 32 px from 320x240 photos): with ``Preprocessing(draft=False)`` identical (both
decoders are libjpeg-turbo); with draft on, the default, at most 3 grey levels apart, mean 0.32, since Pillow's
DCT-scaled decode is a different downscale before the resize (larger photos, reduced further by Pillow, differ
more: 1024x768 to 48 px measured 5, mean 0.8). nvjpeg's own IDCT and upsampling add to this on CUDA.

A file goes the CPU way instead, staged in the worker exactly as ``MultiLabelDataset`` stages it, when it is
not a JPEG (magic bytes), is CMYK or YCCK, declares more pixels than the limit (the CPU path then reports it),
or has no end-of-image marker near its end (a truncated file, which nvjpeg might decode where Pillow refuses).
A JPEG the device decoder rejects (corrupt, or progressive on some nvjpeg versions) is decoded by the CPU path
in the main process. So a bad image is reported as the DataLoader reports it, and never stops a run.

EXIF orientation is applied here, not by ``decode_jpeg(apply_exif_orientation=True)``: torchvision implements
that on CPU only, and this way CUDA runs the very code the CPU tests check. Only for the presets without
per-sample uint8 augmentation (``none``, ``light``), as the device-held cache: crops and colour jitter run per
sample in the workers, on host pixels. Never chosen on CPU, where the workers' decoding stays as it is.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.io

from mlic.data.dataset import Batch, MultiLabelDataset, collate, sample_flip
from mlic.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, ImageHeader, read_header
from mlic.data.loader import build_loader
from mlic.data.pixels import PixelLoader
from mlic.data.sampler import EpochSampler
from mlic.data.transforms import Pipeline

_JPEG_MAGIC = b"\xff\xd8\xff"  # start-of-image marker, then the first segment's marker
_EOI = b"\xff\xd9"  # end of image: entropy-coded data never holds it (a 0xFF there is followed by 0x00 or RSTn)
_TAIL = 64  # how far from the end the end-of-image marker may sit (padding and trailing junk are common)
_DEVICE_MODES = ("L", "RGB")  # CMYK and YCCK stay on Pillow, which undoes Adobe's inversion
# Full-size pixels decoded in one call: decode_jpeg returns every image of a call at full size at once, so a
# batch of 12-megapixel photos would hold gigabytes. 2**28 pixels is 0.8 GB of RGB, ~20 such photos a call.
DECODE_PIXELS = 1 << 28


def device_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader | None:
    """The header of a JPEG the device may decode, or None where the CPU path must decode ``data``."""
    if not data.startswith(_JPEG_MAGIC) or _EOI not in data[-_TAIL:]:
        return None
    try:
        header = read_header(data)
    except ImageDecodeError:  # the CPU path reports why, in its own words
        return None
    if header.format not in ("JPEG", "MPO") or header.mode not in _DEVICE_MODES:
        return None
    return header if header.width * header.height <= max_pixels else None


def decode_stage(
    datas: Sequence[bytes], pipeline: Pipeline, device: torch.device, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[torch.Tensor, list[str | None]]:
    """Encoded images -> uint8 (N, 3, S, S) on ``device``, S the pipeline's stage size, each as
    ``MultiLabelDataset`` stages it but with JPEGs decoded on the device; and for each, None or why it could not
    be read (its row then zero)."""
    loader = PixelLoader(pipeline.pre, pipeline.stage, max_pixels)
    headers = [device_header(bytes(d), max_pixels) for d in datas]
    jpegs = [k for k, h in enumerate(headers) if h is not None]
    encoded = [torch.frombuffer(bytearray(datas[k]), dtype=torch.uint8) for k in jpegs]
    on_device = decode_or_fall_back(encoded, [headers[k] for k in jpegs], pipeline, loader, device)
    outcomes = dict(zip(jpegs, on_device, strict=True))
    images = torch.zeros((len(datas), 3, pipeline.stage_size, pipeline.stage_size), dtype=torch.uint8, device=device)
    reasons: list[str | None] = []
    for k, data in enumerate(datas):
        image, reason = outcomes[k] if k in outcomes else loader.load_or_reason(bytes(data))
        if image is not None:
            images[k] = image.to(device)
        reasons.append(reason)
    return images, reasons


def decode_or_fall_back(
    encoded: list[torch.Tensor], headers: list[ImageHeader], pipeline: Pipeline, loader: PixelLoader,
    device: torch.device,
) -> list[tuple[torch.Tensor | None, str | None]]:  # fmt: skip
    """Each JPEG staged on ``device`` (``decode_jpegs``), or, where the device decoder refused it, by ``loader``
    on the host (which decodes it or says why not): (uint8 (3, S, S) on the device, None) or (None, reason)."""
    out: list[tuple[torch.Tensor | None, str | None]] = []
    for data, image in zip(encoded, decode_jpegs(encoded, headers, pipeline, device), strict=True):
        if image is None:
            image, reason = loader.load_or_reason(data.numpy().tobytes())
            image = None if image is None else image.to(device)
        else:
            reason = None
        out.append((image, reason))
    return out


def decode_jpegs(
    encoded: list[torch.Tensor], headers: list[ImageHeader], pipeline: Pipeline, device: torch.device
) -> list[torch.Tensor | None]:
    """Each JPEG (1-D uint8 on the host) decoded on ``device``, upright, staged: uint8 (3, S, S), or None where
    the decoder refused it. Batched in calls of at most ``DECODE_PIXELS`` full-size pixels."""
    out: list[torch.Tensor | None] = []
    for first, end in _calls(headers):
        for raw, header in zip(_decode(encoded[first:end], device), headers[first:end], strict=True):
            # (3, H, W) full size; staged at once, so the full-size image is freed before the next call's
            out.append(None if raw is None else pipeline.stage(_upright(raw, header.orientation)))
    return out


def _calls(headers: list[ImageHeader]) -> Iterator[tuple[int, int]]:
    """(first, end) of each decode call: consecutive images, at most DECODE_PIXELS together (or one alone)."""
    first, pixels = 0, 0
    for k, h in enumerate(headers):
        if k > first and pixels + h.width * h.height > DECODE_PIXELS:
            yield first, k
            first, pixels = k, 0
        pixels += h.width * h.height
    if first < len(headers):
        yield first, len(headers)


def _decode(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Batched decode; a call that fails (one bad image fails the whole call) is retried image by image."""
    if not encoded:
        return []
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders (for TorchCodec) and warns on every call
            warnings.simplefilter("ignore", DeprecationWarning)
            return list(_decode_jpeg(encoded, device))
    except torch.OutOfMemoryError:
        raise  # a real problem, not a bad file
    except RuntimeError:
        if len(encoded) == 1:
            return [None]
        return [image for one in encoded for image in _decode([one], device)]


def _decode_jpeg(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return torchvision.io.decode_jpeg(encoded, mode=torchvision.io.ImageReadMode.RGB, device=device)


# EXIF orientation -> (transpose first?, axes to flip then): as ``images._UPRIGHT`` turns a Pillow image upright
_UPRIGHT = {2: (False, (-1,)), 3: (False, (-2, -1)), 4: (False, (-2,)), 5: (True, ()), 6: (True, (-1,)),
            7: (True, (-2, -1)), 8: (True, (-2,))}  # fmt: skip


def _upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(3, H, W) as stored -> upright per EXIF ``orientation``."""
    transpose, flip = _UPRIGHT.get(orientation, (False, ()))
    if transpose:
        image = image.transpose(-2, -1)
    return image.flip(flip) if flip else image


def decodes_on_device(dataset: MultiLabelDataset, device: torch.device) -> bool:
    """Whether ``dataset``'s training JPEGs are best decoded on ``device``: CUDA only (on CPU the workers' decoding
    stays as it is), image files read every epoch (a decoded-image cache is faster still), no per-sample uint8
    augmentation (it runs in the workers, on host pixels). The files are local by construction: a record's path
    is a filesystem ``Path`` (a URL would have lost its ``//``), and streamed shards are a ``ShardStream``, never
    a ``MultiLabelDataset``."""
    if device.type != "cuda" or dataset.cache is not None or dataset.pipeline.augment is not None:
        return False
    return hasattr(torchvision.io, "decode_jpeg")  # deprecated in torchvision 0.29, for TorchCodec: gone some day


@dataclass
class _Packet:
    """One batch as a worker hands it over: JPEG bytes end to end in one tensor (one shared-memory transfer, not
    one a file), the images staged on the host stacked."""

    samples: list[dict]  # in sampler order: {"index", "flip"} with "jpeg": k or "staged": k; or {"index", "error"}
    headers: list[ImageHeader]  # of JPEG k
    data: torch.Tensor  # (total bytes,) uint8; JPEG k is data[offsets[k] : offsets[k + 1]]
    offsets: list[int]
    staged: torch.Tensor  # (K, 3, S, S) uint8: images the CPU path staged in the worker

    def encoded(self) -> list[torch.Tensor]:
        return [self.data[a:b] for a, b in itertools.pairwise(self.offsets)]


class _EncodedFiles(torch.utils.data.Dataset):
    """``dataset`` as the workers read it for the device: a JPEG's bytes and header, or anything else staged on
    the host exactly as ``MultiLabelDataset`` stages it."""

    def __init__(self, dataset: MultiLabelDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, i = key if isinstance(key, tuple) else (None, key)
        ds = self.dataset
        try:
            data = Path(ds.records.paths[i]).read_bytes()
        except OSError:
            return ds[key]  # gone since the scan: the dataset reports it, in the DataLoader path's words
        header = device_header(data, ds.loader.max_pixels)
        if header is None:
            return ds[key]  # not for the device: reads the file again, cheap next to decoding it
        return {"index": i, "flip": sample_flip(ds.pipeline, ds.seed, epoch, i), "jpeg": data, "header": header}

    def collate(self, samples: list[dict]) -> _Packet:
        jpegs, headers, staged, out = [], [], [], []
        for s in samples:
            if "jpeg" in s:
                out.append({"index": s["index"], "flip": s["flip"], "jpeg": len(jpegs)})
                jpegs.append(s["jpeg"])
                headers.append(s["header"])
            elif "image" in s:
                out.append({"index": s["index"], "flip": s["flip"], "staged": len(staged)})
                staged.append(s["image"])
            else:
                out.append(s)
        offsets = [0, *itertools.accumulate(len(data) for data in jpegs)]
        data = torch.from_numpy(np.frombuffer(bytearray(b"".join(jpegs)), np.uint8))
        staged = torch.stack(staged) if staged else torch.empty(0, dtype=torch.uint8)
        return _Packet(out, headers, data, offsets, staged)


class DeviceDecodedBatches:
    """Training batches of ``dataset`` in ``sampler``'s order, images on ``device``: JPEGs decoded there, from the
    bytes that ``num_workers`` loader workers read (``build_loader``'s count, ``-1``: the default)."""

    def __init__(self, dataset: MultiLabelDataset, sampler: EpochSampler, batch_size: int, device: torch.device, *,
                 num_workers: int = -1, seed: int = 0):  # fmt: skip
        if dataset.cache is not None or dataset.pipeline.augment is not None:
            raise ValueError("decoding on the device needs a dataset read from files, without per-sample augmentation")
        self.dataset, self.device = dataset, device
        self.loader = build_loader(_EncodedFiles(dataset), batch_size=batch_size, shuffle=False,
                                   num_workers=num_workers, seed=seed, sampler=sampler)  # fmt: skip

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for packet in self.loader:
            yield self._batch(packet)

    def _batch(self, packet: _Packet) -> Batch:
        ds = self.dataset
        decoded = decode_or_fall_back(packet.encoded(), packet.headers, ds.pipeline, ds.loader, self.device)
        samples = []
        for s in packet.samples:
            if "error" in s:
                samples.append(s)
            elif "staged" in s:
                samples.append({"index": s["index"], "image": packet.staged[s["staged"]].to(self.device),
                                "flip": s["flip"]})  # fmt: skip
            elif (image := decoded[s["jpeg"]][0]) is not None:
                samples.append({"index": s["index"], "image": image, "flip": s["flip"]})
            else:
                samples.append({"index": s["index"], "error": (ds.records.paths[s["index"]], decoded[s["jpeg"]][1])})
        return collate(samples, ds.labels)

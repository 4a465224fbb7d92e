"""The images an INT8 export is calibrated and checked on, and their pixels.

By default both come from the run the checkpoint records (``meta["config"]["data"]``): calibration from its
training labels, the check from its validation labels, or, when the run held part of its training labels out
(no ``--val``), from that very part, split again with the run's seed and fraction. ``--calibration-data``
(a label file, or a folder: every image file under it) replaces both, calibrating on most of it and
checking on a held-out share; ``--check-data`` names the check images explicitly. The check images are
never calibrated on, so the check measures the quantised model on images its ranges were not fitted to.

Pixels go through the checkpoint's own eval preprocessing, up to the uint8 ``(3, S, S)`` the exported graph
takes (``mlic.data.pixels.stage_loader``, as ``OnnxPredictor`` feeds it); an image that cannot be read is
skipped and counted, never fatal, unless none can be read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlic.data.pixels import PixelLoader
from mlic.data.sources import load_records
from mlic.data.splits import holdout_split
from mlic.data.streaming import is_stream_spec
from mlic.inference.export_format import ExportError
from mlic.inference.inputs import iter_inputs

HOLDOUT = 0.2  # share of --calibration-data checked on when no --check-data is given
CHECK_IMAGES = 1000  # at most this many held-out images are checked: 99% of their cells is a tight figure
FLAG = "--calibration-data LABELS_OR_FOLDER"


@dataclass(frozen=True)
class ImageSet:
    """Image paths and where they came from, in words for messages and metadata."""

    paths: list[str]
    source: str


def choose_images(
    meta: dict[str, Any], calibration_data: str | Path | None, check_data: str | Path | None, count: int, seed: int = 0
) -> tuple[ImageSet, ImageSet]:
    """(calibration images, at most ``count``, drawn with ``seed``; check images, at most ``CHECK_IMAGES``)."""
    if calibration_data is not None:
        paths = _user_paths(calibration_data, "--calibration-data")
        if check_data is None:
            if len(paths) < 2:
                raise ExportError(
                    f"--calibration-data {calibration_data}: {len(paths)} image(s); need 2 or more "
                    "(most to calibrate on, some held out to check on), or pass --check-data"
                )
            calibration, check = _holdout(paths, seed)
            held = f"{len(check)} of {len(paths)} images of {calibration_data} held out"
            return _sample(calibration, count, seed, str(calibration_data)), _sample(check, CHECK_IMAGES, seed, held)
        calibration = ImageSet(paths, str(calibration_data))
    else:
        calibration, check = _run_images(meta, need_check=check_data is None)
    if check_data is not None:
        check = ImageSet(_user_paths(check_data, "--check-data"), str(check_data))
    return _sample(calibration.paths, count, seed, calibration.source), _sample(
        check.paths, CHECK_IMAGES, seed, check.source
    )


def _run_images(meta: dict[str, Any], need_check: bool) -> tuple[ImageSet, ImageSet | None]:
    """(training images, held-out images) of the run that wrote the checkpoint, as its config names them."""
    config = meta.get("config") or {}
    data = config.get("data") or {}
    train = data.get("train")
    if not train:
        raise ExportError(f"the checkpoint names no training labels to calibrate on; pass {FLAG}")
    read = {
        "fmt": data.get("format", "auto"),
        "image_root": data.get("image_root"),
        "label_delimiter": data.get("label_delimiter"),
        "check_files": False,
    }
    records = load_records(_local(train, "the run's training labels"), **read)
    val, fraction = data.get("val"), float(data.get("val_fraction") or 0.0)
    if val:
        check = ImageSet(list(load_records(_local(val, "the run's validation labels"), **read).paths), str(val))
    elif fraction > 0:
        # the run's own hold-out: the same split, so the check images are ones the model never trained on
        records, held = holdout_split(records, fraction, seed=int(config.get("seed", 0)))
        check = ImageSet(list(held.paths), f"{len(held)} images of {train} the run held out")
    elif need_check:
        raise ExportError(
            f"the run validated on no held-out images to check the INT8 model on; pass --check-data "
            f"LABELS_OR_FOLDER (or {FLAG})"
        )
    else:
        check = None
    return ImageSet(list(records.paths), str(train)), check


def _local(spec: str, what: str) -> Path:
    """``spec`` as a label file or folder on this machine, or a one-line error saying what to pass instead."""
    if is_stream_spec(spec):
        raise ExportError(f"{what} are shards ({spec}), which INT8 calibration does not read; pass {FLAG}")
    if not Path(spec).exists():
        raise ExportError(f"{what} {spec} are not on this machine; pass {FLAG}")
    return Path(spec)


def _user_paths(spec: str | Path, flag: str) -> list[str]:
    """Image paths of a label file (its images, read as training reads it) or of a folder (every image in it)."""
    path = Path(spec)
    if not path.exists():
        raise ExportError(f"{flag} {spec}: not found")
    if is_stream_spec(spec):
        raise ExportError(f"{flag} {spec}: shards are not read here; pass a label file or an image folder")
    paths = (
        [str(p) for p in iter_inputs([path])] if path.is_dir() else list(load_records(path, check_files=False).paths)
    )
    if not paths:
        raise ExportError(f"{flag} {spec}: no image files in it")
    return paths


def _holdout(paths: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """(calibration part, check part) of ``paths``: a seeded ``HOLDOUT`` share, at least one image, held out."""
    order = np.random.default_rng(seed).permutation(len(paths))
    held = min(max(1, round(HOLDOUT * len(paths))), CHECK_IMAGES, len(paths) - 1)
    return [paths[i] for i in sorted(order[held:])], [paths[i] for i in sorted(order[:held])]


def _sample(paths: Sequence[str], count: int, seed: int, source: str) -> ImageSet:
    """At most ``count`` of ``paths``, a seeded draw in file order (all of them when there are fewer)."""
    if len(paths) > count:
        rows = np.sort(np.random.default_rng(seed).choice(len(paths), size=count, replace=False))
        paths = [paths[i] for i in rows]
    return ImageSet(list(paths), source)


def read_batches(
    paths: Sequence[str], loader: PixelLoader, batch_size: int = 32
) -> Iterator[tuple[torch.Tensor | None, list[tuple[str, str]]]]:
    """(uint8 (B, 3, S, S) of the readable images or None, [(path, why not)] of the others), batch by batch."""
    for start in range(0, len(paths), batch_size):
        images, failed = [], []
        for path in paths[start : start + batch_size]:
            pixels, reason = loader.load_or_reason(path)
            if pixels is None:
                failed.append((path, reason))
            else:
                images.append(pixels)
        yield (torch.stack(images) if images else None), failed


def read_all(images: ImageSet, loader: PixelLoader, what: str) -> tuple[torch.Tensor, int]:
    """(uint8 (N, 3, S, S) of the readable images of ``images``, how many could not be read); none: an error."""
    batches, failed = [], []
    for batch, bad in read_batches(images.paths, loader):
        failed += bad
        if batch is not None:
            batches.append(batch)
    if not batches:
        first = f" (first: {failed[0][0]}: {failed[0][1]})" if failed else ""
        raise ExportError(
            f"none of the {len(images.paths)} {what} images of {images.source} could be read{first}; pass {FLAG}"
        )
    return torch.cat(batches), len(failed)

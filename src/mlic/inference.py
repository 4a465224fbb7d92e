"""Predictors: a model becomes eval preprocessing + sigmoid + thresholds, in one object.

``Predictor`` runs a checkpoint in PyTorch; ``mlic.onnx_predictor.OnnxPredictor`` runs an exported
ONNX model with the same interface. Both decode with the one decoder and resize with the one eval
transform used by training, so predictions cannot drift from what was measured at evaluation time.

Inputs are streamed: ``iter_inputs`` expands files, folders, globs and list files lazily, and
``predict_paths`` feeds them to a DataLoader through its sampler, so neither the paths nor the
images nor the results of a run are ever all in memory.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from mlic.checkpoint import load_checkpoint
from mlic.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, is_image_file
from mlic.data.transforms import Preprocessing, build_eval_transform, build_stage_transform
from mlic.engine.runtime import select_device
from mlic.models.fold import inference_form

# Column names that mark the path column of a --list CSV (compared lower-case).
LIST_PATH_COLUMNS = ("image", "path", "file", "filename")


@dataclass
class Prediction:
    path: str
    labels: list[str]  # predicted label set, in vocabulary order
    probabilities: dict[str, float]  # every class
    error: str | None = None  # set when the image could not be read; labels are then empty

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "labels": self.labels, "probabilities": self.probabilities, "error": self.error}

    def top_k(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` most probable classes, highest first, whatever their thresholds (ties: vocabulary order)."""
        return sorted(self.probabilities.items(), key=lambda item: -item[1])[:k]


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


def build_uint8_eval_transform(pre: Preprocessing) -> v2.Compose:
    """PIL RGB image -> uint8 (3, S, S): the eval transform up to and without the float conversion.

    It is the stage transform the training cache stores, so resizing is exactly the training one; the
    float conversion and normalisation happen inside exported models instead.
    """
    return build_stage_transform(pre)


def resolve_thresholds(
    stored: Sequence[float] | None, n: int, override: float | None, method: str | None = None
) -> tuple[np.ndarray, str]:
    """(per-class thresholds, where they came from): ``override``, else the stored ones, else 0.5."""
    if override is not None:
        return np.full(n, override, np.float64), f"override {override}"
    if stored is not None:
        return np.asarray(stored, np.float64), f"checkpoint ({method or 'tuned'})"
    return np.full(n, 0.5, np.float64), "0.5 (checkpoint has no tuned thresholds)"


class _DecodeDataset(Dataset):
    """Keys are the paths themselves: the DataLoader's sampler is the (lazy) path stream."""

    def __init__(self, transform, max_pixels: int, draft_size: tuple[int, int] | None) -> None:
        self.transform, self.max_pixels, self.draft_size = transform, max_pixels, draft_size

    def __getitem__(self, path: str):
        try:
            image = decode_image(path, max_pixels=self.max_pixels, draft_size=self.draft_size)
            return path, self.transform(image), None
        except ImageDecodeError as exc:
            return path, None, exc.reason
        except OSError as exc:
            return path, None, exc.strerror or str(exc)


def _collate(items):
    return items


class BasePredictor:
    """Thresholds, labelling and streaming shared by every predictor.

    Subclasses set ``class_names``, ``preprocessing``, ``transform`` (PIL RGB -> one model input) and
    implement ``predict_probabilities`` on a batch of such inputs.
    """

    class_names: list[str]
    preprocessing: Preprocessing
    transform: Any

    def _set_thresholds(
        self, stored: Sequence[float] | None, override: float | None, method: str | None = None
    ) -> None:
        self.thresholds, self.threshold_source = resolve_thresholds(stored, len(self.class_names), override, method)

    def predict_probabilities(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) batch of ``transform`` outputs -> (B, C) probabilities."""
        raise NotImplementedError

    def predict_image(self, image: Any) -> Prediction:
        """Label one image given as a path, bytes, or an RGB PIL image."""
        if hasattr(image, "mode"):
            pil, name = image.convert("RGB"), "<image>"
        else:
            pil, name = (
                decode_image(image, draft_size=self.preprocessing.draft_size),
                str(image) if not isinstance(image, bytes) else "<bytes>",
            )
        probs = self.predict_probabilities(self.transform(pil).unsqueeze(0))[0]
        return self._prediction(name, probs)

    def predict_paths(
        self, paths: Iterable[str | Path], *, batch_size: int = 32, num_workers: int = 0, progress: bool = False
    ) -> Iterator[Prediction]:
        """Stream predictions for ``paths`` in order; unreadable files yield a Prediction with ``error`` set.

        ``paths`` may be a lazy iterator: it is consumed as batches are needed (a few batches ahead
        with workers). Batch k always holds inputs k*B .. k*B+B-1, which ``--resume`` relies on.
        """
        from torch.utils.data import DataLoader
        from tqdm import tqdm

        total = len(paths) if isinstance(paths, Sized) else None
        loader = DataLoader(
            _DecodeDataset(self.transform, DEFAULT_MAX_PIXELS, self.preprocessing.draft_size),
            batch_size=batch_size,
            sampler=(str(Path(p)) for p in paths),
            num_workers=num_workers,
            collate_fn=_collate,
        )
        with tqdm(total=total, unit="img", disable=not progress, desc="predict", smoothing=0.1) as bar:
            for items in loader:
                good = [x for _, x, err in items if err is None]
                probs = iter(self.predict_probabilities(torch.stack(good)) if good else ())
                for path, _, err in items:
                    yield self._prediction(path, next(probs)) if err is None else Prediction(path, [], {}, error=err)
                bar.update(len(items))

    def _prediction(self, path: str, probs: np.ndarray) -> Prediction:
        on = probs.astype(np.float64) >= self.thresholds
        labels = [n for n, flag in zip(self.class_names, on, strict=True) if flag]
        return Prediction(path, labels, {n: float(p) for n, p in zip(self.class_names, probs, strict=True)})


class Predictor(BasePredictor):
    """Loaded checkpoint ready to label images. ``threshold`` overrides the checkpoint's thresholds."""

    def __init__(
        self, model: torch.nn.Module, meta: dict[str, Any], device: torch.device, threshold: float | None = None
    ):
        # BatchNorm folded into the convolutions, channels-last layout: same outputs to float rounding, faster
        model, self.channels_last = inference_form(model, device)
        self.model, self.meta, self.device = model, meta, device
        self.class_names = list(meta["class_names"])
        self.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        self.transform = build_eval_transform(self.preprocessing)
        self._set_thresholds(meta.get("thresholds"), threshold, (meta.get("threshold_info") or {}).get("method"))

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "auto", threshold: float | None = None) -> Predictor:
        dev = select_device(device)
        model, meta = load_checkpoint(path, device=dev)
        return cls(model, meta, dev, threshold)

    @torch.inference_mode()  # cheaper than no_grad: no version counters; outputs never need autograd
    def predict_probabilities(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) preprocessed (normalised float) images -> (B, C) probabilities."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return torch.sigmoid(self.model(images.to(self.device, memory_format=fmt)).float()).cpu().numpy()


def load_predictor(path: str | Path, *, device: str = "auto", threshold: float | None = None) -> BasePredictor:
    """A ``Predictor`` for a checkpoint folder, an ``OnnxPredictor`` for an exported ``.onnx`` file."""
    if Path(path).suffix.lower() == ".onnx":
        from mlic.onnx_predictor import OnnxPredictor

        return OnnxPredictor.from_file(path, threshold=threshold)
    return Predictor.from_checkpoint(path, device=device, threshold=threshold)

"""Predictors: a model becomes eval preprocessing + sigmoid + thresholds, in one object.

``Predictor`` runs a checkpoint in PyTorch; ``mlic.inference.onnx_predictor.OnnxPredictor`` runs an exported
ONNX model with the same interface. Both get their pixels through ``mlic.data.pixels`` (the one decoder and
the eval transform used by training), so predictions cannot drift from what was measured at evaluation
time, and both label with ``labels_at``, the rule ``mlic serve`` applies too.

``predict_paths`` streams: paths are fed to a DataLoader through its sampler, so neither the paths nor the
images nor the results of a run are ever all in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mlic.checkpoint import load_checkpoint
from mlic.data.images import DEFAULT_MAX_PIXELS
from mlic.data.pixels import PixelLoader, eval_loader
from mlic.data.transforms import Preprocessing
from mlic.evaluation.thresholds import resolve_thresholds
from mlic.models.fold import inference_form
from mlic.runtime.device import select_device


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


def labels_at(probs: np.ndarray, thresholds: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """The predicted label set: every class whose probability is at least its threshold, in vocabulary order.

    Compared in float64, where float32 probabilities and float64 thresholds are both exact.
    """
    on = np.asarray(probs, np.float64) >= thresholds
    return [name for name, flag in zip(class_names, on, strict=True) if flag]


class _DecodeDataset(Dataset):
    """Keys are the paths themselves: the DataLoader's sampler is the (lazy) path stream."""

    def __init__(self, loader: PixelLoader) -> None:
        self.loader = loader

    def __getitem__(self, path: str):
        return (path, *self.loader.load_or_reason(path))


def _collate(items):
    return items


class BasePredictor:
    """Thresholds, labelling and streaming shared by every predictor.

    Subclasses set ``class_names``, ``preprocessing``, ``loader`` (image source -> one model input) and
    implement ``predict_probabilities`` on a batch of such inputs.
    """

    class_names: list[str]
    preprocessing: Preprocessing
    loader: PixelLoader

    def _set_thresholds(
        self, stored: Sequence[float] | None, override: float | None, method: str | None = None
    ) -> None:
        self.thresholds, self.threshold_source = resolve_thresholds(stored, len(self.class_names), override, method)

    def predict_probabilities(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) batch of ``loader`` outputs -> (B, C) probabilities."""
        raise NotImplementedError

    def predict_image(self, image: Any) -> Prediction:
        """Label one image given as a path, bytes, or an RGB PIL image."""
        if hasattr(image, "mode"):
            pixels, name = self.loader.transform(image.convert("RGB")), "<image>"
        else:
            pixels, name = self.loader(image), str(image) if not isinstance(image, bytes) else "<bytes>"
        return self._prediction(name, self.predict_probabilities(pixels.unsqueeze(0))[0])

    def predict_paths(
        self, paths: Iterable[str | Path], *, batch_size: int = 32, num_workers: int = 0, progress: bool = False
    ) -> Iterator[Prediction]:
        """Stream predictions for ``paths`` in order; unreadable files yield a Prediction with ``error`` set.

        ``paths`` may be a lazy iterator: it is consumed as batches are needed (a few batches ahead
        with workers). Batch k always holds inputs k*B .. k*B+B-1, which ``--resume`` relies on.
        ``num_workers`` -1: decoding processes chosen from the CPU count, as for training.
        """
        from torch.utils.data import DataLoader

        from mlic.runtime.console import progress_bar
        from mlic.runtime.cpu import default_num_workers

        total = len(paths) if isinstance(paths, Sized) else None
        loader = DataLoader(
            _DecodeDataset(self.loader),
            batch_size=batch_size,
            sampler=(str(Path(p)) for p in paths),
            num_workers=default_num_workers() if num_workers < 0 else num_workers,
            collate_fn=_collate,
        )
        with progress_bar(total=total, progress=progress, unit="img", desc="predict", smoothing=0.1) as bar:
            for items in loader:
                good = [x for _, x, err in items if err is None]
                probs = iter(self.predict_probabilities(torch.stack(good)) if good else ())
                for path, _, err in items:
                    yield self._prediction(path, next(probs)) if err is None else Prediction(path, [], {}, error=err)
                bar.update(len(items))

    def _prediction(self, path: str, probs: np.ndarray) -> Prediction:
        labels = labels_at(probs, self.thresholds, self.class_names)
        return Prediction(path, labels, {n: float(p) for n, p in zip(self.class_names, probs, strict=True)})


class Predictor(BasePredictor):
    """Loaded checkpoint ready to label images. ``threshold`` overrides the checkpoint's thresholds."""

    def __init__(
        self,
        model: torch.nn.Module,
        meta: dict[str, Any],
        device: torch.device,
        threshold: float | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        # BatchNorm folded into the convolutions, channels-last layout: same outputs to float rounding, faster
        model, self.channels_last = inference_form(model, device)
        self.model, self.meta, self.device = model, meta, device
        self.class_names = list(meta["class_names"])
        self.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        self.loader = eval_loader(self.preprocessing, max_pixels)
        self._set_thresholds(meta.get("thresholds"), threshold, (meta.get("threshold_info") or {}).get("method"))

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        threshold: float | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> Predictor:
        dev = select_device(device)
        model, meta = load_checkpoint(path, device=dev)
        return cls(model, meta, dev, threshold, max_pixels)

    @torch.inference_mode()  # cheaper than no_grad: no version counters; outputs never need autograd
    def predict_probabilities(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) preprocessed (normalised float) images -> (B, C) probabilities."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return torch.sigmoid(self.model(images.to(self.device, memory_format=fmt)).float()).cpu().numpy()

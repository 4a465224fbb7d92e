"""Predictors: a model becomes eval preprocessing + sigmoid + thresholds, in one object.

``Predictor`` runs a checkpoint in PyTorch, or with ``engine="onnx"`` (``"auto"``: on a CPU with the export
extra) in ONNX Runtime on an ONNX copy of its model (``mlic.inference.engines``), to 1e-4 of PyTorch's answers
and faster at batch 1; ``mlic.inference.onnx_predictor.OnnxPredictor`` runs an exported
ONNX model with the same interface. Both get their pixels through ``mlic.data.pixels`` (the one decoder and
the eval transform used by training), so predictions cannot drift from what was measured at evaluation
time, and both label with ``labels_at``, the rule ``mlic serve`` applies too.

``embed`` / ``embed_paths`` give each image's embedding instead: the model's pooled backbone features
(``mlic.inference.features``), from the same pixels.

``predict_paths`` and ``embed_paths`` stream: paths are fed to a DataLoader through its sampler, so neither
the paths nor the images nor the results of a run are ever all in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset

from mlic.checkpoint import load_checkpoint
from mlic.data.images import DEFAULT_MAX_PIXELS
from mlic.data.pixels import PixelLoader, eval_loader
from mlic.data.transforms import Preprocessing
from mlic.evaluation.thresholds import resolve_thresholds
from mlic.inference.engines import start_engine
from mlic.inference.features import pooled_features
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


@dataclass
class EmbeddingBatch:
    """The embeddings of one input batch: its readable images in input order, and the unreadable ones."""

    paths: list[str]
    vectors: np.ndarray | None  # (len(paths), D) float32; None when no image of the batch was readable
    failed: list[tuple[str, str]]  # (path, why it could not be read)


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
        name = "<image>" if hasattr(image, "mode") else "<bytes>" if isinstance(image, bytes) else str(image)
        return self._prediction(name, self.predict_probabilities(self._pixels(image).unsqueeze(0))[0])

    def predict_paths(
        self, paths: Iterable[str | Path], *, batch_size: int = 32, num_workers: int = 0, progress: bool = False
    ) -> Iterator[Prediction]:
        """Stream predictions for ``paths`` in order; unreadable files yield a Prediction with ``error`` set.

        ``paths`` may be a lazy iterator: it is consumed as batches are needed (a few batches ahead
        with workers). Batch k always holds inputs k*B .. k*B+B-1, which ``--resume`` relies on.
        ``num_workers`` -1: decoding processes chosen from the CPU count, as for training.
        """
        for items in self._decoded_batches(paths, batch_size, num_workers, progress, "predict"):
            good = [x for _, x, err in items if err is None]
            probs = iter(self.predict_probabilities(torch.stack(good)) if good else ())
            for path, _, err in items:
                yield self._prediction(path, next(probs)) if err is None else Prediction(path, [], {}, error=err)

    def embed_batch(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) batch of ``loader`` outputs -> (B, D) float32 embeddings (pooled features)."""
        raise NotImplementedError

    def embedding_dim(self) -> int:
        """D, the length of one embedding (one blank image through the model)."""
        size = self.preprocessing.image_size
        return int(self.embed_batch(self.loader.transform(PIL.Image.new("RGB", (size, size))).unsqueeze(0)).shape[1])

    def embed(self, images: Iterable[Any], *, batch_size: int = 32) -> np.ndarray:
        """(N, D) float32 embeddings of ``images`` (paths, bytes or RGB PIL images), in input order.

        Decoded and preprocessed as ``predict_image`` does; an unreadable image raises ``ImageDecodeError``
        naming it. For many files stream them with ``embed_paths`` (or ``mlic embed``) instead.
        """
        chunks, batch = [], []
        for image in images:
            batch.append(self._pixels(image))
            if len(batch) == batch_size:
                chunks.append(self.embed_batch(torch.stack(batch)))
                batch = []
        if batch:
            chunks.append(self.embed_batch(torch.stack(batch)))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.embedding_dim()), np.float32)

    def embed_paths(
        self, paths: Iterable[str | Path], *, batch_size: int = 32, num_workers: int = 0, progress: bool = False
    ) -> Iterator[EmbeddingBatch]:
        """Stream the embeddings of ``paths``, one ``EmbeddingBatch`` per input batch, in input order.

        Lazy and ordered as ``predict_paths``; unreadable files are listed in each batch's ``failed``.
        """
        for items in self._decoded_batches(paths, batch_size, num_workers, progress, "embed"):
            good = [(path, x) for path, x, err in items if err is None]
            vectors = self.embed_batch(torch.stack([x for _, x in good])) if good else None
            failed = [(path, err) for path, _, err in items if err is not None]
            yield EmbeddingBatch([path for path, _ in good], vectors, failed)

    def _pixels(self, image: Any) -> torch.Tensor:
        if hasattr(image, "mode"):
            return self.loader.transform(image.convert("RGB"))
        return self.loader(image)

    def _decoded_batches(
        self, paths: Iterable[str | Path], batch_size: int, num_workers: int, progress: bool, desc: str
    ) -> Iterator[list[tuple[str, torch.Tensor | None, str | None]]]:
        """(path, loader output or None, why unreadable or None) of each input, a batch at a time, in order."""
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
        with progress_bar(total=total, progress=progress, unit="img", desc=desc, smoothing=0.1) as bar:
            for items in loader:
                yield items
                bar.update(len(items))

    def _prediction(self, path: str, probs: np.ndarray) -> Prediction:
        labels = labels_at(probs, self.thresholds, self.class_names)
        return Prediction(path, labels, {n: float(p) for n, p in zip(self.class_names, probs, strict=True)})


class Predictor(BasePredictor):
    """Loaded checkpoint ready to label images. ``threshold`` overrides the checkpoint's thresholds.

    ``engine``: what runs ``predict_probabilities``: ``torch``, ``onnx`` (ONNX Runtime on the CPU, ``num_threads``
    intra-op threads) or ``auto`` (onnx on a CPU when the export extra is installed); ``self.engine`` says which
    runs. ``self.model`` stays the PyTorch model either way (embeddings, Grad-CAM and evaluation use it).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        meta: dict[str, Any],
        device: torch.device,
        threshold: float | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        *,
        engine: str = "torch",
        num_threads: int | None = None,
    ):
        # BatchNorm folded into the convolutions, channels-last layout: same outputs to float rounding, faster
        model, self.channels_last = inference_form(model, device)
        self.model, self.meta, self.device = model, meta, device
        size = int(meta["preprocessing"]["image_size"])
        self.engine, self._onnx = start_engine(engine, model, device, size, num_threads)
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
        engine: str = "torch",
        num_threads: int | None = None,
    ) -> Predictor:
        """Load a checkpoint folder; ``engine`` and ``num_threads`` as in the class docstring (default: PyTorch,
        bit-exact with evaluation; ``engine="auto"`` for the fastest on this machine)."""
        dev = select_device(device)
        model, meta = load_checkpoint(path, device=dev)
        return cls(model, meta, dev, threshold, max_pixels, engine=engine, num_threads=num_threads)

    @torch.inference_mode()  # cheaper than no_grad: no version counters; outputs never need autograd
    def predict_probabilities(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) preprocessed (normalised float) images -> (B, C) probabilities."""
        if self._onnx is not None:  # the same inputs and, to 1e-4, the same outputs (checked when it opened)
            return self._onnx(images)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return torch.sigmoid(self.model(images.to(self.device, memory_format=fmt)).float()).cpu().numpy()

    @torch.inference_mode()
    def embed_batch(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) preprocessed images -> (B, D) float32 pooled features (``mlic.inference.features``)."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = images.to(self.device, memory_format=fmt)
        return pooled_features(self.model, x).float().cpu().numpy()

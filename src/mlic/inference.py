"""Predictor: a checkpoint becomes model + eval preprocessing + sigmoid + thresholds, in one object.

The same decoder and eval transform as training are used, so predictions cannot drift from what
was measured at evaluation time.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mlic.checkpoint import load_checkpoint
from mlic.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, is_image_file
from mlic.data.transforms import Preprocessing, build_eval_transform
from mlic.engine.runtime import select_device


@dataclass
class Prediction:
    path: str
    labels: list[str]  # predicted label set, in vocabulary order
    probabilities: dict[str, float]  # every class
    error: str | None = None  # set when the image could not be read; labels are then empty

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "labels": self.labels, "probabilities": self.probabilities, "error": self.error}


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders recursively (image files only, sorted), glob patterns expanded.

    A path that does not exist is kept, so it is reported as an error in the output instead of
    silently vanishing.
    """
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f))
        elif not p.exists() and any(ch in str(item) for ch in "*?["):
            paths += sorted(Path(m) for m in glob.glob(str(item), recursive=True) if Path(m).is_file())
        else:
            paths.append(p)
    return paths


class _PathDataset(Dataset):
    def __init__(self, paths: Sequence[Path], transform, max_pixels: int) -> None:
        self.paths, self.transform, self.max_pixels = list(paths), transform, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(decode_image(self.paths[i], max_pixels=self.max_pixels)), None
        except ImageDecodeError as exc:
            return i, None, exc.reason
        except OSError as exc:
            return i, None, exc.strerror or str(exc)


def _collate(items):
    return items


class Predictor:
    """Loaded checkpoint ready to label images. ``threshold`` overrides the checkpoint's thresholds."""

    def __init__(
        self, model: torch.nn.Module, meta: dict[str, Any], device: torch.device, threshold: float | None = None
    ):
        self.model, self.meta, self.device = model.eval(), meta, device
        self.class_names: list[str] = list(meta["class_names"])
        self.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        self.transform = build_eval_transform(self.preprocessing)
        n = len(self.class_names)
        if threshold is not None:
            self.thresholds, self.threshold_source = np.full(n, threshold, np.float64), f"override {threshold}"
        elif meta.get("thresholds") is not None:
            self.thresholds = np.asarray(meta["thresholds"], np.float64)
            self.threshold_source = "checkpoint (tuned per class)"
        else:
            self.thresholds = np.full(n, 0.5, np.float64)
            self.threshold_source = "0.5 (checkpoint has no tuned thresholds)"

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "auto", threshold: float | None = None) -> Predictor:
        dev = select_device(device)
        model, meta = load_checkpoint(path, device=dev)
        return cls(model, meta, dev, threshold)

    @torch.no_grad()
    def predict_probabilities(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) preprocessed images -> (B, C) probabilities."""
        return torch.sigmoid(self.model(images.to(self.device)).float()).cpu().numpy()

    def predict_image(self, image: Any) -> Prediction:
        """Label one image given as a path, bytes, or an RGB PIL image."""
        if hasattr(image, "mode"):
            pil, name = image.convert("RGB"), "<image>"
        else:
            pil, name = decode_image(image), str(image) if not isinstance(image, bytes) else "<bytes>"
        probs = self.predict_probabilities(self.transform(pil).unsqueeze(0))[0]
        return self._prediction(name, probs)

    def predict_paths(
        self, paths: Sequence[str | Path], *, batch_size: int = 32, num_workers: int = 0, progress: bool = False
    ) -> Iterator[Prediction]:
        """Stream predictions for ``paths`` in order; unreadable files yield a Prediction with ``error`` set."""
        from torch.utils.data import DataLoader
        from tqdm import tqdm

        paths = [Path(p) for p in paths]
        loader = DataLoader(
            _PathDataset(paths, self.transform, DEFAULT_MAX_PIXELS),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_collate,
        )
        with tqdm(total=len(paths), unit="img", disable=not progress, desc="predict") as bar:
            for items in loader:
                good = [(i, x) for i, x, err in items if err is None]
                probs = self.predict_probabilities(torch.stack([x for _, x in good])) if good else None
                row = {i: k for k, (i, _) in enumerate(good)}
                for i, _, err in items:
                    if err is None:
                        yield self._prediction(str(paths[i]), probs[row[i]])
                    else:
                        yield Prediction(str(paths[i]), [], {}, error=err)
                bar.update(len(items))

    def _prediction(self, path: str, probs: np.ndarray) -> Prediction:
        on = probs.astype(np.float64) >= self.thresholds
        labels = [n for n, flag in zip(self.class_names, on, strict=True) if flag]
        return Prediction(path, labels, {n: float(p) for n, p in zip(self.class_names, probs, strict=True)})

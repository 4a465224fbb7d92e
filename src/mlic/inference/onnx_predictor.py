"""``OnnxPredictor``: an exported ONNX model run by ONNX Runtime, with the ``Predictor`` interface.

Everything it needs (class names, thresholds, preprocessing, input dtype) comes from the model's
own metadata, written by ``mlic export``. Images are decoded by the one decoder and resized by the
stage transform up to uint8 (``mlic.data.pixels``); scaling, normalisation and the sigmoid run in the graph.
Predictions read the ``probabilities`` output only; a model exported with ``--embedding`` also has the
``embedding`` output, which ``embed`` / ``embed_paths`` (and ``mlic embed model.onnx``) read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlic.data.images import DEFAULT_MAX_PIXELS
from mlic.data.pixels import stage_loader
from mlic.data.transforms import Preprocessing
from mlic.errors import MissingExtraError
from mlic.inference.engines import session_options
from mlic.inference.export_format import EMBEDDING_NAME, INPUT_NAME, OUTPUT_NAME, ExportError, metadata_from_props
from mlic.inference.predictor import BasePredictor


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingExtraError("running ONNX models needs the export extra: pip install 'mlic[export]'") from exc
    return onnxruntime


class OnnxPredictor(BasePredictor):
    """Exported ONNX model ready to label images. ``threshold`` overrides the exported thresholds."""

    engine = "onnx"  # what runs it, as ``Predictor.engine`` says (``mlic serve``'s /health shows it)

    def __init__(
        self,
        session: Any,
        metadata: dict[str, Any],
        threshold: float | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.session, self.meta = session, metadata
        self.class_names = list(metadata["class_names"])
        self.preprocessing = Preprocessing.from_dict(metadata["preprocessing"])
        self.loader = stage_loader(self.preprocessing, max_pixels=max_pixels)  # source -> uint8 (3, S, S)
        self.input_dtype = metadata["input"]["dtype"]
        self._set_thresholds(metadata.get("thresholds"), threshold)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        threshold: float | None = None,
        num_threads: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> OnnxPredictor:
        """Open ``path`` with ONNX Runtime's CPU provider; ``num_threads`` caps its intra-op threads."""
        ort = import_onnxruntime()
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: ONNX model not found")
        options = session_options(ort, num_threads)  # one thread per core by default, as the onnx engine
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime raises its own Fail/InvalidProtobuf/... for a damaged file
            first = " ".join(str(exc).split())[:200]
            raise ExportError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {first})") from None
        metadata = metadata_from_props(session.get_modelmeta().custom_metadata_map, path)
        return cls(session, metadata, threshold, max_pixels)

    def predict_probabilities(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) uint8 images (``loader`` outputs) -> (B, C) probabilities."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: self._input(images)})[0]

    def embed_batch(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) uint8 images -> (B, D) float32 embeddings, from a model exported with ``--embedding``."""
        if EMBEDDING_NAME not in {o.name for o in self.session.get_outputs()}:
            raise ExportError(
                f"this ONNX model has no {EMBEDDING_NAME!r} output; export it with `mlic export CKPT OUT.onnx "
                "--embedding`, or embed with the checkpoint"
            )
        return np.asarray(self.session.run([EMBEDDING_NAME], {INPUT_NAME: self._input(images)})[0], np.float32)

    def _input(self, images: torch.Tensor) -> np.ndarray:
        x = images.numpy()
        if self.input_dtype == "float32":
            x = x.astype(np.float32) * np.float32(1.0 / 255.0)
        return x

"""``OnnxPredictor``: an exported ONNX model run by ONNX Runtime, with the ``Predictor`` interface.

Everything it needs (class names, thresholds, preprocessing, input dtype) comes from the model's
own metadata, written by ``mlic export``. Images are decoded by the one decoder and resized by the
stage transform up to uint8 (``mlic.data.pixels``); scaling, normalisation and the sigmoid run in the graph.
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
from mlic.inference.export_format import INPUT_NAME, OUTPUT_NAME, ExportError, metadata_from_props
from mlic.inference.predictor import BasePredictor


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingExtraError("running ONNX models needs the export extra: pip install 'mlic[export]'") from exc
    return onnxruntime


class OnnxPredictor(BasePredictor):
    """Exported ONNX model ready to label images. ``threshold`` overrides the exported thresholds."""

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
        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime raises its own Fail/InvalidProtobuf/... for a damaged file
            first = " ".join(str(exc).split())[:200]
            raise ExportError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {first})") from None
        metadata = metadata_from_props(session.get_modelmeta().custom_metadata_map, path)
        return cls(session, metadata, threshold, max_pixels)

    def predict_probabilities(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) uint8 images (``loader`` outputs) -> (B, C) probabilities."""
        x = images.numpy()
        if self.input_dtype == "float32":
            x = x.astype(np.float32) * np.float32(1.0 / 255.0)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

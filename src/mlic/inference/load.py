"""Open whatever model file the user names: a checkpoint folder, or an ``.onnx`` file written by ``mlic export``."""

from __future__ import annotations

from pathlib import Path

from mlic.data.images import DEFAULT_MAX_PIXELS
from mlic.inference.predictor import BasePredictor, Predictor


def load_predictor(
    path: str | Path,
    *,
    device: str = "auto",
    threshold: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    engine: str = "torch",
    num_threads: int | None = None,
) -> BasePredictor:
    """A ``Predictor`` for a checkpoint folder, run by ``engine`` (``Predictor``'s docstring), or an
    ``OnnxPredictor`` (CPU) for an exported ``.onnx`` file, which ONNX Runtime runs whatever ``engine`` says;
    ``num_threads``: ONNX Runtime's intra-op threads (default: one per core)."""
    if Path(path).suffix.lower() == ".onnx":
        from mlic.inference.onnx_predictor import OnnxPredictor

        return OnnxPredictor.from_file(path, threshold=threshold, num_threads=num_threads, max_pixels=max_pixels)
    return Predictor.from_checkpoint(path, device=device, threshold=threshold, max_pixels=max_pixels, engine=engine,
                                     num_threads=num_threads)  # fmt: skip

"""``mlic evaluate model.onnx``: an exported ONNX model (fp32 or INT8) scored on labelled data.

The very evaluation of a checkpoint (``mlic.evaluation.evaluate``): the same records, the same eval pipeline up
to the uint8 pixels, the same metrics at the same thresholds (the export's, which are the checkpoint's); only
the forward pass is the exported graph, run by ``OnnxPredictor`` (ONNX Runtime, CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlic.data.dataset import MultiLabelDataset
from mlic.data.loader import build_loader
from mlic.data.records import Record
from mlic.data.sources import load_records
from mlic.data.transforms import build_eval_pipeline
from mlic.evaluation.bootstrap import Resampling
from mlic.evaluation.evaluate import evaluation_report
from mlic.evaluation.scoring import BatchOptions, Scored, score_probabilities
from mlic.inference.onnx_predictor import OnnxPredictor


def score_onnx(
    path: str | Path, records: Sequence[Record], batch: BatchOptions | None = None, *, desc: str = "evaluate"
) -> Scored:
    """Run the exported model at ``path`` over labelled ``records`` (``batch.device`` is ignored: CPU)."""
    batch = batch or BatchOptions()
    predictor = OnnxPredictor.from_file(path, max_pixels=batch.max_pixels)
    pipeline = build_eval_pipeline(predictor.preprocessing)
    dataset = MultiLabelDataset(records, predictor.class_names, pipeline, max_pixels=batch.max_pixels)
    loader = build_loader(dataset, batch_size=batch.batch_size, shuffle=False, num_workers=batch.num_workers)
    preds = score_probabilities(predictor.predict_probabilities, loader, len(predictor.class_names),
                                progress=batch.progress, desc=desc)  # fmt: skip
    return Scored(Path(path), predictor.meta, dataset.records, preds)


def evaluate_onnx(
    path: str | Path,
    data: str | Path,
    *,
    fmt: str = "auto",
    image_root: str | Path | None = None,
    label_delimiter: str | None = None,
    threshold: float | None = None,
    batch: BatchOptions | None = None,
    bootstrap: Resampling | None = None,
) -> dict[str, Any]:
    """``evaluate_checkpoint`` for an exported ``.onnx`` file: the same report, keyed the same."""
    records = load_records(data, fmt=fmt, image_root=image_root, label_delimiter=label_delimiter)
    return evaluation_report(score_onnx(path, records, batch), threshold, str(data), bootstrap=bootstrap)

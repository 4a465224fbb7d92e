"""INT8 export: ``mlic export CKPT OUT.onnx --int8``, the fp32 ONNX export statically quantised by ONNX Runtime.

The steps: the fp32 export (``export_model``: uint8 input scaled and normalised inside, calibration folded into
the classifier, sigmoid, metadata, its own parity check); ONNX Runtime's ``quant_pre_process`` (symbolic shape
inference, so every tensor has the shape quantisation needs, and its basic graph optimisation); then
``quantize_static``, with ranges calibrated on training images read through the checkpoint's eval preprocessing
(``mlic.inference.int8_data``). Last the check: on held-out images the INT8 model's labels, at the checkpoint's
thresholds, must equal the PyTorch checkpoint's on at least ``MIN_AGREEMENT`` of the (image, label) cells, or
the export is refused and nothing is left at OUT. The file is written as ``.OUT.partial`` until it passes.

Settings, after ONNX Runtime's guidance for CPU inference (``quantize_static``'s docstring and
https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html):

* QDQ format (QuantizeLinear/DequantizeLinear pairs around the float ops), which ORT's CPU provider fuses into
  integer kernels (QLinearConv, QGemm, ...) and prefers over the QOperator format since ORT 1.11.
* Activations uint8, asymmetric, per tensor (post-ReLU tensors are non-negative: no code wasted on negatives);
  weights int8, symmetric, per output channel.
* ``reduce_range`` (7-bit weights): x86 CPUs without VNNI (AVX2) multiply uint8 x int8 pairs with a saturating
  16-bit instruction. On such a CPU (AMD EPYC, AVX2), 8-bit weights doubled the largest probability error of a
  one-epoch seed_cnn at 32 px (0.058 against 0.029) and cut its label agreement (97.2% against 98.6%). The file
  may run on any CPU, so the 7-bit range is always used; on CPUs with VNNI and on ARM it costs little.
* MinMax calibration: the ranges cover every calibration activation (ReLU networks have no long-tailed outliers
  worth clipping; percentile and entropy calibration measured no better on seed_cnn).
* Kept float (``nodes_to_exclude``): the input scaling and normalisation (Cast, Mul, Sub, Div before the first
  convolution; the first convolution's input is quantised after them) and the head: the classifier layer, which
  carries the checkpoint's calibration, and the sigmoid. Left to itself ``quantize_static`` puts Q/DQ pairs on
  the logits and on the probabilities too, rounding them to 1/255 of their range (for probabilities, steps of
  0.004 right where thresholds sit), to save a D x C float layer. Measured (benchmarks/int8.py's fitted
  checkpoints at 96 px, logit error rms against the checkpoint): seed_cnn 0.104 with the head float, 0.146 with
  the classifier quantised, 0.163 with nothing excluded; resnet18 0.077, 0.096, 0.097.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlic.checkpoint import load_checkpoint
from mlic.data.pixels import stage_loader
from mlic.data.transforms import Preprocessing
from mlic.errors import MissingExtraError
from mlic.evaluation.thresholds import resolve_thresholds
from mlic.inference.export import ExportedModel, export_model
from mlic.inference.export_format import (
    INPUT_NAME,
    INT8_CALIBRATION_IMAGES,
    INT8_MIN_AGREEMENT,
    METADATA_PREFIX,
    OUTPUT_NAME,
    ExportError,
)
from mlic.inference.int8_data import ImageSet, choose_images, read_all, read_batches

MIN_AGREEMENT = INT8_MIN_AGREEMENT  # read at each export (tests raise it to see a refusal)
SEED = 0  # which calibration and check images are drawn
PROLOGUE_OPS = {"Cast", "Mul", "Sub", "Div", "Add", "Identity"}  # input -> first convolution: scaling, normalising
HEAD_OPS = {"Sigmoid", "Add", "Mul", "Sub", "Reshape", "Flatten", "Squeeze", "Identity"}  # classifier -> output
LINEAR_OPS = {"Gemm", "MatMul"}  # the classifier itself


@dataclass
class Check:
    """The INT8 model against the checkpoint on held-out images, at the checkpoint's thresholds."""

    images: int
    cells: int  # images x classes
    agreeing: int  # cells whose predicted label (on/off) is the same
    max_abs_diff: float  # largest |p_int8 - p_checkpoint|
    unreadable: int = 0

    @property
    def agreement(self) -> float:
        return self.agreeing / self.cells if self.cells else 0.0


@dataclass
class Int8Result:
    path: Path
    sidecar: Path
    metadata: dict[str, Any]
    check: Check
    calibration: ImageSet
    calibration_images: int  # readable ones, the ones calibrated on
    check_source: str


def export_int8(
    checkpoint: str | Path,
    out: str | Path,
    *,
    calibration_data: str | Path | None = None,
    calibration_images: int = INT8_CALIBRATION_IMAGES,
    check_data: str | Path | None = None,
    opset: int | None = None,
    input_dtype: str = "uint8",
) -> Int8Result:
    """Write ``out`` (ONNX, INT8 QDQ) and the sidecar ``out + ".json"``; see the module docstring.

    ``calibration_data``: a label file or image folder to calibrate on (default: the run's training labels),
    with a held-out share checked on unless ``check_data`` (a label file or folder) names the check images.
    Raises ``ExportError`` with the figures when the labels agree on less than ``MIN_AGREEMENT`` of the cells.
    """
    quantization = _import_quantization()
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ExportError(f"--int8 writes ONNX: name the output .onnx, not {out.name}")
    if calibration_images < 1:
        raise ExportError(f"--calibration-images must be at least 1, got {calibration_images}")
    model, meta = load_checkpoint(checkpoint, device="cpu")
    pre = Preprocessing.from_dict(meta["preprocessing"])
    calibration, check_set = choose_images(meta, calibration_data, check_data, calibration_images, SEED)
    loader = stage_loader(pre)
    images, _ = read_all(calibration, loader, "calibration")  # read first: a bad set fails before any export
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        with tempfile.TemporaryDirectory(prefix="mlic-int8-") as work:
            fp32 = export_model(checkpoint, Path(work) / "fp32.onnx", "onnx", opset=opset, input_dtype=input_dtype)
            float_nodes = quantize(quantization, fp32.path, partial, _model_input(images, input_dtype), Path(work))
        reference = ExportedModel(model, pre, input_dtype).eval()
        thresholds, _ = resolve_thresholds(meta.get("thresholds"), len(meta["class_names"]), None)
        check = compare(partial, reference, check_set, loader, thresholds, input_dtype)
        _require_agreement(check, check_set)
        metadata = {**fp32.metadata, "quantization": _description(float_nodes, calibration, len(images), check,
                                                                  check_set)}  # fmt: skip
        stamp_metadata(partial, metadata)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    sidecar = Path(f"{out}.json")
    sidecar.write_text(json.dumps(metadata, indent=2) + "\n")
    return Int8Result(out, sidecar, metadata, check, calibration, len(images), check_set.source)


def _import_quantization():
    try:
        import onnx  # noqa: F401
        from onnxruntime import quantization
    except ImportError as exc:
        raise MissingExtraError("INT8 export needs the export extra: pip install 'mlic[export]'") from exc
    return quantization


def _model_input(images: torch.Tensor, input_dtype: str) -> np.ndarray:
    """uint8 (B, 3, S, S) pixels as the exported graph takes them (float32 0..1 with ``input_dtype="float32"``)."""
    x = images.numpy()
    return x.astype(np.float32) * np.float32(1.0 / 255.0) if input_dtype == "float32" else x


class _CalibrationBatches:
    """ONNX Runtime's CalibrationDataReader protocol (``get_next``: the next input feed, or None when done)."""

    def __init__(self, images: np.ndarray, batch_size: int = 32) -> None:
        self.batches = iter([images[i : i + batch_size] for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize(quantization, fp32: Path, out: Path, images: np.ndarray, work: Path) -> list[str]:
    """``fp32`` -> ``out`` statically quantised (the settings of the module docstring), calibrated on ``images``;
    returns the names of the nodes kept float."""
    import onnx

    prepared = work / "prepared.onnx"
    with _quiet_root_logger():  # ORT's quantisation tools log progress and hints as root-logger warnings
        quantization.quant_pre_process(str(fp32), str(prepared))
        float_nodes = float_node_names(onnx.load(str(prepared)).graph)
        quantization.quantize_static(
            str(prepared),
            str(out),
            _CalibrationBatches(images),
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            nodes_to_exclude=float_nodes,
            calibrate_method=quantization.CalibrationMethod.MinMax,
        )
    return float_nodes


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def float_node_names(graph) -> list[str]:
    """The nodes that stay float: from the input up to the first convolution (scaling, normalisation), and from
    the output back to the classifier, inclusive (sigmoid, any affine calibration, the classifier itself)."""
    producers = {tensor: node for node in graph.node for tensor in node.output}
    consumers = defaultdict(list)
    for node in graph.node:
        for tensor in node.input:
            consumers[tensor].append(node)
    names: list[str] = []
    frontier = [INPUT_NAME]
    while frontier:  # forward from the input through elementwise scaling
        for node in consumers[frontier.pop()]:
            if node.op_type in PROLOGUE_OPS and node.name not in names:
                names.append(node.name)
                frontier += list(node.output)
    frontier = [OUTPUT_NAME]
    while frontier:  # backward from the probabilities to the layer that makes the logits
        node = producers.get(frontier.pop())
        if node is None or node.name in names or node.op_type not in HEAD_OPS | LINEAR_OPS:
            continue
        names.append(node.name)
        if node.op_type in HEAD_OPS:
            frontier += [tensor for tensor in node.input if tensor in producers]
    return names


@torch.no_grad()
def compare(
    path: Path, reference: ExportedModel, images: ImageSet, loader, thresholds: np.ndarray, input_dtype: str
) -> Check:
    """The INT8 model at ``path`` against ``reference`` (the checkpoint, same input) on ``images``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check = Check(0, 0, 0, 0.0)
    for batch, failed in read_batches(images.paths, loader):
        check.unreadable += len(failed)
        if batch is None:
            continue
        x = _model_input(batch, input_dtype)
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].astype(np.float64)
        expected = reference(torch.from_numpy(x)).double().numpy()
        # the labelling rule of mlic.inference.predictor.labels_at: on when p >= threshold, compared in float64
        check.agreeing += int(((got >= thresholds) == (expected >= thresholds)).sum())
        check.images, check.cells = check.images + len(x), check.cells + got.size
        check.max_abs_diff = max(check.max_abs_diff, float(np.abs(got - expected).max()))
    if not check.images:
        raise ExportError(f"none of the {len(images.paths)} check images of {images.source} could be read; pass "
                          "--check-data LABELS_OR_FOLDER")  # fmt: skip
    return check


def _require_agreement(check: Check, images: ImageSet) -> None:
    if check.agreement < MIN_AGREEMENT:
        raise ExportError(
            f"INT8 model refused: its labels agree with the checkpoint's on {check.agreement:.2%} of {check.cells} "
            f"(image, label) cells over {check.images} held-out images ({images.source}), below the required "
            f"{MIN_AGREEMENT:.0%} (max |p - checkpoint| {check.max_abs_diff:.3f}); nothing written"
        )


def _description(float_nodes: list[str], calibration: ImageSet, used: int, check: Check, check_set: ImageSet):
    """The export's ``quantization`` metadata: that it is INT8, how it was made, calibrated and checked."""
    import onnxruntime

    return {
        "dtype": "int8",
        "format": "QDQ",
        "tool": f"onnxruntime {onnxruntime.__version__} quantize_static",
        "activations": "uint8, asymmetric, per tensor",
        "weights": "int8, symmetric, per output channel, 7-bit range (reduce_range)",
        "float": "input scaling and normalisation; the classifier (with any calibration) and sigmoid",
        "float_nodes": float_nodes,
        "calibration": {"method": "MinMax", "images": used, "unreadable": len(calibration.paths) - used,
                        "data": calibration.source, "seed": SEED},
        "check": {"data": check_set.source, "images": check.images, "cells": check.cells,
                  "agreement": round(check.agreement, 6), "required": MIN_AGREEMENT,
                  "max_abs_diff": round(check.max_abs_diff, 6), "unreadable": check.unreadable,
                  "thresholds": "the checkpoint's"},
    }  # fmt: skip


def stamp_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Write ``metadata`` into the ONNX file's ``metadata_props`` as the fp32 export does (``mlic.<key>`` = JSON)."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, json.dumps(value)
    proto.doc_string = f"mlic export: {len(metadata['class_names'])} classes, probabilities (sigmoid inside), INT8"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))

"""What an exported model carries and promises: names, input contract, metadata, format version.

Torch-free (``mlic export --help`` lists the formats, and ``OnnxPredictor`` reads the metadata, without it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlic.errors import UserError

EXPORT_FORMAT = "mlic-export"
EXPORT_VERSION = 1
FORMATS = ("onnx", "torchscript")
INPUT_DTYPES = ("uint8", "float32")
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
EMBEDDING_NAME = "embedding"  # the optional second output (export --embedding): (B, D) pooled features
METADATA_PREFIX = "mlic."  # ONNX metadata_props keys
TORCHSCRIPT_METADATA = "mlic.json"  # TorchScript _extra_files entry
# export --int8 (mlic.inference.int8): training images it is calibrated on, and the share of (image, label)
# cells of held-out images whose predicted labels must match the checkpoint's for the file to be kept
INT8_CALIBRATION_IMAGES = 256
INT8_MIN_AGREEMENT = 0.99


def onnx_program(module: Any, example: Any, output_names: list[str], opset: int | None = None) -> Any:
    """``module`` as an ``ONNXProgram`` (``.model_proto``): ``torch.onnx.export(dynamo=True)`` with a dynamic batch
    and the optimiser on, the one exporter setting of ``mlic export`` and of the Predictor's ONNX engine.
    ``example``: a (2, 3, S, S) batch (torch.export specialises a batch of 1 to a constant). Imports torch."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter about internals, not about this model
        return torch.onnx.export(
            module,
            (example,),
            None,
            input_names=[INPUT_NAME],
            output_names=output_names,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            dynamo=True,
            optimize=True,  # folds what is left of BatchNorm, fuses elementwise operators
            verbose=False,
        )


# file suffix -> export format, for `mlic export CKPT model.onnx` without --to
SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript"}


class ExportError(UserError, ValueError):
    """The export could not be written or does not reproduce the checkpoint."""


def format_for(out: str | Path, to: str | None = None) -> str:
    """The export format: ``to`` if given, else from ``out``'s suffix."""
    if to is not None:
        if to not in FORMATS:
            raise ExportError(f"--to {to!r}: choose one of: {', '.join(FORMATS)}")
        return to
    fmt = SUFFIXES.get(Path(out).suffix.lower())
    if fmt is None:
        raise ExportError(f"cannot tell the export format from {str(out)!r}; name it .onnx or .pt, or pass --to")
    return fmt


def metadata_from_props(props: dict[str, str], source: str | Path) -> dict[str, Any]:
    """Parse ``mlic.<key>`` ONNX metadata entries back into the metadata dict; checks format and version."""
    try:
        meta = {k[len(METADATA_PREFIX) :]: json.loads(v) for k, v in props.items() if k.startswith(METADATA_PREFIX)}
    except json.JSONDecodeError as exc:
        raise ExportError(f"{source}: its mlic metadata is not valid JSON ({exc})") from None
    if meta.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{source}: not an mlic export (no {METADATA_PREFIX}format = {EXPORT_FORMAT!r} metadata)")
    if meta.get("version") != EXPORT_VERSION:
        raise ExportError(
            f"{source}: mlic export version {meta.get('version')} is not supported (reads {EXPORT_VERSION})"
        )
    from mlic.checkpoint import check_meta_fields  # lazily: this module stays torch-free

    missing = [k for k in ("class_names", "model", "preprocessing", "input") if k not in meta]
    if missing:
        raise ExportError(f"{source}: its mlic metadata lacks {', '.join(missing)}")
    try:
        check_meta_fields(meta)
        if not isinstance(meta["input"], dict) or meta["input"].get("dtype") not in INPUT_DTYPES:
            raise ValueError(f"input.dtype must be one of {', '.join(INPUT_DTYPES)}")
    except ValueError as exc:
        raise ExportError(f"{source}: mlic metadata: {exc}") from None
    return meta

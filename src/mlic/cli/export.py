"""``mlic export``: a checkpoint as an ONNX or TorchScript model that carries its preprocessing and thresholds."""

from __future__ import annotations

import argparse

from mlic.cli.flags import add_command
from mlic.inference.export_format import FORMATS, INPUT_DTYPES

HELP = """examples:
  mlic export runs/shapes/checkpoints/best model.onnx
  mlic export runs/shapes/checkpoints/best model.pt                  # TorchScript
  mlic export runs/shapes/checkpoints/best model.onnx --input-dtype float32 --opset 18

The model takes uint8 RGB images (B, 3, S, S) in 0..255, resized to the checkpoint's size S as
`mlic predict` does (or float32 in 0..1 with --input-dtype float32), normalises them inside and
returns (B, C) sigmoid probabilities; the batch size is free. Class names, thresholds and
preprocessing are written into the model (ONNX metadata_props, TorchScript extra file mlic.json)
and into OUT.json. The export is checked against the checkpoint before it is kept.
The format is --to, else OUT's suffix (.onnx; .pt for TorchScript).
`mlic predict model.onnx photos/` then labels images through ONNX Runtime.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "export", "export a checkpoint to ONNX or TorchScript", __doc__, HELP)
    p.add_argument("checkpoint", help="checkpoint folder (runs/<name>/checkpoints/best)")
    p.add_argument("output", metavar="OUT", help="file to write (the sidecar goes to OUT.json)")
    p.add_argument("--to", choices=FORMATS, help="export format (default: from OUT's suffix)")
    p.add_argument("--input-dtype", choices=INPUT_DTYPES, default="uint8", help="image input type (default: uint8)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.inference.export import export_model
    from mlic.inference.export_format import format_for

    fmt = format_for(args.output, args.to)
    result = export_model(args.checkpoint, args.output, fmt, opset=args.opset, input_dtype=args.input_dtype)
    meta = result.metadata
    print(
        f"wrote {result.path} ({result.fmt}, {len(meta['class_names'])} classes, input {meta['input']['dtype']} "
        f"{meta['input']['shape']}, {result.folded_batchnorms} BatchNorm(s) folded; max |p - checkpoint| "
        f"{result.max_abs_diff:.1e})\nmetadata: {result.sidecar}"
    )
    return 0

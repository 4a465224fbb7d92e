"""``mlic export``: a checkpoint as an ONNX or TorchScript model that carries its preprocessing and thresholds."""

from __future__ import annotations

import argparse

HELP = """examples:
  mlic export runs/shapes/checkpoints/best --format onnx model.onnx
  mlic export runs/shapes/checkpoints/best --format torchscript model.pt
  mlic export runs/shapes/checkpoints/best --format onnx model.onnx --input-dtype float32 --opset 18

The model takes uint8 RGB images (B, 3, S, S) in 0..255, resized to the checkpoint's size S as
`mlic predict` does (or float32 in 0..1 with --input-dtype float32), normalises them inside and
returns (B, C) sigmoid probabilities; the batch size is free. Class names, thresholds and
preprocessing are written into the model (ONNX metadata_props, TorchScript extra file mlic.json)
and into OUT.json. The export is checked against the checkpoint before it is kept.
`mlic predict model.onnx photos/` then labels images through ONNX Runtime.
"""


# mlic.export's FORMATS and INPUT_DTYPES, repeated so that building the parser imports no torch (tests check)
FORMATS = ("onnx", "torchscript")
INPUT_DTYPES = ("uint8", "float32")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX or TorchScript",
        description=__doc__,
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint folder (runs/<name>/checkpoints/best)")
    p.add_argument("output", metavar="OUT", help="file to write (the sidecar goes to OUT.json)")
    p.add_argument("--format", choices=FORMATS, required=True, help="onnx or torchscript")
    p.add_argument("--input-dtype", choices=INPUT_DTYPES, default="uint8", help="image input type (default uint8)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.cli import UserError
    from mlic.export import ExportError, export_model

    try:
        result = export_model(args.checkpoint, args.output, args.format, opset=args.opset, input_dtype=args.input_dtype)
    except (ExportError, ImportError, ValueError) as exc:
        raise UserError(str(exc)) from None
    meta = result.metadata
    print(
        f"wrote {result.path} ({result.fmt}, {len(meta['class_names'])} classes, input {meta['input']['dtype']} "
        f"{meta['input']['shape']}, {result.folded_batchnorms} BatchNorm(s) folded; max |p - checkpoint| "
        f"{result.max_abs_diff:.1e})\nmetadata: {result.sidecar}"
    )
    return 0

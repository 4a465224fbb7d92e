"""``mlic export``: a checkpoint as an ONNX or TorchScript model that carries its preprocessing and thresholds."""

from __future__ import annotations

import argparse

from mlic.cli.export_int8 import HELP as INT8_HELP
from mlic.cli.export_int8 import add_int8_arguments, int8_flags, run_int8
from mlic.cli.flags import add_command
from mlic.inference.export_format import FORMATS, INPUT_DTYPES

HELP = """examples:
  mlic export runs/shapes/checkpoints/best model.onnx
  mlic export runs/shapes/checkpoints/best model.pt                  # TorchScript
  mlic export runs/shapes/checkpoints/best model.onnx --input-dtype float32 --opset 18
  mlic export runs/shapes/checkpoints/best model.onnx --embedding   # also output the (B, D) embedding
  mlic export runs/shapes/checkpoints/best model.int8.onnx --int8   # INT8, calibrated and checked

The model takes uint8 RGB images (B, 3, S, S) in 0..255, resized to the checkpoint's size S as
`mlic predict` does (or float32 in 0..1 with --input-dtype float32), normalises them inside and
returns (B, C) sigmoid probabilities; the batch size is free. Class names, thresholds and
preprocessing are written into the model (ONNX metadata_props, TorchScript extra file mlic.json)
and into OUT.json. The export is checked against the checkpoint before it is kept.
With --embedding (ONNX) a second output, `embedding` (B, D), holds each image's pooled features, the
vectors `mlic embed` writes; `probabilities` stays the first output, so readers of it are unaffected.
The format is --to, else OUT's suffix (.onnx; .pt for TorchScript).
`mlic predict model.onnx photos/` then labels images through ONNX Runtime.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "export", "export a checkpoint to ONNX or TorchScript", __doc__, HELP + INT8_HELP)
    p.add_argument("checkpoint", help="checkpoint folder (runs/<name>/checkpoints/best)")
    p.add_argument("output", metavar="OUT", help="file to write (the sidecar goes to OUT.json)")
    p.add_argument("--to", choices=FORMATS, help="export format (default: from OUT's suffix)")
    p.add_argument("--input-dtype", choices=INPUT_DTYPES, default="uint8", help="image input type (default: uint8)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--embedding", action="store_true", help="ONNX: add the output `embedding` (B, D) (pooled features)")
    add_int8_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.inference.export import export_model
    from mlic.inference.export_format import format_for

    fmt = format_for(args.output, args.to)
    if args.int8 or int8_flags(args):  # run_int8 names the INT8 flags given without --int8
        return run_int8(args, fmt)
    result = export_model(
        args.checkpoint, args.output, fmt, opset=args.opset, input_dtype=args.input_dtype, embedding=args.embedding
    )
    meta = result.metadata
    extra = "" if "embedding" not in meta else f"; embedding {meta['embedding']['shape']}"
    print(
        f"wrote {result.path} ({result.fmt}, {len(meta['class_names'])} classes, input {meta['input']['dtype']} "
        f"{meta['input']['shape']}{extra}, {result.folded_batchnorms} BatchNorm(s) folded; max |p - checkpoint| "
        f"{result.max_abs_diff:.1e})\nmetadata: {result.sidecar}"
    )
    return 0

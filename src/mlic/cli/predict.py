"""``mlic predict``: label images with a checkpoint or an exported ONNX model, streaming at any scale."""

from __future__ import annotations

import argparse
import os
import sys
from itertools import chain
from pathlib import Path

from mlic.cli.flags import add_command, add_compute, add_setting, add_threshold
from mlic.inference.batch_predict import FORMATS

HELP = """examples:
  mlic predict runs/shapes/checkpoints/best photo.jpg
  mlic predict runs/shapes/checkpoints/best photos/ 'more/**/*.png' --output preds.csv
  mlic predict runs/shapes/checkpoints/best --list files.txt --output preds.jsonl --resume
  mlic predict model.onnx photos/ --top-k 3 --probabilities --output preds.jsonl
  mlic predict runs/shapes/checkpoints/best photos/ --threshold 0.3 --to json

MODEL is a checkpoint folder or a .onnx file written by `mlic export` (run by ONNX Runtime on CPU;
same labels). Folders are searched recursively for image files, globs are expanded, and --list
reads paths from a .txt (one per line) or .csv (column image/path, else the first) file; nothing
is loaded into memory all at once. Each image gets its predicted labels (probability >= its class
threshold); --probabilities adds every class's probability, --top-k the K most probable classes.
Unreadable images get an error field, are counted at the end and do not stop the run.
The output format is --to, else --output's suffix (.csv, .jsonl, .json), else a table on the terminal.
--resume continues an interrupted csv/jsonl --output run: the file ends up as if never interrupted.
"""

SUFFIX_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "json"}


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "predict", "label images with a checkpoint or an exported ONNX model", __doc__, HELP)
    p.add_argument("checkpoint", metavar="MODEL", help="checkpoint folder (runs/<name>/checkpoints/best) or .onnx")
    p.add_argument("inputs", nargs="*", metavar="PATH", help="image files, folders or glob patterns")
    p.add_argument("--list", metavar="FILE", help="also predict the paths listed in this .txt or .csv file")
    add_setting(p, "image_root", own_default=True)
    add_threshold(p)
    p.add_argument("--output", metavar="FILE", help="write here instead of standard output")
    p.add_argument("--to", choices=FORMATS, help="output format (default: from --output's suffix, else table)")
    p.add_argument("--probabilities", action="store_true", help="include every class's probability (csv/jsonl/json)")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="also list the K most probable classes")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run into --output (csv/jsonl)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    add_compute(p)
    p.set_defaults(run=run)


def output_format(to: str | None, output: str | None) -> str:
    """--to, else the format --output's suffix names, else the terminal table."""
    if to is not None:
        return to
    if output is None:
        return "table"
    return SUFFIX_FORMATS.get(Path(output).suffix.lower(), "csv")


def run(args: argparse.Namespace) -> int:
    from mlic.errors import UserError
    from mlic.inference.batch_predict import OutputOptions, write_predictions
    from mlic.inference.destination import Destination
    from mlic.inference.inputs import iter_inputs
    from mlic.inference.load import load_predictor
    from mlic.runtime.cpu import configure_allocator

    configure_allocator()  # batches of activations stay mapped between model calls (training's setting)

    if not args.inputs and not args.list:
        raise UserError("give image paths, folders or globs, or --list FILE")
    if args.top_k < 0:
        raise UserError("--top-k must be >= 0")
    if args.resume and not args.output:
        raise UserError("--resume needs --output (the file to continue)")
    dest = Destination(Path(args.output), resume=args.resume, overwrite=args.overwrite) if args.output else None
    if dest is not None:
        dest.check(args.inputs, args.list)  # before anything is loaded: never write over what is read
    paths = iter_inputs(args.inputs, list_file=args.list, image_root=args.image_root)
    first = next(paths, None)  # peek, so an empty input set fails before any output is written
    if first is None:
        raise UserError(f"no images found in: {' '.join(args.inputs + ([args.list] if args.list else []))}")
    options = OutputOptions(output_format(args.to, args.output), probabilities=args.probabilities, top_k=args.top_k)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: shard the inputs across ranks
        return _run_sharded(args, chain([first], paths), options, dest)
    predictor = load_predictor(
        args.checkpoint, device=args.device, threshold=args.threshold, max_pixels=args.max_image_pixels
    )
    print(f"thresholds: {predictor.threshold_source}", file=sys.stderr)
    summary = write_predictions(
        predictor,
        chain([first], paths),
        options,
        dest=dest,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=args.output is not None and args.progress,  # the table on the terminal has no bar beside it
    )
    for note in summary.notes:
        print(note, file=sys.stderr)
    print(summary.line() + (f"; written to {args.output}" if args.output else ""), file=sys.stderr)
    return 0


def _run_sharded(args: argparse.Namespace, paths, options, dest) -> int:
    import torch

    from mlic.errors import UserError
    from mlic.inference.load import load_predictor
    from mlic.inference.sharded_predict import write_predictions_sharded
    from mlic.runtime.device import select_device
    from mlic.runtime.distributed import init_distributed, shutdown_distributed

    if not args.output or args.resume:
        raise UserError("under torchrun, predict needs --output (one merged file) and cannot --resume")
    info, device = init_distributed(select_device(args.device))
    try:
        predictor = load_predictor(
            args.checkpoint, device=str(device), threshold=args.threshold, max_pixels=args.max_image_pixels
        )
        torch.set_num_threads(max(1, torch.get_num_threads() // info.world_size))  # ranks share the cores
        summary = write_predictions_sharded(
            predictor,
            paths,
            options,
            dest=dest,
            info=info,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            progress=args.progress,
        )
    finally:
        shutdown_distributed()
    if info.is_main:
        print(f"{summary.line()}; {info.world_size} ranks; written to {args.output}", file=sys.stderr)
    return 0

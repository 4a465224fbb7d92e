"""``mlic predict``: label images with a checkpoint or an exported ONNX model, streaming at any scale."""

from __future__ import annotations

import argparse
import os
import sys
from itertools import chain

HELP = """examples:
  mlic predict runs/shapes/checkpoints/best photo.jpg
  mlic predict runs/shapes/checkpoints/best photos/ 'more/**/*.png' --format csv --output preds.csv
  mlic predict runs/shapes/checkpoints/best --list files.txt --format jsonl --output preds.jsonl --resume
  mlic predict model.onnx photos/ --top-k 3 --probabilities --format jsonl --output preds.jsonl
  mlic predict runs/shapes/checkpoints/best photos/ --threshold 0.3 --format json

MODEL is a checkpoint folder or a .onnx file written by `mlic export` (run by ONNX Runtime on CPU;
same labels). Folders are searched recursively for image files, globs are expanded, and --list
reads paths from a .txt (one per line) or .csv (column image/path, else the first) file; nothing
is loaded into memory all at once. Each image gets its predicted labels (probability >= its class
threshold); --probabilities adds every class's probability, --top-k the K most probable classes.
Unreadable images get an error field, are counted at the end and do not stop the run.
--resume continues an interrupted csv/jsonl --output run: the file ends up as if never interrupted.
"""


# mlic.batch_predict.FORMATS, repeated so that building the parser imports no torch (tests check they match)
FORMATS = ("table", "csv", "jsonl", "json")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="label images with a checkpoint or an exported ONNX model",
        description=__doc__,
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="MODEL", help="checkpoint folder (runs/<name>/checkpoints/best) or .onnx")
    p.add_argument("inputs", nargs="*", metavar="PATH", help="image files, folders or glob patterns")
    p.add_argument("--list", metavar="FILE", help="also predict the paths listed in this .txt or .csv file")
    p.add_argument("--image-root", help="folder that relative paths in --list are under (default: the list's folder)")
    p.add_argument("--threshold", type=float, help="one threshold for every class, instead of the model's")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    p.add_argument("--output", help="write here instead of standard output")
    p.add_argument("--probabilities", action="store_true", help="include every class's probability (csv/jsonl/json)")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="also list the K most probable classes")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run into --output (csv/jsonl)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for decoding (default 0)")
    p.add_argument("--device", default="auto", help="for checkpoints (ONNX models run on CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (shown when writing to --output)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.batch_predict import OutputOptions, ResumeError, write_predictions
    from mlic.cli import UserError
    from mlic.inference import iter_inputs, load_predictor

    if not args.inputs and not args.list:
        raise UserError("give image paths, folders or globs, or --list FILE")
    if args.top_k < 0 or args.batch_size < 1 or args.workers < 0:
        raise UserError("--top-k and --workers must be >= 0, --batch-size >= 1")
    paths = iter_inputs(args.inputs, list_file=args.list, image_root=args.image_root)
    first = next(paths, None)  # peek, so an empty input set fails before any output is written
    if first is None:
        raise UserError(f"no images found in: {' '.join(args.inputs + ([args.list] if args.list else []))}")
    options = OutputOptions(args.format, probabilities=args.probabilities, top_k=args.top_k)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: shard the inputs across ranks
        return _run_sharded(args, chain([first], paths), options)
    predictor = load_predictor(args.checkpoint, device=args.device, threshold=args.threshold)
    print(f"thresholds: {predictor.threshold_source}", file=sys.stderr)
    try:
        summary = write_predictions(
            predictor,
            chain([first], paths),
            options,
            output=args.output,
            resume=args.resume,
            batch_size=args.batch_size,
            num_workers=args.workers,
            progress=args.output is not None and not args.no_progress,
        )
    except ResumeError as exc:
        raise UserError(str(exc)) from None
    for note in summary.notes:
        print(note, file=sys.stderr)
    print(summary.line() + (f"; written to {args.output}" if args.output else ""), file=sys.stderr)
    return 0


def _run_sharded(args: argparse.Namespace, paths, options) -> int:
    import torch

    from mlic.cli import UserError
    from mlic.engine.distributed import init_distributed, shutdown_distributed
    from mlic.engine.runtime import select_device
    from mlic.inference import load_predictor
    from mlic.sharded_predict import write_predictions_sharded

    if not args.output or args.resume:
        raise UserError("under torchrun, predict needs --output (one merged file) and cannot --resume")
    info, device = init_distributed(select_device(args.device))
    try:
        predictor = load_predictor(args.checkpoint, device=str(device), threshold=args.threshold)
        torch.set_num_threads(max(1, torch.get_num_threads() // info.world_size))  # ranks share the cores
        summary = write_predictions_sharded(
            predictor,
            paths,
            options,
            output=args.output,
            info=info,
            batch_size=args.batch_size,
            num_workers=args.workers,
            progress=not args.no_progress,
        )
    finally:
        shutdown_distributed()
    if info.is_main:
        print(f"{summary.line()}; {info.world_size} ranks; written to {args.output}", file=sys.stderr)
    return 0

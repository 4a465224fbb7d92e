"""``mlic predict``: label images with a checkpoint."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from contextlib import nullcontext

HELP = """examples:
  mlic predict runs/shapes/checkpoints/best photo.jpg
  mlic predict runs/shapes/checkpoints/best photos/ 'more/**/*.png' --format csv --output preds.csv
  mlic predict runs/shapes/checkpoints/best photos/ --threshold 0.3 --format json

Folders are searched recursively for image files; globs are expanded. Each image gets its
predicted labels (probability >= its class threshold) with probabilities. Images that cannot be
read are reported with an error and do not stop the run.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="label images with a checkpoint",
        description=__doc__,
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint folder (runs/<name>/checkpoints/best)")
    p.add_argument("inputs", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    p.add_argument("--threshold", type=float, help="one threshold for every class, instead of the checkpoint's")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format (default table)")
    p.add_argument("--output", help="write here instead of standard output")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for decoding (default 0)")
    p.add_argument("--device", default="auto")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.cli import UserError
    from mlic.inference import Predictor, expand_inputs

    paths = expand_inputs(args.inputs)
    if not paths:
        raise UserError(f"no images found in: {' '.join(args.inputs)}")
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, threshold=args.threshold)
    print(f"{len(paths)} image(s); thresholds: {predictor.threshold_source}", file=sys.stderr)
    predictions = predictor.predict_paths(
        paths, batch_size=args.batch_size, num_workers=args.workers, progress=args.output is not None
    )
    failed = 0
    with open(args.output, "w", newline="") if args.output else nullcontext(sys.stdout) as out:
        writer = _WRITERS[args.format](out, predictor.class_names)
        for pred in predictions:
            failed += pred.error is not None
            writer.write(pred)
        writer.close()
    if failed:
        print(f"{failed} of {len(paths)} image(s) could not be read (see the error field)", file=sys.stderr)
    if args.output:
        print(f"predictions written to {args.output}", file=sys.stderr)
    return 0


class _TableWriter:
    def __init__(self, out, class_names):
        self.out = out

    def write(self, pred) -> None:
        if pred.error:
            self.out.write(f"{pred.path}\tERROR: {pred.error}\n")
            return
        shown = ", ".join(f"{n} ({pred.probabilities[n]:.2f})" for n in pred.labels) or "(no labels)"
        self.out.write(f"{pred.path}\t{shown}\n")

    def close(self) -> None:
        pass


class _CsvWriter:
    def __init__(self, out, class_names):
        self.class_names = class_names
        self.writer = csv.writer(out)
        self.writer.writerow(["path", "labels", "error", *(f"p_{n}" for n in class_names)])

    def write(self, pred) -> None:
        probs = [f"{pred.probabilities[n]:.6f}" if pred.probabilities else "" for n in self.class_names]
        self.writer.writerow([pred.path, " ".join(pred.labels), pred.error or "", *probs])

    def close(self) -> None:
        pass


class _JsonWriter:
    """A JSON array written item by item, so nothing is held in memory."""

    def __init__(self, out, class_names):
        self.out, self.first = out, True
        out.write("[")

    def write(self, pred) -> None:
        self.out.write(("\n" if self.first else ",\n") + json.dumps(pred.to_dict()))
        self.first = False

    def close(self) -> None:
        self.out.write("\n]\n")


_WRITERS = {"table": _TableWriter, "csv": _CsvWriter, "json": _JsonWriter}

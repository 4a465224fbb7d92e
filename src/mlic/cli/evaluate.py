"""``mlic evaluate``: metrics of a checkpoint on labelled data, overall and per class."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = """examples:
  mlic evaluate runs/shapes/checkpoints/best --data data/test.csv
  mlic evaluate runs/shapes/checkpoints/best --data data/test.csv --threshold 0.3 --output test.json

Prints an overall table and a per-class table (support, AP, precision, recall, F1) and writes
them as JSON (default: evaluation.json beside the checkpoint folder).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint on labelled data",
        description=__doc__,
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint folder (runs/<name>/checkpoints/best)")
    p.add_argument("--data", required=True, help="labels to evaluate on (CSV/TSV file or folder)")
    p.add_argument("--format", default="auto", help="label format (default: auto-detected)")
    p.add_argument("--image-root", help="folder image paths are relative to")
    p.add_argument("--label-delimiter", help="separator inside the tag column (default: space)")
    p.add_argument("--threshold", type=float, help="one threshold for every class, instead of the checkpoint's")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=-1, help="DataLoader workers (default: by CPU count)")
    p.add_argument("--device", default="auto")
    p.add_argument("--output", help="JSON report path (default: <checkpoint>/../evaluation.json)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.evaluation import evaluate_checkpoint, format_report

    report = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        fmt=args.format,
        image_root=args.image_root,
        label_delimiter=args.label_delimiter,
        threshold=args.threshold,
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.workers,
    )
    print(format_report(report))
    out = Path(args.output) if args.output else Path(args.checkpoint).parent / "evaluation.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nreport written to {out}")
    return 0

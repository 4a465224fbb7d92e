"""``mlic evaluate``: metrics of a checkpoint on labelled data, overall and per class."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlic.cli.flags import add_bootstrap, add_command, add_compute, add_label_reading, add_threshold

HELP = """examples:
  mlic evaluate runs/shapes/checkpoints/best --data data/test.csv
  mlic evaluate runs/shapes/checkpoints/best --data data/test.csv --threshold 0.3 --output test.json
  mlic evaluate runs/shapes/checkpoints/best --data data/test.csv --bootstrap 1000   # 95% intervals
  mlic evaluate model.int8.onnx --data data/test.csv          # an exported model (fp32 or INT8), on CPU

Prints an overall table and a per-class table (support, AP, precision, recall, F1) and writes
them as JSON (default: evaluation.json beside the checkpoint folder).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "evaluate", "evaluate a checkpoint on labelled data", __doc__, HELP)
    p.add_argument("checkpoint", metavar="MODEL", help="checkpoint folder (runs/<name>/checkpoints/best) or .onnx")
    p.add_argument("--data", required=True, help="labels to evaluate on (CSV/TSV file or folder)")
    add_label_reading(p)
    add_threshold(p)
    add_compute(p)
    p.add_argument("--output", help="JSON report path (default: <checkpoint>/../evaluation.json)")
    add_bootstrap(p, 0)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.evaluation.bootstrap import Resampling
    from mlic.evaluation.evaluate import evaluate_checkpoint, format_report
    from mlic.evaluation.scoring import BatchOptions
    from mlic.runtime.cpu import configure_allocator

    configure_allocator()  # batches of activations stay mapped between model calls (training's setting)

    batch = BatchOptions(args.device, args.batch_size, args.num_workers, args.progress, args.max_image_pixels)
    evaluate = evaluate_checkpoint
    if Path(args.checkpoint).suffix.lower() == ".onnx":  # an `mlic export` file (fp32 or INT8), run by ONNX Runtime
        from mlic.inference.onnx_scoring import evaluate_onnx as evaluate
    report = evaluate(
        args.checkpoint,
        args.data,
        fmt=args.format,
        image_root=args.image_root,
        label_delimiter=args.label_delimiter,
        threshold=args.threshold,
        batch=batch,
        bootstrap=Resampling(args.bootstrap, args.seed),
    )
    print(format_report(report))
    out = Path(args.output) if args.output else Path(args.checkpoint).parent / "evaluation.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nreport written to {out}")
    return 0

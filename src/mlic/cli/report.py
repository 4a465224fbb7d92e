"""``mlic report``: one self-contained HTML page showing what a run's model learned."""

from __future__ import annotations

import argparse

from mlic.cli.flags import add_command, add_compute, add_label_reading

HELP = """examples:
  mlic report runs/shapes                        # writes runs/shapes/report.html
  mlic report runs/shapes --data data/test.csv   # predict new labelled data with the best checkpoint first
  mlic report runs/shapes --output shapes.html

The page (no network needed to view it) holds the config and data summary, training curves, the
per-label table (sortable), precision-recall curves with each label's threshold, a calibration plot,
co-occurrence heatmaps, TP/FP/FN counts, galleries of hits and errors per label, and Grad-CAM maps.
Everything comes from files the run saved (metrics.csv, predictions/*.npz, checkpoints/best), so no
retraining. Without --data the test predictions are used, else the validation ones.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "report", "HTML report of a run: curves, per-label metrics, errors, Grad-CAM", __doc__, HELP)
    p.add_argument("run_dir", help="run folder (runs/<name>)")
    p.add_argument("--data", help="labelled data to evaluate and report on (CSV/TSV file or folder)")
    add_label_reading(p)
    p.add_argument("--output", help="HTML file to write (default: RUN_DIR/report.html)")
    add_compute(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.evaluation.scoring import BatchOptions
    from mlic.insight.report import build_report
    from mlic.runtime.device import select_device

    batch = BatchOptions(
        select_device(args.device), args.batch_size, args.num_workers, args.progress, args.max_image_pixels
    )
    path = build_report(
        args.run_dir,
        args.output,
        data=args.data,
        fmt=args.format,
        image_root=args.image_root,
        label_delimiter=args.label_delimiter,
        batch=batch,
    )
    print(f"report: {path}")
    return 0

"""``mlic report``: one self-contained HTML page showing what a run's model learned."""

from __future__ import annotations

import argparse

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
    p = sub.add_parser(
        "report",
        help="HTML report of a run: curves, per-label metrics, errors, Grad-CAM",
        description=__doc__,
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="run folder (runs/<name>)")
    p.add_argument("--data", help="labelled data to evaluate and report on (CSV/TSV file or folder)")
    p.add_argument("--format", default="auto", help="label format of --data (default: auto-detected)")
    p.add_argument("--image-root", help="folder the image paths of --data are relative to")
    p.add_argument("--label-delimiter", help="separator inside the tag column of --data (default: space)")
    p.add_argument("--output", help="HTML file to write (default: RUN_DIR/report.html)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=-1, help="DataLoader workers for --data (default: by CPU count)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.cli import UserError
    from mlic.engine.runtime import select_device
    from mlic.report import build_report

    try:
        path = build_report(
            args.run_dir,
            args.output,
            data=args.data,
            fmt=args.format,
            image_root=args.image_root,
            label_delimiter=args.label_delimiter,
            device=str(select_device(args.device)),
            batch_size=args.batch_size,
            num_workers=args.workers,
            progress=args.progress,
        )
    except ValueError as exc:  # e.g. a damaged predictions file, named in the message
        raise UserError(str(exc)) from None
    print(f"report: {path}")
    return 0

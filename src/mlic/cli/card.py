"""``mlic card``: a model card (MODEL_CARD.md, Hugging Face convention) of a checkpoint, measured on labelled data."""

from __future__ import annotations

import argparse

from mlic.cli.flags import add_bootstrap, add_command, add_compute, add_label_reading

HELP = """examples:
  mlic card runs/shapes/checkpoints/best --data data/test.csv          # writes runs/shapes/MODEL_CARD.md
  mlic card runs/shapes/checkpoints/best --data data/test.csv --audit audit/summary.json --output card.md

YAML front matter with the metrics (the Hub's model-index), then the model and its training, the data
(images, labels, unknown share), per-class metrics with 95% bootstrap intervals, thresholds and how they
were chosen, calibration, the label audit's estimates (--audit) and intended use and limits. The report
of the run (mlic report) shows the card when it exists.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "card", "write a model card (MODEL_CARD.md) measured on labelled data", __doc__, HELP)
    p.add_argument("checkpoint", help="checkpoint folder (runs/<name>/checkpoints/best)")
    p.add_argument("--data", required=True, help="labelled data to measure on (the test set)")
    add_label_reading(p)
    add_compute(p)
    p.add_argument("--output", help="file to write (default: the run folder's MODEL_CARD.md)")
    add_bootstrap(p, 1000)
    p.add_argument("--audit", help="summary.json of an `mlic data audit` of the training data")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.data.sources import load_records
    from mlic.evaluation.bootstrap import Resampling
    from mlic.evaluation.scoring import BatchOptions
    from mlic.insight.card import write_model_card

    records = load_records(args.data, fmt=args.format, image_root=args.image_root, label_delimiter=args.label_delimiter)
    batch = BatchOptions(args.device, args.batch_size, args.num_workers, args.progress, args.max_image_pixels)
    path = write_model_card(args.checkpoint, records, str(args.data), args.output, batch=batch,
                            bootstrap=Resampling(args.bootstrap, args.seed), audit=args.audit)  # fmt: skip
    print(f"model card: {path}")
    return 0

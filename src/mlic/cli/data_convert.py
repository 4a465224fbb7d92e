"""``mlic data convert``: rewrite a data set's labels as CSV or JSON Lines."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlic.cli.data_args import add_data_action, read_data

HELP = """examples:
  mlic data convert coco/instances.json --to jsonl data/coco.jsonl
  mlic data convert voc/VOC2012 --to csv data/voc.csv
  mlic data convert data/labels.jsonl --to csv data/labels.csv --overwrite

Image paths are written relative to OUT's folder when below it, else absolute. A CSV gets an
image,labels tag column, or one 1/0/empty column per class when the data has unknown labels or
verified negatives (empty = unknown).
"""


def register(actions: argparse._SubParsersAction) -> None:
    p = add_data_action(actions, "convert", "rewrite a dataset as CSV or JSON Lines", HELP)
    p.add_argument("out", metavar="OUT", help="file to write")
    p.add_argument("--to", choices=("csv", "jsonl"), help="output format (default: from OUT's suffix)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.data.convert import needs_class_columns, write_records
    from mlic.data.records import DataError

    fmt = args.to or {".csv": "csv", ".jsonl": "jsonl"}.get(Path(args.out).suffix.lower())
    if fmt is None:
        raise DataError(f"cannot tell the output format from {args.out!r}; pass --to csv or --to jsonl")
    records = read_data(args)
    out = write_records(records, args.out, fmt, overwrite=args.overwrite)
    layout = "" if fmt != "csv" else " (one column per class)" if needs_class_columns(records) else " (tag list)"
    print(f"{len(records)} records written to {out}{layout}")
    return 0

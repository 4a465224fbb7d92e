"""``mlic data split``: a multi-label stratified train/val/test split, written as CSV files."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlic.cli.data_args import add_data_action, data_name, read_data
from mlic.cli.flags import add_setting

HELP = """examples:
  mlic data split data/all.csv --val 0.1 --test 0.1
  mlic data split coco/instances.json --val 0.15 --test 0.15 --seed 3 --output-dir data/coco-splits

Multi-label stratified split: every label keeps about the same share in train, val and test.
Writes train.csv, val.csv and test.csv (default folder: ./splits-<data name>) and prints the
per-label counts of each split.
"""


def register(actions: argparse._SubParsersAction) -> None:
    p = add_data_action(actions, "split", "stratified train/val/test split", HELP)
    p.add_argument("--val", type=float, default=0.1, help="validation fraction (default: 0.1)")
    p.add_argument("--test", type=float, default=0.1, help="test fraction (default: 0.1)")
    add_setting(p, "seed", own_default=True)
    p.add_argument("--output-dir", help="where the split CSVs go (default: ./splits-<data name>)")
    p.add_argument("--overwrite", action="store_true", help="replace existing split files")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.data.convert import write_records
    from mlic.data.labels import build_vocabulary
    from mlic.data.records import DataError
    from mlic.data.splits import split_report, stratified_split

    records = read_data(args)
    out = Path(args.output_dir or f"splits-{data_name(args.data)}")
    files = {name: out / f"{name}.csv" for name in ("train", "val", "test")}
    existing = [str(path) for path in files.values() if path.exists()]
    if existing and not args.overwrite:  # check all three first, so a refusal leaves no half-written split
        raise DataError(f"already exist: {', '.join(existing)} (pass --overwrite to replace them)")
    train, val, test = stratified_split(records, val_fraction=args.val, test_fraction=args.test, seed=args.seed)
    splits = {"train": train, "val": val, "test": test}
    print(split_report(splits, build_vocabulary(records)))
    print()
    for name, part in splits.items():
        if part:
            write_records(part, files[name], "csv", overwrite=True)
            print(f"{name}: {len(part)} records -> {files[name]}")
        else:
            files[name].unlink(missing_ok=True)  # an old file would pose as this split
            print(f"{name}: empty, not written")
    return 0

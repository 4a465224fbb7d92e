"""``mlic data``: look at, convert and split labelled data before training on it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = """examples:
  mlic data inspect data/train.csv                     # statistics and problems; exit 1 if any error
  mlic data convert coco/instances.json --to jsonl data/all.jsonl
  mlic data split data/all.csv --val 0.1 --test 0.1 --output-dir data/
  mlic data fashion-collage /usr/share/datasets/fashion-mnist data/fashion   # benchmark collages
  mlic data cache data/train.csv --val data/val.csv --image-size 224     # decode images once, ahead

Run `mlic data ACTION --help` for each action's flags.
"""

INSPECT_HELP = """examples:
  mlic data inspect data/train.csv
  mlic data inspect coco/instances.json --image-root coco/images --output-dir reports/coco
  mlic data inspect data/train.csv --no-images --classes cat,dog,grass

Prints image and label statistics and every problem with its file: missing, unreadable, truncated
and huge images, duplicate rows and duplicate files, labels outside --classes (errors); images
without labels and duplicate files (warnings). Writes report.json, label_frequency.png and
cooccurrence.png to --output-dir (default: ./inspect-<data name>). Exit code 1 if there are errors.
"""

CONVERT_HELP = """examples:
  mlic data convert coco/instances.json --to jsonl data/coco.jsonl
  mlic data convert voc/VOC2012 --to csv data/voc.csv
  mlic data convert data/labels.jsonl --to csv data/labels.csv --overwrite

Image paths are written relative to OUT's folder when below it, else absolute. A CSV gets an
image,labels tag column, or one 1/0/empty column per class when the data has unknown labels or
verified negatives (empty = unknown).
"""

SPLIT_HELP = """examples:
  mlic data split data/all.csv --val 0.1 --test 0.1
  mlic data split coco/instances.json --val 0.15 --test 0.15 --seed 3 --output-dir data/coco-splits

Multi-label stratified split: every label keeps about the same share in train, val and test.
Writes train.csv, val.csv and test.csv (default folder: ./splits-<data name>) and prints the
per-label counts of each split.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="inspect, convert and split labelled data",
        description=__doc__,
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    inspect = _add_action(actions, "inspect", "statistics and problems of a dataset", INSPECT_HELP)
    inspect.add_argument("--output-dir", help="where report.json and the plots go (default: ./inspect-<data name>)")
    inspect.add_argument("--classes", help="expected class names: comma-separated, or a file with one per line")
    inspect.add_argument("--max-pixels", type=int, help="images with more pixels are errors (default: Pillow's)")
    inspect.add_argument("--no-images", dest="check_images", action="store_false", help="only check files exist")
    inspect.add_argument("--no-progress", dest="progress", action="store_false")
    inspect.set_defaults(run=run_inspect)

    convert = _add_action(actions, "convert", "rewrite a dataset as CSV or JSON Lines", CONVERT_HELP)
    convert.add_argument("out", metavar="OUT", help="file to write")
    convert.add_argument("--to", choices=("csv", "jsonl"), help="output format (default: from OUT's suffix)")
    convert.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    convert.set_defaults(run=run_convert)

    split = _add_action(actions, "split", "stratified train/val/test split", SPLIT_HELP)
    split.add_argument("--val", type=float, default=0.1, help="validation fraction (default 0.1)")
    split.add_argument("--test", type=float, default=0.1, help="test fraction (default 0.1)")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--output-dir", help="where the split CSVs go (default: ./splits-<data name>)")
    split.add_argument("--overwrite", action="store_true", help="replace existing split files")
    split.set_defaults(run=run_split)

    from mlic.cli import data_cache, data_fashion

    data_fashion.add_parser(actions)
    data_cache.add_parser(actions)


def _add_action(actions: argparse._SubParsersAction, name: str, help: str, epilog: str) -> argparse.ArgumentParser:
    """A data action with the arguments every one of them reads data with."""
    p = actions.add_parser(
        name, help=help, description=help, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("data", metavar="DATA", help="labels file or folder (CSV, TSV, JSONL, COCO, VOC, ...)")
    p.add_argument("--format", default="auto", help="label format (default: auto-detected)")
    p.add_argument("--image-root", help="folder image paths are relative to")
    p.add_argument("--label-delimiter", help="separator inside the tag column (default: space)")
    return p


def _read(args: argparse.Namespace):
    from mlic.data.readers import read_records

    return read_records(args.data, args.format, image_root=args.image_root, label_delimiter=args.label_delimiter)


def _data_name(data: str) -> str:
    """'data/train.csv' -> 'train'; a folder gives its own name, so '.' works too."""
    return Path(data).resolve().stem or "data"


def _class_names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    path = Path(value)
    text = path.read_text(encoding="utf-8").splitlines() if path.is_file() else value.split(",")
    return [name.strip() for name in text if name.strip()]


def run_inspect(args: argparse.Namespace) -> int:
    from mlic.data.images import DEFAULT_MAX_PIXELS
    from mlic.data.inspect import format_report, inspect_dataset
    from mlic.plots import plot_cooccurrence, plot_label_frequency

    report = inspect_dataset(
        _read(args),
        class_names=_class_names(args.classes),
        max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
        check_images=args.check_images,
        progress=args.progress,
    )
    print(format_report(report))
    out = Path(args.output_dir or f"inspect-{_data_name(args.data)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({"data": str(args.data), **report.to_dict()}, indent=2))
    plot_label_frequency(report.class_names, [c["positives"] for c in report.per_class], out / "label_frequency.png")
    plot_cooccurrence(report.class_names, report.cooccurrence, out / "cooccurrence.png")
    print(f"\nreport.json, label_frequency.png and cooccurrence.png written to {out}")
    return 1 if report.errors else 0


def run_convert(args: argparse.Namespace) -> int:
    from mlic.cli import UserError
    from mlic.data.convert import needs_class_columns, write_records

    fmt = args.to or {".csv": "csv", ".jsonl": "jsonl"}.get(Path(args.out).suffix.lower())
    if fmt is None:
        raise UserError(f"cannot tell the output format from {args.out!r}; pass --to csv or --to jsonl")
    records = _read(args)
    out = write_records(records, args.out, fmt, overwrite=args.overwrite)
    layout = "" if fmt != "csv" else " (one column per class)" if needs_class_columns(records) else " (tag list)"
    print(f"{len(records)} records written to {out}{layout}")
    return 0


def run_split(args: argparse.Namespace) -> int:
    from mlic.cli import UserError
    from mlic.data.convert import write_records
    from mlic.data.labels import build_vocabulary
    from mlic.data.splits import split_report, stratified_split

    records = _read(args)
    out = Path(args.output_dir or f"splits-{_data_name(args.data)}")
    files = {name: out / f"{name}.csv" for name in ("train", "val", "test")}
    existing = [str(path) for path in files.values() if path.exists()]
    if existing and not args.overwrite:  # check all three first, so a refusal leaves no half-written split
        raise UserError(f"already exist: {', '.join(existing)} (pass --overwrite to replace them)")
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

"""``mlic data inspect``: label statistics and every problem of a data set, with its file and line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlic.cli.data_args import add_data_action, data_name, read_data
from mlic.cli.flags import add_setting

HELP = """examples:
  mlic data inspect data/train.csv
  mlic data inspect coco/instances.json --image-root coco/images --output-dir reports/coco
  mlic data inspect data/train.csv --no-images --classes cat,dog,grass

Prints image and label statistics and every problem with its file: missing, unreadable, truncated
and huge images, duplicate rows and duplicate files, labels outside --classes (errors); images
without labels and duplicate files (warnings). Writes report.json, label_frequency.png and
cooccurrence.png to --output-dir (default: ./inspect-<data name>). Exit code 1 if there are errors.
"""


def register(actions: argparse._SubParsersAction) -> None:
    p = add_data_action(actions, "inspect", "statistics and problems of a dataset", HELP)
    p.add_argument("--output-dir", help="where report.json and the plots go (default: ./inspect-<data name>)")
    p.add_argument("--classes", help="expected class names: comma-separated, or a file with one per line")
    p.add_argument("--no-images", dest="check_images", action="store_false", help="only check files exist")
    add_setting(p, "max_image_pixels", own_default=True)
    add_setting(p, "progress", own_default=True)
    p.set_defaults(run=run)


def _class_names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    path = Path(value)
    text = path.read_text(encoding="utf-8").splitlines() if path.is_file() else value.split(",")
    return [name.strip() for name in text if name.strip()]


def run(args: argparse.Namespace) -> int:
    from mlic.data.inspect import format_report, inspect_dataset
    from mlic.data.records import RowErrors
    from mlic.insight.plots import plot_cooccurrence, plot_label_frequency

    problems = RowErrors(collect=True)  # every bad row is reported, not just the first
    report = inspect_dataset(
        read_data(args, problems),
        class_names=_class_names(args.classes),
        max_pixels=args.max_image_pixels,
        check_images=args.check_images,
        progress=args.progress,
        row_errors=problems.errors,
    )
    print(format_report(report))
    out = Path(args.output_dir or f"inspect-{data_name(args.data)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({"data": str(args.data), **report.to_dict()}, indent=2))
    plot_label_frequency(report.class_names, [c["positives"] for c in report.per_class], out / "label_frequency.png")
    plot_cooccurrence(report.class_names, report.cooccurrence, out / "cooccurrence.png")
    print(f"\nreport.json, label_frequency.png and cooccurrence.png written to {out}")
    return 1 if report.errors else 0

"""``mlic data apply-fixes``: accept an audit's suggestions above a score, write the corrected label file."""

from __future__ import annotations

import argparse

from mlic.cli.data_args import add_data_action, read_data

HELP = """examples:
  mlic data apply-fixes data/train.csv audit-train/audit.csv data/train-fixed.csv --accept-above 0.9
  mlic data apply-fixes data/train.jsonl audit.csv fixed.jsonl --accept-above 0.95 --overwrite

Every audit row whose score is at least --accept-above gets its suggested value: a likely missing label
is added, a likely spurious one removed. OUT has the input's format (CSV, TSV or JSON Lines; other
formats: --to csv or --to jsonl). Rows for images or labels not in DATA are an error, never ignored.
"""


def register(actions: argparse._SubParsersAction) -> None:
    p = add_data_action(actions, "apply-fixes", "apply a label audit's suggestions", HELP)
    p.add_argument("audit", metavar="AUDIT_CSV", help="audit.csv of mlic data audit")
    p.add_argument("out", metavar="OUT", help="corrected label file to write")
    p.add_argument("--accept-above", type=_score, required=True, metavar="S", help="accept rows with score >= S")
    p.add_argument("--to", choices=("csv", "tsv", "jsonl"), help="output format (default: the input's)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(run=run)


def _score(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be in [0, 1]")
    return value


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlic.data.convert import write_records
    from mlic.data.fixes import apply_fixes, read_audit, writable_format
    from mlic.data.readers import detect_format

    records = read_data(args)
    fmt = args.to or writable_format(args.format if args.format != "auto" else detect_format(args.data), args.data)
    rows = read_audit(Path(args.audit))
    base = Path(args.image_root) if args.image_root else Path(args.data).parent
    fixed, changes = apply_fixes(records, rows, args.accept_above, base)
    out = write_records(fixed, args.out, fmt, overwrite=args.overwrite)
    print(f"{changes['added']} labels added, {changes['removed']} removed ({changes['accepted']} of {len(rows)} "
          f"audit rows at score >= {args.accept_above}) -> {out}")  # fmt: skip
    return 0

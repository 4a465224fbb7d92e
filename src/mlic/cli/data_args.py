"""What the ``mlic data`` actions that read a label file share: DATA and the flags that say how to read it."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlic.cli.flags import add_command, add_label_reading


def add_data_action(actions: argparse._SubParsersAction, name: str, help: str, epilog: str) -> argparse.ArgumentParser:
    """A data action that reads a label file, with the flags that say how (as ``mlic train`` reads it)."""
    p = add_command(actions, name, help, help, epilog)
    p.add_argument("data", metavar="DATA", help="labels file or folder (CSV, TSV, JSONL, COCO, VOC, ...)")
    add_label_reading(p)
    return p


def read_data(args: argparse.Namespace, problems=None):
    """The records of DATA, read with the action's --format, --image-root and --label-delimiter; ``problems``
    (a ``RowErrors``) collects the errors of single rows instead of stopping at the first."""
    from mlic.data.readers import read_records

    return read_records(
        args.data, args.format, problems=problems, image_root=args.image_root, label_delimiter=args.label_delimiter
    )


def data_name(data: str) -> str:
    """'data/train.csv' -> 'train'; a folder gives its own name, so '.' works too."""
    return Path(data).resolve().stem or "data"

"""``mlic data audit``: labels that out-of-fold models contradict, ranked, with a review page; leaks between splits."""

from __future__ import annotations

import argparse

from mlic.cli.data_args import data_name
from mlic.cli.flags import add_command, add_config_source, add_settings, config_from_args, help_text
from mlic.config import SETTINGS

HELP = """examples:
  mlic data audit data/train.csv --folds 5 --max-minutes 3 --image-size 64
  mlic data audit data/train.csv --config configs/default.yaml --val data/val.csv --test data/test.csv
  mlic data apply-fixes data/train.csv audit-train/audit.csv data/train-fixed.csv --accept-above 0.9

Trains one model per fold with the recipe given by the training flags (or --config), each within
--max-minutes, and scores every image with the model that did not see its labels. Confident learning
(Northcutt et al. 2021) then flags likely missing and likely spurious labels; unknown labels are never
flagged. Writes audit.csv, summary.json and review.html to --output-dir (default: audit-<data name>);
with --val/--test also leaks.csv, the images found in two splits (exact or near copies).
"""

# The training settings (the recipe each fold trains with); --name is the folds' own, --output-dir the audit's.
FLAGS = tuple(f for f in SETTINGS if f not in ("train", "name", "output_dir"))


def register(actions: argparse._SubParsersAction) -> None:
    p = add_command(actions, "audit", "find likely wrong labels with out-of-fold models", __doc__, HELP)
    p.add_argument("train", metavar="DATA", help=help_text(SETTINGS["train"]))
    add_config_source(p)
    add_settings(p, FLAGS)
    p.add_argument("--folds", type=_folds, default=5, metavar="K", help="folds, one model each (default: 5)")
    p.add_argument("--output-dir", dest="audit_dir", help="where the audit goes (default: ./audit-<data name>)")
    p.add_argument("--overwrite", action="store_true", help="replace an audit already in the folder")
    p.set_defaults(run=run)


def _folds(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError("must be at least 2")
    return value


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlic.engine.audit import REVIEW_FILE, audit_labels
    from mlic.insight.audit_page import write_review_page

    cfg = config_from_args(args, ("train", *FLAGS))
    cfg.validate()
    folder = Path(args.audit_dir or f"audit-{data_name(cfg.data.train)}")
    audit = audit_labels(cfg, folder, folds=args.folds, overwrite=args.overwrite)
    write_review_page(folder / REVIEW_FILE, audit.rows, audit.summary, device=cfg.device)
    s = audit.summary
    missing = sum(c["missing"] for c in s["per_class"])
    spurious = sum(c["spurious"] for c in s["per_class"])
    print(f"{s['flagged']} of {s['cells']} known labels flagged: about {missing} missing, {spurious} spurious")
    if s.get("leaks"):
        print(f"leaks between splits: {s['leaks']['exact']} exact, {s['leaks']['near']} near copies "
              f"({folder / s['leaks']['file']})")  # fmt: skip
    print(f"audit: {folder / 'audit.csv'}\nreview: {folder / REVIEW_FILE}")
    return 0

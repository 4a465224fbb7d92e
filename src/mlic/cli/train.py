"""``mlic train``: train a model from a label file or folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlic.cli.flags import add_command, add_config_source, add_settings, config_from_args, help_text
from mlic.config import SETTINGS

HELP = """examples:
  mlic train data/train.csv --val data/val.csv --test data/test.csv --name shapes
  mlic train data/train.csv --image-size 96 --epochs 20 --lr 3e-4 --batch-size 64
  mlic train --config configs/seed.yaml --set optim.epochs=3
  mlic train data/train.csv --dry-run           # one batch end to end, to check the set-up
  mlic train --resume runs/shapes               # continue a stopped run exactly where it stopped
  torchrun --nproc-per-node 4 -m mlic train data/train.csv --name ddp   # DistributedDataParallel

DATA is a CSV/TSV with an image-path column and either a tag-list column ("cat dog") or one
0/1 column per class (or JSON Lines, COCO, VOC, Open Images, a folder per label). Image paths are
relative to --image-root (default: the label file's folder). Every flag is also a config key
(--set section.key=value, or a YAML file for --config).
Writes runs/<name>/: config.yaml, metrics.csv, history.png, checkpoints/best and checkpoints/last.
SIGTERM or Ctrl-C finishes the current step, writes checkpoints/last and exits with 128 + the signal
number (143 for SIGTERM, 130 for SIGINT); --resume continues from there.
"""

# every setting but DATA itself, which is the positional argument
FLAGS = tuple(flat for flat in SETTINGS if flat != "train")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "train", "train a model", __doc__, HELP)
    p.add_argument("train", nargs="?", metavar="DATA", help=help_text(SETTINGS["train"]))
    add_config_source(p)
    add_settings(p, FLAGS)
    g = p.add_argument_group("run folder")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same --name")
    g.add_argument(
        "--resume",
        metavar="RUN_DIR|auto",
        help="continue a stopped run exactly from its last checkpoint (auto: the --name run folder)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # A run folder being resumed brings its own config, unless --config names another.
    own = Path(args.resume) / "config.yaml" if args.resume and args.resume != "auto" else None
    cfg = config_from_args(args, ("train", *FLAGS), base=str(own) if own and own.is_file() else None)
    cfg.validate(resuming=args.resume is not None)  # before torch is even imported: a bad value costs no time

    from mlic.engine.fit import fit
    from mlic.engine.signals import TrainingInterrupted
    from mlic.runtime.console import is_main_process

    try:
        result = fit(cfg, overwrite=args.overwrite, resume=args.resume)
    except TrainingInterrupted as exc:
        print(f"mlic train: {exc}", file=sys.stderr)
        return exc.exit_code
    if not is_main_process():
        return 0
    print(f"run folder: {result.run_dir}")
    print(f"best checkpoint: {result.best_checkpoint} (epoch {result.best_epoch})")
    if result.test_metrics:
        m = result.test_metrics
        print(
            f"test: mAP {m['mAP']:.4f} | F1 micro {m['f1_micro']:.4f} | F1 macro {m['f1_macro']:.4f} | "
            f"exact match {m['exact_match']:.4f} | Hamming {m['hamming_loss']:.4f}"
        )
    return 0

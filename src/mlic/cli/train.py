"""``mlic train``: train a model from a label file or folder."""

from __future__ import annotations

import argparse

HELP = """examples:
  mlic train data/train.csv --val data/val.csv --test data/test.csv --name shapes
  mlic train data/train.csv --image-size 96 --epochs 20 --lr 3e-4 --batch-size 64
  mlic train --config configs/seed.yaml --set optim.epochs=3
  mlic train data/train.csv --dry-run           # one batch end to end, to check the set-up

DATA is a CSV/TSV with an image-path column and either a tag-list column ("cat dog") or one
0/1 column per class. Image paths are relative to --image-root (default: the CSV's folder).
Writes runs/<name>/: config.yaml, metrics.csv, history.png, checkpoints/best and checkpoints/last.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model",
        description=__doc__,
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", nargs="?", help="training labels (CSV/TSV file or folder)")
    p.add_argument("--config", help="YAML config; flags given here override it")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    g = p.add_argument_group("data")
    g.add_argument("--val", help="validation labels (default: hold out --val-fraction of DATA)")
    g.add_argument("--test", help="test labels, evaluated with the best checkpoint at the end")
    g.add_argument("--format", help="label format (default: auto-detected)")
    g.add_argument("--image-root", help="folder image paths are relative to")
    g.add_argument("--label-delimiter", help="separator inside the tag column (default: space)")
    g.add_argument("--val-fraction", type=float, help="fraction held out when no --val (default 0.1)")
    g.add_argument("--image-size", type=int, help="input size in pixels (default 224)")
    g.add_argument("--augment", help="augmentation preset: none|light (default light: horizontal flip)")
    g.add_argument("--workers", dest="num_workers", type=int, help="DataLoader workers (default: by CPU count)")
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--model", help="model name (default seed_cnn)")
    g.add_argument("--drop-rate", type=float, help="dropout before the classifier (default 0.5)")
    g.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    g.add_argument("--weight-decay", type=float, help="weight decay (default 0)")
    g.add_argument("--epochs", type=int, help="epochs (default 10)")
    g.add_argument("--batch-size", type=int, help="batch size (default 32)")
    g = p.add_argument_group("run")
    g.add_argument("--name", help="run folder name under --output-dir (default: a timestamp)")
    g.add_argument("--output-dir", help="where run folders go (default runs)")
    g.add_argument("--overwrite", action="store_true", help="reuse an existing run folder")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument("--device", help="auto|cpu|cuda|cuda:N|mps (default auto)")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bars")
    g.add_argument("--dry-run", action="store_true", default=None, help="run one batch of train and val, then stop")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.config import FLAT_KEYS, TrainConfig, apply_flat, apply_overrides, load_config
    from mlic.engine.fit import fit

    cfg = load_config(args.config) if args.config else TrainConfig()
    cfg = apply_overrides(cfg, args.overrides)
    flat = {k: v for k, v in vars(args).items() if k in FLAT_KEYS and k != "train"}
    cfg = apply_flat(cfg, train=args.data, **flat)
    result = fit(cfg, overwrite=args.overwrite)
    print(f"run folder: {result.run_dir}")
    print(f"best checkpoint: {result.best_checkpoint} (epoch {result.best_epoch})")
    if result.test_metrics:
        m = result.test_metrics
        print(
            f"test: mAP {m['mAP']:.4f} | F1 micro {m['f1_micro']:.4f} | F1 macro {m['f1_macro']:.4f} | "
            f"exact match {m['exact_match']:.4f} | Hamming {m['hamming_loss']:.4f}"
        )
    return 0

"""``mlic train``: train a model from a label file or folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = """examples:
  mlic train data/train.csv --val data/val.csv --test data/test.csv --name shapes
  mlic train data/train.csv --image-size 96 --epochs 20 --lr 3e-4 --batch-size 64
  mlic train --config configs/seed.yaml --set optim.epochs=3
  mlic train data/train.csv --dry-run           # one batch end to end, to check the set-up
  mlic train --resume runs/shapes               # continue a stopped run exactly where it stopped
  torchrun --nproc-per-node 4 -m mlic train data/train.csv --name ddp   # DistributedDataParallel

DATA is a CSV/TSV with an image-path column and either a tag-list column ("cat dog") or one
0/1 column per class. Image paths are relative to --image-root (default: the CSV's folder).
Writes runs/<name>/: config.yaml, metrics.csv, history.png, checkpoints/best and checkpoints/last.
SIGTERM or Ctrl-C finishes the current step, writes checkpoints/last and exits with 128 + the signal
number (143 for SIGTERM, 130 for SIGINT); --resume continues from there.
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
    g.add_argument("--augment", help="augmentation preset: none|light|standard|strong (default light: horizontal flip)")
    g.add_argument(
        "--skip-bad-images",
        action="store_true",
        default=None,
        help="leave out files the pre-training scan finds unreadable, instead of stopping",
    )
    g.add_argument("--workers", dest="num_workers", type=int, help="DataLoader workers (default: by CPU count)")
    g.add_argument(
        "--cache",
        choices=("auto", "off"),
        help="decoded-image cache: decode and resize each image once, then read it memory-mapped (default auto: "
        "on unless the disk lacks room)",
    )
    g.add_argument("--cache-dir", help="where the cache lives (default: $MLIC_CACHE_DIR, else ~/.cache/mlic)")
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--model", help="model name (default seed_cnn)")
    g.add_argument("--drop-rate", type=float, help="dropout before the classifier (default 0.5)")
    g.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    g.add_argument("--weight-decay", type=float, help="weight decay (default 0)")
    g.add_argument("--epochs", type=int, help="epochs (default 10)")
    g.add_argument("--batch-size", type=int, help="batch size (default 32)")
    g.add_argument("--pretrained", help="local weights for the model (.safetensors, or .pth loaded weights-only)")
    g.add_argument("--freeze-backbone-epochs", type=int, help="train only the head for the first N epochs")
    g.add_argument("--optimizer", help="adam|adamw|sgd (default adam)")
    g.add_argument("--schedule", help="constant|cosine|onecycle (default constant)")
    g.add_argument("--warmup-epochs", type=float, help="linear warm-up for cosine (default 0)")
    g.add_argument("--clip-grad", type=float, help="max gradient norm (default 0: off)")
    g.add_argument("--accum-steps", type=int, help="gradient accumulation steps (default 1)")
    g.add_argument("--ema", action="store_true", default=None, help="keep and evaluate an EMA of the weights")
    g.add_argument("--early-stopping", type=int, help="stop after N epochs without a better val mAP")
    g.add_argument("--loss", help="bce|focal|asl (default bce)")
    g.add_argument("--pos-weight", help="none|auto (bce: weight positives by label rarity)")
    g.add_argument("--mixup-alpha", type=float, help="multi-label MixUp strength (default 0: off)")
    g.add_argument("--cutmix-alpha", type=float, help="CutMix strength (default 0: off)")
    g.add_argument("--threshold-method", help="per_class_f1|global_f1|fixed: thresholds tuned on validation")
    g = p.add_argument_group("speed")
    g.add_argument("--precision", help="auto|fp32|bf16|fp16 (default auto: bf16 where the hardware has it)")
    g.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        default=None,
        help="keep the default NCHW memory layout",
    )
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    g.add_argument("--sync-bn", action="store_true", default=None, help="DDP: synchronise BatchNorm across ranks")
    g.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="deterministic algorithms only (bit-identical reruns)",
    )
    g = p.add_argument_group("run")
    g.add_argument("--name", help="run folder name under --output-dir (default: a timestamp)")
    g.add_argument("--output-dir", help="where run folders go (default runs)")
    g.add_argument("--overwrite", action="store_true", help="reuse an existing run folder")
    g.add_argument(
        "--resume",
        metavar="RUN_DIR|auto",
        help="continue a stopped run exactly from its last checkpoint (auto: the --name run folder)",
    )
    g.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps (default: epoch ends only)")
    g.add_argument("--max-minutes", type=float, help="training time budget; epochs and schedule fitted to it")
    g.add_argument("--no-report", dest="report", action="store_false", default=None, help="skip report.html")
    g.add_argument(
        "--tensorboard",
        action="store_true",
        default=None,
        help="also write TensorBoard event files (runs/<name>/tensorboard)",
    )
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument("--device", help="auto|cpu|cuda|cuda:N|mps (default auto)")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bars")
    g.add_argument("--dry-run", action="store_true", default=None, help="run one batch of train and val, then stop")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.config import FLAT_KEYS, TrainConfig, apply_flat, apply_overrides, load_config
    from mlic.engine.console import is_main_process
    from mlic.engine.fit import TrainingInterrupted, fit

    if args.resume and args.resume != "auto" and not args.config and (Path(args.resume) / "config.yaml").is_file():
        args.config = str(Path(args.resume) / "config.yaml")  # resuming a run folder: its own config by default
    cfg = load_config(args.config) if args.config else TrainConfig()
    cfg = apply_overrides(cfg, args.overrides)
    flat = {k: v for k, v in vars(args).items() if k in FLAT_KEYS and k != "train"}
    cfg = apply_flat(cfg, train=args.data, **flat)
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

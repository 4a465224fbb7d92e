"""``mlic data cache``: decode and resize a data set's images once, ahead of training."""

from __future__ import annotations

import argparse

HELP = """examples:
  mlic data cache data/train.csv --val data/val.csv --image-size 224
  mlic data cache data/train.csv --config configs/default.yaml     # the caches that recipe's run will read
  mlic data cache --clear                                          # delete every cached data set

Builds exactly the caches `mlic train` would build with the same data flags (the same split, image size
and augmentation preset), so the first epoch starts at full speed. Caches live in --cache-dir (default:
$MLIC_CACHE_DIR, else ~/.cache/mlic), never beside the images; a changed image (size or modification
time) or changed preprocessing gives a new cache, and `--clear` removes them all.
"""


def add_parser(data_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``cache`` to the ``mlic data`` actions."""
    p = data_subparsers.add_parser(
        "cache",
        help="decode and resize images once into the training cache",
        description=__doc__,
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", metavar="DATA", nargs="?", help="training labels (CSV/TSV file or folder)")
    p.add_argument("--config", help="YAML config whose data settings to use; flags override it")
    p.add_argument("--val", help="validation labels (default: hold out --val-fraction of DATA, as train does)")
    p.add_argument("--val-fraction", type=float, help="fraction held out when no --val (default 0.1)")
    p.add_argument("--format", help="label format (default: auto-detected)")
    p.add_argument("--image-root", help="folder image paths are relative to")
    p.add_argument("--label-delimiter", help="separator inside the tag column (default: space)")
    p.add_argument("--image-size", type=int, help="input size in pixels (default 224)")
    p.add_argument("--augment", help="augmentation preset the run will use (cropping presets cache larger images)")
    p.add_argument("--skip-bad-images", action="store_true", default=None, help="leave out unreadable files")
    p.add_argument("--seed", type=int, help="the run's seed (it decides a held-out split)")
    p.add_argument("--cache-dir", help="where caches live (default: $MLIC_CACHE_DIR, else ~/.cache/mlic)")
    p.add_argument("--clear", action="store_true", help="delete every cached data set in the cache folder")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from mlic.cli import UserError
    from mlic.config import TrainConfig, apply_flat, load_config
    from mlic.data.cache import cache_root, clear_cache
    from mlic.engine.data_setup import prepare_data
    from mlic.engine.distributed import DistInfo

    if args.clear:
        freed = clear_cache(args.cache_dir)
        print(f"cleared {args.cache_dir or cache_root()}: {freed / 1e9:.2f} GB freed")
        return 0
    if args.data is None:
        raise UserError("DATA is required (or pass --clear)")
    cfg = load_config(args.config) if args.config else TrainConfig()
    keys = ("val", "val_fraction", "format", "image_root", "label_delimiter", "image_size", "augment",
            "skip_bad_images", "seed", "cache_dir", "progress")  # fmt: skip
    cfg = apply_flat(cfg, train=args.data, **{k: getattr(args, k) for k in keys})
    cfg.data.cache = "auto"
    prepare_data(cfg, DistInfo())  # the very data set-up of `mlic train`, which builds the caches
    return 0

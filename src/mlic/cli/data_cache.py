"""``mlic data cache``: decode and resize a data set's images once, ahead of training."""

from __future__ import annotations

import argparse

from mlic.cli.flags import add_command, add_config_source, add_settings, config_from_args, help_text
from mlic.config import SETTINGS

HELP = """examples:
  mlic data cache data/train.csv --val data/val.csv --image-size 224
  mlic data cache data/train.csv --config configs/default.yaml     # the caches that recipe's run will read
  mlic data cache --clear                                          # delete every cached data set

Builds exactly the caches `mlic train` would build with the same data flags (the same split, image size
and augmentation preset), so the first epoch starts at full speed. Caches live in --cache-dir (default:
$MLIC_CACHE_DIR, else ~/.cache/mlic), never beside the images; a changed image or changed preprocessing
gives a new cache, and `--clear` removes them all.
"""

# The data settings (as `mlic train` takes them, but --cache itself), the seed (it decides a held-out
# split) and progress bars.
FLAGS = tuple(f for f, s in SETTINGS.items() if s.section == "data" and f not in ("train", "cache")) + (
    "seed",
    "progress",
)


def register(actions: argparse._SubParsersAction) -> None:
    """Add ``cache`` to the ``mlic data`` actions."""
    p = add_command(actions, "cache", "decode and resize images once into the training cache", __doc__, HELP)
    p.add_argument("train", metavar="DATA", nargs="?", help=help_text(SETTINGS["train"]))
    add_config_source(p)
    add_settings(p, FLAGS)
    p.add_argument("--clear", action="store_true", help="delete every cached data set in the cache folder")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.errors import UserError

    cfg = config_from_args(args, ("train", *FLAGS))
    if args.clear:
        from mlic.data.cache import cache_root, clear_cache

        freed = clear_cache(cfg.data.cache_dir)
        print(f"cleared {cfg.data.cache_dir or cache_root()}: {freed / 1e9:.2f} GB freed")
        return 0
    if cfg.data.train is None:
        raise UserError("DATA is required (or pass --clear)")
    cfg.validate()

    from mlic.engine.data_setup import cache_run_data

    cache_run_data(cfg.data, seed=cfg.seed, progress=cfg.progress)  # the very data set-up of `mlic train`
    return 0

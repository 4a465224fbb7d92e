"""``mlic data``: look at, convert, split and cache labelled data before training on it (one file per action)."""

from __future__ import annotations

import argparse

from mlic.cli import (
    data_apply_fixes,
    data_audit,
    data_cache,
    data_convert,
    data_fashion,
    data_inspect,
    data_shard,
    data_split,
)
from mlic.cli.flags import add_command

HELP = """examples:
  mlic data inspect data/train.csv                     # statistics and problems; exit 1 if any error
  mlic data convert coco/instances.json data/all.jsonl
  mlic data split data/all.csv --val 0.1 --test 0.1 --output-dir data/
  mlic data shard data/train.csv shards/train/             # tar shards to stream (local, s3://, ...)
  mlic data audit data/train.csv --max-minutes 3           # likely wrong labels, from out-of-fold models
  mlic data fashion-collage /usr/share/datasets/fashion-mnist data/fashion   # benchmark collages
  mlic data cache data/train.csv --val data/val.csv --image-size 224     # decode images once, ahead

Run `mlic data ACTION --help` for each action's flags.
"""

ACTIONS = (data_inspect, data_convert, data_split, data_shard, data_audit, data_apply_fixes, data_fashion, data_cache)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "data", "inspect, convert, split, shard, audit and cache labelled data", __doc__, HELP)
    actions = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    for module in ACTIONS:
        module.register(actions)

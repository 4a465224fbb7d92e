"""``mlic data shard``: a data set as WebDataset-style tar shards, to stream from object storage or any disk."""

from __future__ import annotations

import argparse

from mlic.cli.data_args import add_data_action, read_data
from mlic.cli.flags import add_setting
from mlic.config import collect_settings
from mlic.data.shards import ShardOptions

HELP = """examples:
  mlic data shard data/train.csv shards/train/
  mlic data shard data/val.csv shards/val/ --resize 256            # re-encode: shorter side 256 px
  mlic train 'shards/train/shard-{000000..000511}.tar' --val shards/val/
  aws s3 sync shards/ s3://bucket/shards/ && mlic train 's3://bucket/shards/train/shard-{000000..000511}.tar' ...

Each sample is two tar members with the same key, the image as shipped (or re-encoded with --resize)
and its labels as JSON; OUT also gets labels.parquet (every sample's labels, for mlic) and index.json
(classes, shard sizes, label counts). Images are scanned first, as mlic train does: a bad one stops
the run unless --skip-bad-images. Split before sharding (mlic data split): a streamed run validates
on its own --val.
"""

OPTIONS = collect_settings(ShardOptions)


def register(actions: argparse._SubParsersAction) -> None:
    p = add_data_action(actions, "shard", "write a data set as tar shards for streaming", HELP)
    p.add_argument("out", metavar="OUT", help="folder the shards, labels.parquet and index.json go to")
    for s in OPTIONS:
        add_setting(p, s, own_default=True)
    add_setting(p, "skip_bad_images", own_default=True)
    add_setting(p, "progress", own_default=True)
    p.add_argument("--overwrite", action="store_true", help="replace a shard set already in OUT")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.data.scan import drop_bad_images
    from mlic.data.shards import write_shards

    options = ShardOptions(**{s.key: getattr(args, s.flat) for s in OPTIONS})
    records = read_data(args)
    records = drop_bad_images(records, skip=args.skip_bad_images, max_pixels=options.max_pixels,
                              progress=args.progress)  # fmt: skip
    index = write_shards(records, args.out, options, overwrite=args.overwrite, progress=args.progress)
    shards = f"{len(index.shards)} shard{'s' if len(index.shards) > 1 else ''}"
    print(f"{index.samples} samples in {shards}, {len(index.classes)} classes -> {args.out}")
    print(f"train on them with: mlic train '{args.out.rstrip('/')}/{index.pattern}'")
    return 0

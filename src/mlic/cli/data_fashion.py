"""``mlic data fashion-collage``: a real-image multi-label dataset from the Fashion-MNIST IDX files."""

from __future__ import annotations

import argparse

from mlic.cli.flags import add_command, add_setting, int_at_least

HELP = """examples:
  mlic data fashion-collage /usr/share/datasets/fashion-mnist data/fashion
  mlic data fashion-collage ~/fashion-mnist data/fashion64 --train 20000 --val 2000 --test 4000 --image-size 64
  mlic train data/fashion/train.csv --val data/fashion/val.csv --test data/fashion/test.csv --image-size 96

IDX_DIR holds train-images, train-labels, t10k-images and t10k-labels (-idx3-ubyte / -idx1-ubyte,
gzipped or not; Debian: apt install dataset-fashion-mnist). Each collage puts 1 to 4 tinted garments
in distinct cells of a 2x2 grid on a coloured background; its labels are the garment classes present.
Train and val collages come from disjoint parts of the official train split, test collages from the
official test split. Writes OUT/images/, train.csv, val.csv, test.csv (image,labels), sources.jsonl
(where each garment came from) and manifest.json; an OUT already complete with the same parameters
is reused.
"""


def register(actions: argparse._SubParsersAction) -> None:
    """Add ``fashion-collage`` to the ``mlic data`` actions."""
    from mlic.data.builders.fashion import MIN_IMAGE_SIZE

    p = add_command(actions, "fashion-collage", "build multi-label collages from Fashion-MNIST", __doc__, HELP)
    p.add_argument("idx_dir", metavar="IDX_DIR", help="folder with the Fashion-MNIST IDX files")
    p.add_argument("out", metavar="OUT", help="folder to write the dataset to")
    p.add_argument("--train", type=int_at_least(0), default=20000, help="train collages (default 20000)")
    p.add_argument("--val", type=int_at_least(0), default=2000, help="validation collages (default 2000)")
    p.add_argument("--test", type=int_at_least(0), default=4000, help="test collages (default 4000)")
    p.add_argument("--image-size", type=int_at_least(MIN_IMAGE_SIZE), default=96, help="collage side in pixels")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="random seed of the collages (default: 0)")
    p.add_argument(
        "--long-tail",
        type=_tail,
        default=0.0,
        metavar="S",
        help="Zipf-like class frequencies, the k-th class with weight k**-S (default: 0, all equal)",
    )
    add_setting(p, "progress", own_default=True)
    p.set_defaults(run=run)


def _tail(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 10:
        raise argparse.ArgumentTypeError(f"must lie in [0, 10], got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from mlic.data.builders.fashion import make_fashion_collages

    print(f"fashion collages: writing (or reusing) {args.train}/{args.val}/{args.test} images in {args.out}/")
    paths = make_fashion_collages(
        args.idx_dir,
        args.out,
        num_train=args.train,
        num_val=args.val,
        num_test=args.test,
        image_size=args.image_size,
        seed=args.seed,
        long_tail=args.long_tail,
        progress=args.progress,
    )
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0

"""Fashion-MNIST collage benchmark: the seed recipe against mlic's recommended recipe.

Builds multi-label collages from the standard Fashion-MNIST IDX files (Debian: apt-get install
dataset-fashion-mnist), trains each recipe with the same model (seed_cnn), the same data, seed
and wall-clock budget, in one run, and prints test mAP, micro-F1, macro-F1 and exact match for
each and their differences. Run from the repository root:

    .venv/bin/python benchmarks/accuracy.py                      # 20k/2k/4k at 96x96, 15 min per recipe
    .venv/bin/python benchmarks/accuracy.py --train 5000 --budget-minutes 4   # a quick look
    # bf16 against fp32, same recipe, seed and epochs (no time budget):
    .venv/bin/python benchmarks/accuracy.py --recipes configs/default.yaml --precisions fp32 bf16 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import mlic
from mlic.config import apply_overrides, load_config
from mlic.data.builders.fashion import make_fashion_collages

DEFAULT_IDX = "/usr/share/datasets/fashion-mnist"
KEYS = ("mAP", "f1_micro", "f1_macro", "exact_match")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idx-dir", default=DEFAULT_IDX)
    ap.add_argument("--data-dir", default="/var/tmp/mlic-bench/fashion", help="collages go here (reused)")
    ap.add_argument("--out-dir", default="/var/tmp/mlic-bench/runs")
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--val", type=int, default=2000)
    ap.add_argument("--test", type=int, default=4000)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--budget-minutes", type=float, default=15.0, help="training time per recipe")
    ap.add_argument("--recipes", nargs="+", default=["configs/seed.yaml", "configs/default.yaml"])
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="RECIPE:KEY=VALUE",
        help="override one recipe's key, e.g. default:runtime.precision=fp32 (repeatable)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precisions", nargs="+", help="run each recipe at each of these precisions")
    ap.add_argument("--epochs", type=int, help="a fixed number of epochs instead of the time budget")
    args = ap.parse_args()

    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    data_dir = Path(args.data_dir) / f"{args.train}-{args.val}-{args.test}-{args.image_size}"
    t0 = time.perf_counter()
    files = make_fashion_collages(
        args.idx_dir,
        data_dir,
        num_train=args.train,
        num_val=args.val,
        num_test=args.test,
        image_size=args.image_size,
        seed=args.seed,
    )
    print(f"data: {data_dir} ({time.perf_counter() - t0:.0f}s)")

    results = {}
    runs = [(recipe, precision) for recipe in args.recipes for precision in (args.precisions or [None])]
    for recipe, precision in runs:
        stem = Path(recipe).stem
        name = stem if precision is None else f"{stem}-{precision}"
        cfg = apply_overrides(
            load_config(recipe), [o.split(":", 1)[1] for o in args.overrides if o.startswith(f"{stem}:")]
        )
        if precision is not None:
            cfg.runtime.precision = precision
        if args.epochs:
            cfg.optim.epochs = args.epochs
        start = time.perf_counter()
        run = mlic.train(
            str(files["train"]),
            config=cfg,
            val=str(files["val"]),
            test=str(files["test"]),
            image_size=args.image_size,
            max_minutes=0.0 if args.epochs else args.budget_minutes,
            seed=args.seed,
            name=f"bench-{name}",
            output_dir=args.out_dir,
            overwrite=True,
            progress=False,
            report=False,
        )
        results[name] = {k: run.test_metrics[k] for k in KEYS} | {
            "epochs": len(run.history),
            "train_minutes": (time.perf_counter() - start) / 60,
            "thresholds": run.test_metrics["thresholds"],
        }
        print(json.dumps({name: results[name]}))
    _print_table(results, args)


def _print_table(results: dict, args) -> None:
    names = list(results)
    print(
        f"\nFashion-MNIST collages {args.train}/{args.val}/{args.test} at {args.image_size}px, "
        + (f"{args.epochs} epochs each" if args.epochs else f"budget {args.budget_minutes:g} min/recipe")
        + f", load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'metric':<14}" + "".join(f"{n:>14}" for n in names) + (f"{'diff':>12}" if len(names) == 2 else ""))
    for key in (*KEYS, "epochs", "train_minutes"):
        vals = [results[n][key] for n in names]
        line = f"{key:<14}" + "".join(f"{v:>14.4f}" if isinstance(v, float) else f"{v:>14}" for v in vals)
        if len(names) == 2 and key in KEYS:
            line += f"{(vals[1] - vals[0]) * 100:>+11.2f}p"
        print(line)
    for n in names:
        print(f"{n}: thresholds {results[n]['thresholds']}")


if __name__ == "__main__":
    main()

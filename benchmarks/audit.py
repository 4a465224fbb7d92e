"""Label audit benchmark: demo scenes with injected label noise, `mlic data audit` through the CLI, precision and
recall of the flagged cells against the injected errors.

Noise (mlic.data.builders.noise): 5% of the positive cells removed, 2% of the negative cells made positive,
then 5% of all cells marked unknown (an unknown cell is no error and must never be flagged). The audit trains
one seed CNN per fold with the recommended recipe (configs/default.yaml: AdamW, one-cycle fitted to the
budget, EMA) on 40 px scenes, 3.2 minutes per fold; the flagged cells are compared with the injected
errors, all of them and those a user would accept with `mlic data apply-fixes --accept-above S`. Run from
the repository root:

    .venv/bin/python benchmarks/audit.py                       # 5,000 scenes, 5 folds: about 17 minutes
    .venv/bin/python benchmarks/audit.py --train 1500 --folds 3 --max-minutes 1   # a quick look
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlic.data.builders.noise import inject_label_noise
from mlic.data.builders.synthetic import make_shapes_dataset
from mlic.data.convert import write_records
from mlic.data.sources import load_records


def noisy_scenes(folder: Path, n: int, size: int, seed: int):
    """``folder/noisy.jsonl`` of ``n`` demo scenes with injected noise, and the noise."""
    files = make_shapes_dataset(folder / "scenes", num_train=n, num_val=0, num_test=0, image_size=size, seed=seed,
                                progress=False)  # fmt: skip
    noisy, noise = inject_label_noise(list(load_records(files["train"])), seed=seed)
    write_records(noisy, folder / "noisy.jsonl", "jsonl", overwrite=True)
    return folder / "noisy.jsonl", noise


ACCEPT_ABOVE = (0.0, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95)  # `mlic data apply-fixes --accept-above S` values


def score_audit(audit_csv: Path, noise) -> dict[str, float]:
    """Precision and recall against the injected errors of every flagged cell, and of those a user would
    accept with ``--accept-above S`` for each S of ACCEPT_ABOVE."""
    with open(audit_csv, newline="") as f:
        rows = [((row["image"], row["label"]), float(row["score"])) for row in csv.DictReader(f)]
    flagged = {cell for cell, _ in rows}
    result = {"flagged": len(flagged), "injected": len(noise.wrong), "unknown_flagged": len(flagged & noise.unknown)}
    for s in ACCEPT_ABOVE:
        accepted = {cell for cell, score in rows if score >= s}
        hits = len(accepted & noise.wrong)
        result[f"accept_above_{s}"] = {"cells": len(accepted), "hits": hits,
                                       "precision": round(hits / max(len(accepted), 1), 3),
                                       "recall": round(hits / max(len(noise.wrong), 1), 3)}  # fmt: skip
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=5000, help="scenes")
    ap.add_argument("--image-size", type=int, default=40)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--config", default="configs/default.yaml", help="the folds' recipe (default: the recommended)")
    ap.add_argument("--epochs", type=int, default=30, help="at most; the budget sizes them")
    ap.add_argument("--max-minutes", type=float, default=3.2, help="training budget per fold")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="keep the data and the audit here (default: a temporary folder)")
    args = ap.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="mlic-audit-") as tmp:
        work = args.work or Path(tmp)
        start = time.perf_counter()
        labels, noise = noisy_scenes(work, args.train, args.image_size, args.seed)
        print(
            f"{args.train} scenes at {args.image_size} px: {len(noise.removed)} positives removed, "
            f"{len(noise.added)} added, {len(noise.unknown)} cells unknown ({time.perf_counter() - start:.0f} s)"
        )
        command = [sys.executable, "-m", "mlic", "data", "audit", str(labels), "--folds", str(args.folds),
                   "--config", args.config, "--epochs", str(args.epochs), "--max-minutes", str(args.max_minutes),
                   "--image-size", str(args.image_size), "--no-progress", "--overwrite",
                   "--output-dir", str(work / "audit"), "--seed", str(args.seed)]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        minutes = (time.perf_counter() - start) / 60
        if done.returncode != 0:
            sys.exit(f"audit failed:\n{done.stderr[-3000:]}")
        print(done.stdout.strip().splitlines()[-3])
        print(f"recipe: {args.config}, at most {args.epochs} epochs and {args.max_minutes} minutes per fold")
        result = score_audit(work / "audit" / "audit.csv", noise) | {"minutes": round(minutes, 1)}
        print(json.dumps(result, indent=1))
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

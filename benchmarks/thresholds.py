"""Operating points on a small validation set: fixed 0.5, the old per-class F1 rule, and the new rule.

The benchmark builds a long-tailed variant of the Fashion-MNIST collages (garment classes drawn with
Zipf-like frequencies, ``mlic data fashion-collage --long-tail``; test collages from the official test split
only), trains the seed CNN once through `mlic train` with calibration and threshold tuning off (so the saved
validation and test predictions are the raw model's), and then compares three ways of choosing thresholds
on the 500 validation images, each applied unchanged to the test set:

- fixed: 0.5 for every class (the seed);
- old rule: per class, the F1-best cut on raw probabilities, the highest among ties, halfway to the next
  lower score, the global F1-best cut for classes with fewer than 5 positives (mlic before per-class
  calibration; re-implemented here from its docstring, so the comparison runs in one process);
- new rule: mlic's default, per-class Platt calibration fitted on validation, then each class's cut in the
  middle of its plateau of equally good F1 in logit space, shrunk by 10 / (10 + positives) toward its
  calibrated optimum F*/2 (half its best validation F1).

The default tail is Zipf's own exponent 1 (the k-th most frequent class k times rarer than the first).

Run from the repository root (about 5 minutes on 2 cores):

    .venv/bin/python benchmarks/thresholds.py
    .venv/bin/python benchmarks/thresholds.py --train 3000 --long-tail 2.0 --seed 1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mlic.data.builders.fashion import make_fashion_collages
from mlic.evaluation.calibration import calibrate_cells, fit_calibration
from mlic.evaluation.cells import Cells
from mlic.evaluation.metrics import metrics_from_cells
from mlic.evaluation.prediction_files import load_predictions
from mlic.evaluation.thresholds import tune_on_cells

IDX_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist


def old_rule(cells: Cells, min_positives: int = 5) -> np.ndarray:
    """The per-class F1 thresholds mlic tuned before calibration and plateaus (see the module docstring)."""

    def best(scores: np.ndarray, positives: np.ndarray, default: float) -> float:
        num_pos = int(positives.sum())
        if num_pos == 0:
            return default
        order = np.argsort(scores)[::-1]
        s, pos = scores[order], positives[order]
        tp, fp = np.cumsum(pos, dtype=np.float64), np.cumsum(~pos, dtype=np.float64)
        end = np.append(s[1:] != s[:-1], True)
        tp, fp, s = tp[end], fp[end], s[end]
        f1 = 2 * tp / np.maximum(2 * tp + fp + (num_pos - tp), 1)
        k = int(np.argmax(f1))  # the first maximum: the highest cut among ties
        return float(s[k]) if k + 1 == s.size else float((s[k] + s[k + 1]) / 2)

    global_cut = best(cells.scores, cells.targets, 0.5)
    out = np.full(cells.num_classes, global_cut)
    for c in range(cells.num_classes):
        lo, hi = int(cells.class_ptr[c]), int(cells.class_ptr[c + 1])
        if cells.targets[lo:hi].sum() >= min_positives:
            out[c] = best(cells.scores[lo:hi], cells.targets[lo:hi], global_cut)
    return np.clip(out, 1e-6, 1.0)


def cells_of(path: Path) -> tuple[Cells, list[str]]:
    p = load_predictions(path)
    return Cells.from_dense(p["probs"], p["targets"] > 0.5, p["masks"] > 0.5), p["class_names"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idx-dir", default=IDX_DIR)
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--val", type=int, default=500)
    ap.add_argument("--test", type=int, default=4000)
    ap.add_argument("--image-size", type=int, default=48)
    ap.add_argument("--long-tail", type=float, default=1.0, help="Zipf exponent of the garment class frequencies")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="keep the data and the run here (default: a temporary folder)")
    args = ap.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="mlic-thresholds-") as tmp:
        work = args.work or Path(tmp)
        files = make_fashion_collages(args.idx_dir, work / "collages", num_train=args.train, num_val=args.val,
                                      num_test=args.test, image_size=args.image_size, seed=args.seed,
                                      long_tail=args.long_tail, progress=False)  # fmt: skip
        start = time.perf_counter()
        command = [sys.executable, "-m", "mlic", "train", str(files["train"]), "--val", str(files["val"]), "--test",
                   str(files["test"]), "--image-size", str(args.image_size), "--epochs", str(args.epochs),
                   "--calibration", "none", "--threshold-method", "fixed", "--no-report", "--no-progress",
                   "--output-dir", str(work / "runs"), "--name", "lt", "--overwrite",
                   "--seed", str(args.seed)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"training failed:\n{done.stderr[-3000:]}")
        print(f"trained in {time.perf_counter() - start:.0f} s")
        val, names = cells_of(work / "runs" / "lt" / "predictions" / "val.npz")
        test, _ = cells_of(work / "runs" / "lt" / "predictions" / "test.npz")
        positives = np.bincount(val.cols[val.targets], minlength=val.num_classes)
        print("validation positives per class: " + ", ".join(f"{n} {k}" for n, k in zip(names, positives.tolist(),
                                                                                          strict=True)))  # fmt: skip
        calibration, _ = fit_calibration(val, "platt")
        tuned = tune_on_cells(calibrate_cells(val, calibration), method="per_class", objective="f1",
                              min_positives=5, shrinkage=10.0, calibrated=True)  # fmt: skip
        rules = {"fixed 0.5": (test, np.full(test.num_classes, 0.5)), "old rule": (test, old_rule(val)),
                 "new rule": (calibrate_cells(test, calibration), tuned.thresholds)}  # fmt: skip
        print(f"\n{'test, ' + str(len(np.unique(test.rows))) + ' images':<22} {'macro-F1':>9} {'micro-F1':>9} "
              f"{'Hamming':>9}")  # fmt: skip
        result = {}
        for name, (cells, cuts) in rules.items():
            m = metrics_from_cells(cells, cuts)
            result[name] = m
            print(f"{name:<22} {m['f1_macro']:>9.4f} {m['f1_micro']:>9.4f} {m['hamming_loss']:>9.4f}")
        new, old, fixed = result["new rule"], result["old rule"], result["fixed 0.5"]
        macro_gain, micro_gain = new["f1_macro"] - old["f1_macro"], new["f1_micro"] - fixed["f1_micro"]
        print(f"\nnew macro-F1 >= old: {macro_gain >= 0} ({macro_gain:+.4f}); "
              f"new micro-F1 >= fixed - 0.02: {micro_gain >= -0.02} ({micro_gain:+.4f})")  # fmt: skip
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

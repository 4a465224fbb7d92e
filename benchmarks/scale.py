"""Open-Images-shaped label sets at full size: memory and time of everything mlic does with labels.

Generates label files in Open Images' own format (``ImageID,Source,LabelName,Confidence`` plus the class
descriptions) with Zipf-like class frequencies and about 8 verified labels per image, a third of them verified
negatives, every other cell unknown; then, for each size, in a fresh process, measures peak RSS (the process's
maximum so far) and seconds for:

    read        load_records: the pyarrow CSV reader into a RecordTable (existence of image files not checked)
    split       holdout_split of 10%: the scalable stratified split with its rare-label repair
    dataset     MultiLabelDataset of the training part (no decoding: labels and paths only)
    batches     one pass over the training part through a DataLoader that builds (B, C) targets and masks
    evaluate    metrics and per-class thresholds of random scores on the validation part's known cells

and fits how memory and time grow with N (at fixed C) and with C (at fixed N).

    .venv/bin/python benchmarks/scale.py                       # the issue's grid; about 10 minutes, 4 GB peak
    .venv/bin/python benchmarks/scale.py --sizes 10000x600     # one size
    .venv/bin/python benchmarks/scale.py --compare-splits      # iterstrat against the greedy pass
    .venv/bin/python benchmarks/scale.py --train 1000000x20000 # mlic train --dry-run on tiny images

Bounded: each measurement runs in a child process with an address-space limit (--max-gb, default 8), so a
regression fails fast instead of taking the machine down.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_SIZES = ",".join(f"{n}x{c}" for n in (10_000, 100_000, 1_000_000) for c in (600, 5_000, 20_000))
LABELS_PER_IMAGE, NEGATIVE_SHARE = 8, 1 / 3


def make_label_set(folder: Path, n: int, c: int, seed: int = 0) -> Path:
    """``folder/labels.csv`` and ``folder/class-descriptions.csv`` for n images over c classes (reused if there)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    labels = folder / "labels.csv"
    if labels.is_file():
        return labels
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_image = rng.integers(LABELS_PER_IMAGE - 7, LABELS_PER_IMAGE + 8, n)  # 1 to 15 labels, mean 8
    zipf = 1.0 / np.arange(1, c + 1) ** 1.0
    classes = rng.choice(c, size=int(per_image.sum()), p=zipf / zipf.sum())
    image = np.repeat(np.arange(n), per_image)
    unique = np.unique(image.astype(np.int64) * c + classes)  # one row per (image, class)
    image, classes = unique // c, unique % c
    confidence = np.where(rng.random(len(image)) < NEGATIVE_SHARE, "0", "1")
    mids = np.array([f"/m/{j:07x}" for j in range(c)])
    ids = np.array([f"{i:016x}" for i in range(n)])
    table = pa.table({"ImageID": ids[image], "Source": pa.array(["verification"] * len(image)),
                      "LabelName": mids[classes], "Confidence": confidence})  # fmt: skip
    pacsv.write_csv(table, labels, pacsv.WriteOptions(quoting_style="none"))
    names = "".join(f"{m},class {j}\n" for j, m in enumerate(mids))
    (folder / "class-descriptions.csv").write_text(names)
    return labels


MEASURE = r"""
import json, resource, sys, time
import numpy as np
limit = int(float(sys.argv[2]) * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from mlic.data.sources import load_records
from mlic.data.splits import holdout_split
from mlic.data.dataset import MultiLabelDataset
from mlic.data.transforms import Preprocessing, build_train_pipeline
from mlic.evaluation.cells import Cells
from mlic.evaluation.metrics import metrics_from_cells
from mlic.evaluation.thresholds import tune_on_cells

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

out, t = {"base_mb": peak_mb()}, time.perf_counter()
def mark(step):
    global t
    now = time.perf_counter()
    out[step] = {"seconds": now - t, "peak_mb": peak_mb()}
    t = now

labels = sys.argv[1]
records = load_records(labels, fmt="openimages", image_root=labels.rsplit("/", 1)[0] + "/images", check_files=False)
mark("read")
train, val = holdout_split(records, 0.1, seed=0)
mark("split")
ds = MultiLabelDataset(train, train.labels.mentioned(), build_train_pipeline(Preprocessing(image_size=32), "light"))
mark("dataset")
import torch
from torch.utils.data import DataLoader, Dataset

class Rows(Dataset):
    def __len__(self): return len(ds)
    def __getitem__(self, i): return i

loader = DataLoader(Rows(), batch_size=32, collate_fn=lambda idx: ds.labels.dense(idx))
seen = sum(len(t) for t, m in loader)
assert seen == len(ds)
mark("batches")
v = val.with_classes(ds.class_names).labels
rows = np.concatenate([v.positives.owners(), v.negatives.owners()])
cols = np.concatenate([v.positives.ids, v.negatives.ids])
truth = np.concatenate([np.ones(len(v.positives.ids), bool), np.zeros(len(v.negatives.ids), bool)])
scores = np.random.default_rng(0).random(len(rows))
cells = Cells.from_coo(len(v), v.num_classes, rows, cols, np.where(truth, scores * 0.5 + 0.5, scores * 0.7), truth)
metrics = metrics_from_cells(cells, 0.5, ds.class_names)
tuned = tune_on_cells(cells)
mark("evaluate")
out.update(images=len(records), classes=records.labels.num_classes, labels=int(len(records.labels.positives.ids)
           + len(records.labels.negatives.ids)), train=len(train), val=len(val), cells=len(rows), mAP=metrics["mAP"])
print(json.dumps(out))
"""

STEPS = ("read", "split", "dataset", "batches", "evaluate")


def measure(labels: Path, max_gb: float) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(labels), str(max_gb)], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def exponent(xs: list[float], ys: list[float]) -> float:
    """Slope of log y against log x (the power the quantity grows with)."""
    return float(np.polyfit(np.log(xs), np.log(np.maximum(ys, 1e-9)), 1)[0])


def report(results: dict[tuple[int, int], dict]) -> None:
    print(f"{'images':>9} {'classes':>7} {'labels':>10} | " + " | ".join(f"{s:>15}" for s in STEPS))
    print(f"{'':>9} {'':>7} {'':>10} | " + " | ".join(f"{'s   peak MB':>15}" for _ in STEPS))
    for (n, c), r in sorted(results.items()):
        if "error" in r:
            print(f"{n:>9} {c:>7} {'':>10} | failed: {r['error']}")
            continue
        cells = " | ".join(f"{r[s]['seconds']:>6.1f} {r[s]['peak_mb']:>8.0f}" for s in STEPS)
        print(f"{n:>9} {c:>7} {r['labels']:>10} | {cells}")
    for axis, fixed in (("N", "C"), ("C", "N")):
        groups: dict[int, list] = {}
        for (n, c), r in results.items():
            if "error" not in r:
                groups.setdefault(c if axis == "N" else n, []).append(((n if axis == "N" else c), r))
        for key, points in sorted(groups.items()):
            if len(points) < 2:
                continue
            points.sort()
            xs = [p[0] for p in points]
            memory = [max(p[1][s]["peak_mb"] for s in STEPS) - p[1]["base_mb"] for p in points]
            seconds = [sum(p[1][s]["seconds"] for s in STEPS) for p in points]
            print(
                f"growth with {axis} at {fixed}={key}: peak memory ~ {axis}^{exponent(xs, memory):.2f}, "
                f"time ~ {axis}^{exponent(xs, seconds):.2f} ({len(points)} sizes)"
            )


def compare_splits(work: Path) -> None:
    """Proportion error and seconds of iterstrat and the greedy pass on sizes iterstrat can still do."""
    from mlic.data.sources import load_records
    from mlic.data.splits import _target_sizes, proportion_error, split_assignment

    print(f"{'images':>8} {'classes':>7} | {'iterstrat s':>11} {'error':>7} | {'greedy s':>9} {'error':>7}")
    for n, c in ((2_000, 100), (10_000, 600), (20_000, 600), (20_000, 2_000), (50_000, 600)):
        table = load_records(make_label_set(work / f"{n}x{c}", n, c), fmt="openimages",
                             image_root=work / "images", check_files=False)  # fmt: skip
        pos, classes, sizes = table.labels.positives, table.labels.num_classes, _target_sizes(n, 0.1, 0.1)
        row = []
        for method in ("iterstrat", "greedy"):
            start = time.perf_counter()
            assign = split_assignment(pos, classes, sizes, 0, method)
            row += [time.perf_counter() - start, proportion_error(assign, pos, classes, (0.8, 0.1, 0.1))]
        print(f"{n:>8} {classes:>7} | {row[0]:>11.1f} {row[1]:>7.4f} | {row[2]:>9.1f} {row[3]:>7.4f}")


TRAIN_FLAGS = ("--format", "openimages", "--dry-run", "--image-size", "32", "--cache", "off")


def make_images(folder: Path, n: int) -> Path:
    """``folder/images/<ImageID>.jpg`` for every image of the label set: hard links to a few tiny JPEGs (a file
    system allows only so many links to one file), so a million images cost directory entries, not data."""
    from PIL import Image

    images = folder / "images"
    images.mkdir(exist_ok=True)
    per_file = 50_000
    for k in range((n + per_file - 1) // per_file):
        source = folder / f"tiny-{k}.jpg"
        if not source.exists():
            Image.new("RGB", (8, 8), (40, 90, k % 256)).save(source)
        for i in range(k * per_file, min(n, (k + 1) * per_file)):
            target = images / f"{i:016x}.jpg"
            if not target.exists():
                target.hardlink_to(source)
    return images


def measure_train(work: Path, n: int, c: int) -> None:
    """Wall time and peak RSS of ``mlic train --dry-run`` (read, split, scan, datasets, one step, validation)."""
    folder = work / f"{n}x{c}"
    labels = make_label_set(folder, n, c)
    start = time.perf_counter()
    images = make_images(folder, n)
    print(f"{n} image files linked in {time.perf_counter() - start:.0f} s", flush=True)
    mlic = Path(sys.executable).with_name("mlic")
    command = [str(mlic), "train", str(labels), "--image-root", str(images), *TRAIN_FLAGS,
               "--output-dir", str(work / "runs"), "--overwrite"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    status = "ok" if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
    print(
        f"mlic train {n} x {c} {' '.join(TRAIN_FLAGS)}: {seconds:.0f} s, peak RSS {peak:.2f} GB ({status}); "
        f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated NxC (default: %(default)s)")
    ap.add_argument("--work", type=Path, help="where the generated label sets stay (default: a temporary folder)")
    ap.add_argument("--max-gb", type=float, default=8.0, help="address-space limit of each measurement")
    ap.add_argument("--compare-splits", action="store_true", help="iterstrat against the greedy pass, then stop")
    ap.add_argument("--train", metavar="NxC", help="time mlic train --dry-run on an NxC set of tiny images, then stop")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlic-scale-") as tmp:
        work = args.work or Path(tmp)
        if args.compare_splits:
            compare_splits(work)
            return
        if args.train:
            measure_train(work, *(int(x) for x in args.train.lower().split("x")))
            return
        results = {}
        for size in args.sizes.split(","):
            n, c = (int(x) for x in size.lower().split("x"))
            start = time.perf_counter()
            labels = make_label_set(work / f"{n}x{c}", n, c)
            print(f"{n} x {c}: label file {labels.stat().st_size / 1e6:.0f} MB, made in "
                  f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
            results[(n, c)] = measure(labels, args.max_gb)
        load = resource.getrusage(resource.RUSAGE_CHILDREN)
        loadavg = Path("/proc/loadavg").read_text().split()[:3]
        print(f"\nload average at the end: {' '.join(loadavg)}; children's CPU time {load.ru_utime:.0f} s")
        report(results)


if __name__ == "__main__":
    main()

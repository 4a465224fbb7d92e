"""INT8 against fp32 on CPU: `mlic export --int8` beside the fp32 ONNX export and the PyTorch checkpoint.

For each checkpoint it writes both exports through the library (`export_int8` runs its calibration and its
agreement check, so what is timed is what `mlic export --int8` ships), then measures, in one process with the
same thread count for every engine (ONNX Runtime intra-op threads = torch threads = --threads, default: the
cores this process may use):

  * batch 1 latency: median (and 90th percentile) of --calls calls (>= 200) after a warm-up, in ms;
  * batch 32 throughput: images/s over --batches batches after a warm-up;

of the model alone, from the uint8 pixels `mlic predict` decodes (the ONNX graphs scale and normalise inside; for
PyTorch that normalisation is timed too). Each figure is printed with its ratio to eager PyTorch and INT8's to fp32
ONNX. The 1-minute load average is printed at the start and the end: timings taken while it exceeds the thread
count are contended, and so are their ratios.

Without --checkpoint it builds one per --sizes x --models: random convolutions (BatchNorm statistics of generated
images) under a least-squares classifier fitted to those images' colour labels, a checkpoint whose held-out
scores sit away from its thresholds as a trained one's do (so the INT8 check passes on its merits), made in
seconds instead of a training run. Its run config names the generated labels, as a real run's does.

--test LABELS adds a table of test mAP (and micro F1 at the thresholds) of the checkpoint, its fp32 export and
its INT8 export on those labels. Run from the repository root:

    .venv/bin/python benchmarks/int8.py                                   # seed_cnn at 96 and 224 px
    .venv/bin/python benchmarks/int8.py --models seed_cnn resnet18        # resnet18 needs timm (the zoo extra)
    .venv/bin/python benchmarks/int8.py --checkpoint runs/demo/checkpoints/best --test data/demo/test.csv
    .venv/bin/python benchmarks/int8.py --sizes 32 --calls 200 --batches 2 --images 64   # a smoke run
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mlic.checkpoint import read_meta, save_checkpoint
from mlic.config import DataConfig, TrainConfig, to_dict
from mlic.data.dataset import MultiLabelDataset
from mlic.data.sources import load_records
from mlic.data.transforms import Preprocessing, batch_inputs, build_eval_pipeline
from mlic.evaluation.evaluate import evaluate_checkpoint
from mlic.evaluation.scoring import BatchOptions
from mlic.inference.export import export_model
from mlic.inference.export_format import ExportError
from mlic.inference.int8 import export_int8
from mlic.inference.onnx_predictor import OnnxPredictor
from mlic.inference.onnx_scoring import evaluate_onnx
from mlic.inference.predictor import Predictor
from mlic.models import build_model

COLOURS = {"blue": (30, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30), "yellow": (230, 220, 30)}
ENGINES = ("pytorch", "onnx fp32", "onnx int8")


def write_split(root: Path, split: str, n: int, size: int, seed: int) -> Path:
    """``n`` size x size grey noise images with coloured squares, labelled by their colours; returns the CSV."""
    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        pixels = rng.integers(90, 160, (size, size, 3)).astype(np.int16)
        names = [c for c in COLOURS if rng.random() < 0.4] or [sorted(COLOURS)[i % len(COLOURS)]]
        for name in names:
            w = int(rng.integers(size // 4, size // 3 + 1))
            x, y = (int(v) for v in rng.integers(0, size - w, 2))
            pixels[y : y + w, x : x + w] = np.array(COLOURS[name]) + rng.integers(-20, 21, 3)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / split / f"{i}.png")
        rows.append((f"{split}/{i}.png", " ".join(names)))
    with open(root / f"{split}.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "labels"), *rows])
    return root / f"{split}.csv"


@torch.no_grad()
def fitted_checkpoint(path: Path, name: str, size: int, images: int) -> Path:
    """A ``name`` checkpoint at ``size`` px: random convolutions, least-squares classifier (module docstring)."""
    train = write_split(path.parent / f"data{size}", "train", images, size, 0)
    val = write_split(path.parent / f"data{size}", "val", max(16, images // 3), size, 1)
    classes, pre = sorted(COLOURS), Preprocessing(image_size=size)
    dataset = MultiLabelDataset(load_records(train), classes, build_eval_pipeline(pre))
    batch = dataset.collate([dataset[i] for i in range(len(dataset))])
    torch.manual_seed(0)
    model = build_model(name, len(classes))
    x = batch_inputs(batch.images, None, pre, torch.device("cpu"))
    model.train()
    for chunk in x.split(32):
        model.forward_features(chunk)  # BatchNorm running statistics of these images
    model.eval()
    features = torch.cat([model.forward_head(model.forward_features(c), pre_logits=True) for c in x.split(32)])
    f = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], 1)
    targets = (batch.targets.double() * 2 - 1) * 4  # logits of +-4 for present / absent colours
    w = torch.linalg.solve(f.T @ f + torch.eye(f.shape[1], dtype=torch.float64), f.T @ targets)
    head = model.get_classifier()
    head.weight.copy_(w[:-1].T.float())
    head.bias.copy_(w[-1].float())
    config = to_dict(TrainConfig(data=DataConfig(train=str(train), val=str(val), image_size=size)))
    meta = {"model": {"name": name, "kwargs": {}}, "class_names": classes, "thresholds": [0.5] * len(classes),
            "preprocessing": pre.to_dict(), "config": config}  # fmt: skip
    return save_checkpoint(path, model, meta)


def load_average() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()) + f" on {os.cpu_count()} cores"


def timed(fn, calls: int, warmup: int) -> list[float]:
    for _ in range(warmup):  # first calls allocate and pick kernels: not the steady state
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def engines(ckpt: Path, fp32: Path, q8: Path, threads: int) -> dict[str, object]:
    """engine name -> (uint8 (B, 3, S, S) -> (B, C) probabilities)."""
    torch_model = Predictor.from_checkpoint(ckpt, device="cpu")  # BatchNorm folded, channels-last: mlic's eager
    pre = torch_model.preprocessing
    onnx32 = OnnxPredictor.from_file(fp32, num_threads=threads)
    onnx8 = OnnxPredictor.from_file(q8, num_threads=threads)
    return {
        "pytorch": lambda x: torch_model.predict_probabilities(batch_inputs(x, None, pre, torch.device("cpu"))),
        "onnx fp32": onnx32.predict_probabilities,
        "onnx int8": onnx8.predict_probabilities,
    }


def measure(runs: dict[str, object], size: int, calls: int, batches: int) -> dict[str, dict[str, float]]:
    one = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = one.repeat(32, 1, 1, 1)
    figures = {}
    for name, run in runs.items():
        lat = timed(lambda r=run: r(one), calls, warmup=20)
        thr = timed(lambda r=run: r(batch), batches, warmup=2)
        figures[name] = {"b1 ms": statistics.median(lat) * 1e3, "b1 p90": float(np.quantile(lat, 0.9)) * 1e3,
                         "b32 img/s": 32 * len(thr) / sum(thr)}  # fmt: skip
    return figures


def print_timings(label: str, figures: dict[str, dict[str, float]]) -> None:
    print(f"\n{label}")
    print(f"  {'engine':<11}{'b1 ms':>9}{'b1 p90':>9}{'b32 img/s':>11}{'b1 vs torch':>13}{'b32 vs torch':>14}")
    base = figures["pytorch"]
    for name, f in figures.items():
        print(f"  {name:<11}{f['b1 ms']:>9.2f}{f['b1 p90']:>9.2f}{f['b32 img/s']:>11.1f}"
              f"{base['b1 ms'] / f['b1 ms']:>12.2f}x{f['b32 img/s'] / base['b32 img/s']:>13.2f}x")  # fmt: skip
    q8, f32 = figures["onnx int8"], figures["onnx fp32"]
    print(f"  int8 / fp32 onnx: batch 1 {f32['b1 ms'] / q8['b1 ms']:.2f}x faster, "
          f"batch 32 {q8['b32 img/s'] / f32['b32 img/s']:.2f}x the throughput")  # fmt: skip


def accuracy(ckpt: Path, fp32: Path, q8: Path, test: str) -> None:
    batch = BatchOptions("cpu", 32, 0, False)
    reports = {
        "pytorch": evaluate_checkpoint(ckpt, test, batch=batch),
        "onnx fp32": evaluate_onnx(fp32, test, batch=batch),
        "onnx int8": evaluate_onnx(q8, test, batch=batch),
    }
    print(f"\ntest {test} ({reports['pytorch']['num_images']} images), at the checkpoint's thresholds")
    print(f"  {'engine':<11}{'mAP':>9}{'f1_micro':>10}{'mAP - torch':>13}")
    for name, r in reports.items():
        print(f"  {name:<11}{r['mAP']:>9.4f}{r['f1_micro']:>10.4f}{r['mAP'] - reports['pytorch']['mAP']:>+13.4f}")


def bench_checkpoint(ckpt: Path, work: Path, args: argparse.Namespace) -> None:
    meta = read_meta(ckpt)
    size, name = meta["preprocessing"]["image_size"], meta["model"]["name"]
    fp32 = export_model(ckpt, work / f"{name}-{size}.onnx", "onnx").path
    start = time.perf_counter()
    try:
        q8 = export_int8(ckpt, work / f"{name}-{size}.int8.onnx", calibration_data=args.calibration_data,
                         calibration_images=args.calibration_images)  # fmt: skip
    except ExportError as exc:  # a refusal is a finding of this benchmark, not its end
        print(f"\n{name} {size}px: {exc}")
        return
    c = q8.check
    print(f"\n{name} {size}px: int8 export {time.perf_counter() - start:.1f} s, calibrated on {q8.calibration_images} "
          f"images; agreement {c.agreement:.2%} of {c.cells} cells over {c.images} held-out images, "
          f"max |p - checkpoint| {c.max_abs_diff:.4f}; sizes fp32 {fp32.stat().st_size / 1e6:.1f} MB, "
          f"int8 {q8.path.stat().st_size / 1e6:.1f} MB")  # fmt: skip
    if not args.skip_timing:
        figures = measure(engines(ckpt, fp32, q8.path, args.threads), size, args.calls, args.batches)
        print_timings(f"{name} {size}x{size}, {args.threads} thread(s)", figures)
    if args.test:
        accuracy(ckpt, fp32, q8.path, args.test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", action="append", help="checkpoint folder (repeatable); default: fitted ones")
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 224], help="without --checkpoint")
    ap.add_argument("--models", nargs="+", default=["seed_cnn"], help="without --checkpoint (resnet18: timm)")
    ap.add_argument("--images", type=int, default=192, help="generated training images of a fitted checkpoint")
    ap.add_argument("--calls", type=int, default=300, help="batch-1 calls timed (at least 200)")
    ap.add_argument("--batches", type=int, default=10, help="batch-32 calls timed")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="for every engine")
    ap.add_argument("--calibration-data", help="as mlic export --int8 (when the run's training files are elsewhere)")
    ap.add_argument("--calibration-images", type=int, default=256)
    ap.add_argument("--test", metavar="LABELS", help="also report test mAP of the checkpoint, fp32 and INT8")
    ap.add_argument("--skip-timing", action="store_true", help="with --test: the accuracy table only")
    ap.add_argument("--work", help="folder for checkpoints and exports (default: a temporary one)")
    args = ap.parse_args()
    if args.calls < 200:
        ap.error("--calls must be at least 200: a median of fewer batch-1 calls moves with the machine's noise")
    torch.set_num_threads(args.threads)
    import onnxruntime

    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} thread(s); {load_average()}"
    )
    with tempfile.TemporaryDirectory(prefix="mlic-int8-bench-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        ckpts = [Path(c) for c in args.checkpoint or []] or [
            fitted_checkpoint(work / f"{m}-{s}-ckpt", m, s, args.images) for m in args.models for s in args.sizes
        ]
        for ckpt in ckpts:
            bench_checkpoint(ckpt, work, args)
    print(f"\nend: {load_average()}")


if __name__ == "__main__":
    main()

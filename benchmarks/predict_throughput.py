"""Prediction speed on CPU: a PyTorch checkpoint against its ONNX export run by ONNX Runtime.

For each image size it builds a seed_cnn checkpoint (random weights: speed does not depend on
them), exports it with ``mlic export``, writes N JPEG photos-sized images, and measures in one run,
with the same thread count for both engines:

  * batch 1 latency (median ms) and batch 32 throughput (images/s) of the model alone, on
    preprocessed inputs (float normalised for PyTorch, uint8 for the ONNX graph, which normalises);
  * end to end ``predict_paths`` over the N files (decode + resize + model, batch 32, no workers).

It prints each figure and the ONNX Runtime / PyTorch ratio. Run from the repository root:

    .venv/bin/python benchmarks/predict_throughput.py                  # 224 and 96 px, 256 images
    .venv/bin/python benchmarks/predict_throughput.py --sizes 96 --images 64 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mlic.checkpoint import save_checkpoint
from mlic.inference.export import export_model
from mlic.inference.onnx_predictor import OnnxPredictor
from mlic.inference.predictor import Predictor
from mlic.models import build_model

CLASSES = [f"class{i}" for i in range(20)]


def make_checkpoint(path: Path, size: int) -> Path:
    torch.manual_seed(0)
    model = build_model("seed_cnn", len(CLASSES))
    meta = {
        "model": {"name": "seed_cnn", "kwargs": {}},
        "class_names": CLASSES,
        "thresholds": [0.5] * len(CLASSES),
        "preprocessing": {"image_size": size, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    }
    return save_checkpoint(path, model.eval(), meta)


def make_images(folder: Path, n: int) -> list[Path]:
    """Smooth random 480x360 JPEGs (gradients plus noise), so decoding costs what a photo costs."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:360, 0:480]
    paths = []
    for i in range(n):
        base = np.stack(
            [(xx * rng.uniform(0.2, 0.5) + yy * rng.uniform(0.2, 0.5) + c * 60) % 256 for c in range(3)], -1
        )
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
        paths.append(folder / f"{i:05d}.jpg")
    return paths


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: first-call allocations and kernel selection are not steady state
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench_size(size: int, work: Path, paths: list[Path], threads: int, repeats: int) -> dict[str, tuple[float, float]]:
    ckpt = make_checkpoint(work / f"ckpt{size}", size)
    result = export_model(ckpt, work / f"model{size}.onnx", "onnx")
    engines = {
        "pytorch": Predictor.from_checkpoint(ckpt, device="cpu"),
        "onnxruntime": OnnxPredictor.from_file(result.path, num_threads=threads),
    }
    figures: dict[str, dict[str, float]] = {}
    for name, predictor in engines.items():
        one = predictor.loader(paths[0]).unsqueeze(0)
        batch = one.repeat(32, 1, 1, 1)
        lat = timed(lambda p=predictor, x=one: p.predict_probabilities(x), repeats * 5)
        thr = timed(lambda p=predictor, x=batch: p.predict_probabilities(x), repeats)
        e2e = timed(lambda p=predictor: sum(1 for _ in p.predict_paths(paths, batch_size=32)), 1)
        figures[name] = {
            "batch 1 latency (ms, median)": statistics.median(lat) * 1000,
            "batch 32 model (images/s)": 32 / statistics.median(thr),
            f"end to end, {len(paths)} files (images/s)": len(paths) / e2e[0],
        }
    return {k: (figures["pytorch"][k], figures["onnxruntime"][k]) for k in figures["pytorch"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 96])
    ap.add_argument("--images", type=int, default=256, help="files for the end-to-end run")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="for both engines")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mlic-bench-") as tmp:
        work = Path(tmp)
        paths = make_images(work / "images", args.images)
        print(f"torch {torch.__version__}, {args.threads} thread(s), seed_cnn with {len(CLASSES)} classes, CPU")
        for size in args.sizes:
            rows = bench_size(size, work, paths, args.threads, args.repeats)
            print(f"\n{size}x{size}{'':<31}{'PyTorch':>10}{'ORT':>10}{'ORT/PyTorch':>13}")
            for key, (pt, ox) in rows.items():
                # latency: lower is better, so the ratio shown is the speed-up (PyTorch time / ORT time)
                ratio = pt / ox if "latency" in key else ox / pt
                print(f"  {key:<38}{pt:>10.1f}{ox:>10.1f}{ratio:>12.2f}x")


if __name__ == "__main__":
    main()

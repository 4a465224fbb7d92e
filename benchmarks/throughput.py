"""Training and inference speed: the seed's naive pipeline against mlic's defaults, on the same image files.

One command measures, at each image size, on the same generated files (JPEG and PNG, photo-sized and small):

  * train img/s in epoch 1 and in epochs 2+ (mlic's epoch 1 includes building its decoded-image cache);
  * eval img/s from the files (batch 32);
  * batch-1 latency of the model on a preprocessed image, and end to end from a photo file;
  * the achieved GFLOP/s of the model's training step, as a fraction of this machine's measured matmul peak.

The benchmark checks itself: the matmul peak is the best of several sizes (from cache-resident to
memory-bound) and rounds, probed before and after the measurements. A peak that moved by more than 15%
between the two probes, or a model step above 100% of the peak, marks the table DISTURBED instead of
letting it pass as a result.

(a) "naive" is the seed's pipeline, written plainly below as a user would: PIL decode and per-item
torchvision transforms every epoch in a DataLoader with default settings, fp32, NCHW, glibc's default
malloc. (b) "mlic" is `mlic.train` / `Predictor` with their defaults. Each pipeline runs in a child process
of its own, so one's allocator tuning (mlic sets glibc's mallopt at start) cannot leak into the other's
figures. Run from the repository root:

    .venv/bin/python benchmarks/throughput.py                       # 224 and 96 px, 128 images, 3 epochs
    .venv/bin/python benchmarks/throughput.py --sizes 96 --images 64 --epochs 2
    .venv/bin/python benchmarks/throughput.py --cache off       # mlic reads the files every epoch too

With ``--cache off`` mlic's epochs 2+ decode the files as its epoch 1 does (on a CUDA device: JPEG decoded on the
GPU, ``mlic.data.device_decode``), which is what a run whose images do not fit a cache gets.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = [f"c{i}" for i in range(10)]
BATCH = 32
# (kind, count share, width, height): what users' folders hold, from camera photos to web thumbnails
IMAGE_KINDS = (
    ("jpg", 0.25, 3648, 2736),  # a 10-megapixel camera photo
    ("jpg", 0.25, 500, 375),
    ("png", 0.25, 1600, 1200),
    ("png", 0.25, 256, 256),
)


def make_images(folder: Path, n: int, seed: int = 0) -> Path:
    """n labelled images of the IMAGE_KINDS mix (reused if already there); returns the CSV."""
    from PIL import Image, ImageDraw

    labels = folder / f"labels-{n}.csv"
    if labels.is_file():
        return labels
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        kind, _, w, h = IMAGE_KINDS[i % len(IMAGE_KINDS)]
        # smooth colour field + rectangles + noise: compresses like a photo, not like a flat test card
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
            draw.rectangle([x0, y0, x0 + w // 5, y0 + h // 5], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        pixels = np.asarray(image, np.int16) + rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        name = f"img{i:04d}.{kind}"
        image.save(folder / name, quality=90) if kind == "jpg" else image.save(folder / name)
        chosen = [c for c in CLASSES if rng.random() < 0.3] or [CLASSES[int(rng.integers(len(CLASSES)))]]
        rows.append((name, " ".join(chosen)))
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([("image", "labels"), *rows])
    return labels


# ---- (a) the naive pipeline, as the seed script wrote it ------------------------------------------------


def run_naive(labels: Path, size: int, epochs: int, device: str) -> dict:
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T

    from mlic.models.seed_cnn import SeedCNN

    rows = list(csv.DictReader(labels.read_text().splitlines()))
    normalize = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train_tf = T.Compose([T.Resize((size, size)), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    eval_tf = T.Compose([T.Resize((size, size)), T.ToTensor(), normalize])

    class Images(Dataset):
        def __init__(self, transform):
            self.transform = transform

        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            image = Image.open(labels.parent / rows[i]["image"]).convert("RGB")
            target = torch.tensor([float(c in rows[i]["labels"].split()) for c in CLASSES])
            return self.transform(image), target

    dev = torch.device(device)
    torch.manual_seed(0)
    model = SeedCNN(num_classes=len(CLASSES)).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    loader = DataLoader(Images(train_tf), batch_size=BATCH, shuffle=True)
    epoch_seconds = []
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for x, y in loader:
            x, y = x.to(dev), y.to(dev)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _sync(dev)
        epoch_seconds.append(time.perf_counter() - start)
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for x, _ in DataLoader(Images(eval_tf), batch_size=BATCH):
            torch.sigmoid(model(x.to(dev))).cpu()
    eval_seconds = time.perf_counter() - start
    photo = labels.parent / rows[0]["image"]

    def from_file():
        x = eval_tf(Image.open(photo).convert("RGB")).unsqueeze(0).to(dev)
        return torch.sigmoid(model(x)).cpu()

    x1 = torch.randn(1, 3, size, size, device=dev)
    with torch.no_grad():
        latency = _median_ms(lambda: model(x1).cpu(), dev)
        latency_file = _median_ms(from_file, dev, repeats=10)
    step = _step_rate(model, optimizer, loss_fn, size, dev, channels_last=False)
    return _result(len(rows), epoch_seconds, eval_seconds, latency, latency_file, step, size)


# ---- (b) mlic's defaults ----------------------------------------------------------------------------------


def run_mlic(labels: Path, size: int, epochs: int, device: str, work: Path, cache: str = "auto") -> dict:
    import torch

    import mlic
    from mlic.data.cache import clear_cache
    from mlic.inference.predictor import Predictor
    from mlic.runtime.cpu import configure_allocator

    configure_allocator()  # what the `mlic` command does at start
    cache_dir = work / "cache"
    clear_cache(cache_dir)  # epoch 1 pays for building the cache
    start = time.perf_counter()
    run = mlic.train(str(labels), image_size=size, epochs=epochs, val_fraction=0.0, output_dir=str(work / "runs"),
                     name=f"mlic-{size}", overwrite=True, progress=False, report=False, device=device,
                     cache_dir=str(cache_dir), cache=cache, seed=0)  # fmt: skip
    total = time.perf_counter() - start
    trained = sum(row["seconds"] for row in run.history)
    # epoch 1 = everything before epoch 2 that a user waits for beyond training itself (scan, cache build,
    # model set-up) plus the first epoch: the whole run minus epochs 2+ minus the checkpoint/threshold tail
    setup = total - trained
    epoch_seconds = [run.history[0]["seconds"] + setup] + [row["seconds"] for row in run.history[1:]]

    predictor = Predictor.from_checkpoint(run.best_checkpoint, device=device)
    rows = list(csv.DictReader(labels.read_text().splitlines()))
    paths = [labels.parent / r["image"] for r in rows]
    start = time.perf_counter()
    for _ in predictor.predict_paths(paths, batch_size=BATCH):
        pass
    eval_seconds = time.perf_counter() - start
    dev = torch.device(device)
    x1 = torch.randn(1, 3, size, size)  # a preprocessed image, as the naive side gets it
    latency = _median_ms(lambda: predictor.predict_probabilities(x1), dev)
    latency_onnx = _onnx_latency(run.best_checkpoint, work / f"model-{size}.onnx", size) if device == "cpu" else None
    latency_file = _median_ms(lambda: predictor.predict_image(paths[0]), dev, repeats=10)

    from mlic.engine.optim import build_optimizer
    from mlic.models.seed_cnn import SeedCNN

    model = SeedCNN(num_classes=len(CLASSES)).to(dev, memory_format=torch.channels_last)
    optimizer = build_optimizer(model, "adam", lr=1e-3, weight_decay=0.0, momentum=0.9)
    step = _step_rate(model, optimizer, torch.nn.BCEWithLogitsLoss(), size, dev, channels_last=True)
    return _result(len(rows), epoch_seconds, eval_seconds, latency, latency_file, step, size) | {
        "latency_onnx_ms": latency_onnx
    }


def _onnx_latency(checkpoint: Path, out: Path, size: int) -> float | None:
    """Batch-1 latency of the checkpoint exported by `mlic export` and run by ONNX Runtime (uint8 input, as
    `mlic predict model.onnx` feeds it); None without the export extra."""
    try:
        import torch

        from mlic.inference.export import export_model
        from mlic.inference.onnx_predictor import OnnxPredictor

        export_model(checkpoint, out, fmt="onnx")
        onnx = OnnxPredictor.from_file(out, num_threads=torch.get_num_threads())
    except ImportError:
        return None
    x = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8)
    return _median_ms(lambda: onnx.predict_probabilities(x), torch.device("cpu"))


# ---- shared measuring helpers ---------------------------------------------------------------------------


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def _median_ms(fn, dev, repeats: int = 30) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        _sync(dev)
        start = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _step_rate(model, optimizer, loss_fn, size: int, dev, *, channels_last: bool) -> float:
    """img/s of forward + backward + step on random tensors already on the device (median of 8 steps)."""
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(BATCH, 3, size, size, device=dev).contiguous(memory_format=fmt)
    y = (torch.rand(BATCH, len(CLASSES), device=dev) > 0.7).float()
    model.train()

    def step():
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return BATCH / (_median_ms(step, dev, repeats=8) / 1e3)


def _result(n, epoch_seconds, eval_seconds, latency, latency_file, step_rate, size) -> dict:
    later = epoch_seconds[1:] or epoch_seconds
    return {
        "train_epoch1": n / epoch_seconds[0],
        "train_epoch2+": n / statistics.mean(later),
        "eval": n / eval_seconds,
        "latency_ms": latency,
        "latency_file_ms": latency_file,
        "step": step_rate,
        "step_gflops": step_rate * train_gflop_per_image(size),
    }


def train_gflop_per_image(size: int) -> float:
    """Forward + backward FLOPs of seed_cnn for one image, counted by torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mlic.models.seed_cnn import SeedCNN

    model = SeedCNN(num_classes=len(CLASSES))
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(2, 3, size, size)).sum().backward()
    return counter.get_total_flops() / 2 / 1e9


# Square matmul sides tried for the CPU peak: from one that fits a core's L2 with its operands to ones that
# stream from memory; the best of them is the practical peak, whichever this machine's caches favour.
CPU_PEAK_SIDES = (512, 768, 1024, 1536, 2048)
PEAK_DRIFT = 0.15  # a peak that moved more than this between the probes before and after marks the run disturbed


def matmul_peak_gflops(dtype_name: str, device: str) -> float:
    """Best of several sizes x several timed rounds of square matmuls: the practical peak of this machine's cores
    (or GPU) for ``dtype``. The best, not the median: a moment of load can only lower a probe, never raise it."""
    import torch

    dtype = getattr(torch, dtype_name)
    dev = torch.device(device)
    best = 0.0
    for n in (4096, 8192) if dev.type == "cuda" else CPU_PEAK_SIDES:
        a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
        seconds = min(_median_ms(lambda a=a, b=b: a @ b, dev, repeats=5) for _ in range(4)) / 1e3
        best = max(best, 2 * n**3 / seconds / 1e9)
    return best


def disturbance(before: dict, after: dict, fractions: list[float]) -> list[str]:
    """Why the table cannot be trusted as a result (empty: it can): a peak that moved by more than PEAK_DRIFT
    between the probes taken before and after the measurements, or a model step above 100% of the peak."""
    why = []
    for kind in ("fp32", "bf16"):
        if before.get(kind) and after.get(kind):
            moved = abs(after[kind] - before[kind]) / max(before[kind], after[kind])
            if moved > PEAK_DRIFT:
                why.append(f"{kind} peak moved {moved:.0%} ({before[kind]:.0f} -> {after[kind]:.0f} GFLOP/s)")
    why += [f"a model step at {f:.0%} of the fp32 peak (impossible: the peak probe was disturbed)"
            for f in fractions if f > 1.0]  # fmt: skip
    return why


# ---- driver -----------------------------------------------------------------------------------------------


def child(args) -> None:
    labels, size, epochs, device = Path(args.labels), args.child_size, args.epochs, args.device
    if args.child == "naive":
        result = run_naive(labels, size, epochs, device)
    elif args.child == "mlic":
        result = run_mlic(labels, size, epochs, device, Path(args.work), args.cache)
    else:
        from mlic.runtime.precision import cpu_has_fast_bf16

        bf16 = device != "cpu" or cpu_has_fast_bf16()
        result = {
            "fp32": matmul_peak_gflops("float32", device),
            "bf16": matmul_peak_gflops("bfloat16", device) if bf16 else None,
        }
    print("RESULT " + json.dumps(result))


def spawn(args, which: str, size: int, work: Path, labels: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", which, "--child-size", str(size), "--labels", str(labels),
           "--epochs", str(args.epochs), "--device", args.device, "--work", str(work),
           "--cache", args.cache]  # fmt: skip
    env = dict(os.environ, MLIC_NO_MALLOPT="1") if which == "naive" else dict(os.environ)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{which} at {size}px failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 96])
    ap.add_argument("--images", type=int, default=128, help="images per run (a quarter of each kind)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--data-dir", default="/var/tmp/mlic-bench/throughput-data")
    ap.add_argument("--cache", choices=("auto", "off"), default="auto", help="mlic's decoded-image cache")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--labels", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    import torch

    print(f"load average at start: {os.getloadavg()[0]:.2f}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}")  # fmt: skip
    labels = make_images(Path(args.data_dir), args.images)
    with tempfile.TemporaryDirectory(prefix="mlic-throughput-") as tmp:
        work = Path(tmp)
        before = spawn(args, "peak", 0, work, labels)
        results = {size: {k: spawn(args, k, size, work, labels) for k in ("naive", "mlic")} for size in args.sizes}
        after = spawn(args, "peak", 0, work, labels)
    # The peak is the better of the two probes; the two are compared to see whether the machine stayed quiet.
    peak = {k: max(before[k], after[k]) if before[k] and after[k] else before[k] for k in before}
    _print_table(results, peak, args)
    fractions = [r["mlic"]["step_gflops"] / peak["fp32"] for r in results.values()]
    why = disturbance(before, after, fractions)
    print(f"peak probes before / after: fp32 {before['fp32']:.0f} / {after['fp32']:.0f} GFLOP/s")
    if why:
        print("DISTURBED: this table is not a result; rerun on a quiet machine. " + "; ".join(why))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _print_table(results: dict, peak: dict, args) -> None:
    bf16 = f"{peak['bf16']:.0f}" if peak["bf16"] else "n/a (no native bf16 here)"
    kinds = ", ".join(f"{k} {w}x{h}" for k, _, w, h in IMAGE_KINDS)
    print(f"\n{args.images} images ({kinds}), batch {BATCH}, {args.epochs} epochs, device {args.device}, mlic "
          f"cache {args.cache}")  # fmt: skip
    print(f"matmul peak GFLOP/s: fp32 {peak['fp32']:.0f}, bf16 {bf16}")
    print(f"{'size':>5} {'measure':<26}{'naive':>10}{'mlic':>10}{'ratio':>9}")
    rows = (
        ("train_epoch1", "train img/s, epoch 1", False),
        ("train_epoch2+", "train img/s, epochs 2+", False),
        ("eval", "eval img/s from files", False),
        ("latency_ms", "batch-1 latency ms, model", True),
        ("latency_file_ms", "batch-1 ms, photo file", True),
        ("step", "model step img/s", False),
        ("step_gflops", "model step GFLOP/s", False),
    )
    for size, r in results.items():
        for key, label, lower_is_better in rows:
            a, b = r["naive"][key], r["mlic"][key]
            ratio = a / b if lower_is_better else b / a
            print(f"{size:>5} {label:<26}{a:>10.1f}{b:>10.1f}{ratio:>8.2f}x")
            if key == "latency_ms" and r["mlic"].get("latency_onnx_ms"):
                onnx = r["mlic"]["latency_onnx_ms"]
                print(f"{size:>5} {'  same, mlic ONNX export':<26}{a:>10.1f}{onnx:>10.1f}{a / onnx:>8.2f}x")
        step = r["mlic"]["step_gflops"]
        fractions = f"{step / peak['fp32']:.0%} of fp32 peak"
        if peak["bf16"]:
            fractions += f", {step / peak['bf16']:.0%} of bf16 peak"
        print(f"{size:>5} mlic model step: {fractions}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

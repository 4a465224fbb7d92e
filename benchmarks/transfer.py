"""Transfer learning, proved without a download: self-made pretrained weights, then scratch vs fine-tuned.

No weights can be downloaded here, so the benchmark makes its own, the way hub weights are made, on other
data than the task's:

1. Pretraining: a timm ``resnet18`` learns the official Fashion-MNIST *train* split as a single-label 10-class
   task (a plain loop, cross-entropy). Each 28 px garment is drawn as the collages draw theirs (its intensity
   as alpha, a random colour on a random background, a side of 60-100% of a 32 px tile at a random offset), so
   the pretext task sees garments at the size they have in a 64 px collage. Inputs are normalised with mlic's
   default (ImageNet) statistics, which is what a local weights file gets. The backbone (no ``fc``) is saved
   as safetensors.
2. The task: Fashion-MNIST collages at 64 px (``mlic data fashion-collage``): a small training set (2,000
   images by default), 500 validation, and test collages drawn from the official *test* split only, so no test
   garment was seen in pretraining or training.
3. Two arms through ``mlic train``, same model, same image size, same time budget (``--max-minutes``):
   (a) from scratch with the recommended scratch recipe, ``configs/default.yaml``; (b) fine-tuned from the
   self-made weights with ``configs/finetune.yaml`` (head-only warm-up, layer-wise decay). Both test sets are
   scored with each run's best checkpoint and its tuned thresholds.

Run from the repository root (about 25 minutes on 2 cores with the defaults):

    .venv/bin/python benchmarks/transfer.py
    .venv/bin/python benchmarks/transfer.py --minutes 5 --train 1000 --work /tmp/transfer
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mlic.data.builders.fashion import load_fashion_mnist, make_fashion_collages
from mlic.data.transforms import IMAGENET_MEAN, IMAGENET_STD

IDX_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
ROOT = Path(__file__).resolve().parent.parent
TILE = 32  # a collage cell at 64 px (GRID 2)


def render_tiles(images: np.ndarray, seed: int) -> torch.Tensor:
    """(N, 28, 28) uint8 garments -> (N, 3, TILE, TILE) uint8 tiles, each garment coloured on its own background."""
    rng = np.random.default_rng(seed)
    n = len(images)
    alpha = torch.from_numpy(images).float() / 255.0
    peak = alpha.amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    alpha = (alpha / peak).unsqueeze(1)  # faint garments stretched to full opacity, as the collages do
    background = torch.from_numpy(rng.uniform(0, 255, (n, 3))).float()
    colour = torch.from_numpy(rng.uniform(0, 255, (n, 3))).float()
    luma = torch.tensor([0.299, 0.587, 0.114])
    dull = ((colour - background) @ luma).abs() < 60  # too little contrast: black or white, whichever is further
    far = torch.where((background @ luma > 127).unsqueeze(1), torch.zeros(3), torch.full((3,), 255.0))
    colour = torch.where(dull.unsqueeze(1), far, colour)
    sides = rng.integers(round(0.6 * TILE), TILE + 1, n)
    canvas = torch.zeros(n, 1, TILE, TILE)
    for side in np.unique(sides):
        idx = np.flatnonzero(sides == side)
        scaled = F.interpolate(alpha[idx], size=(int(side), int(side)), mode="bilinear", align_corners=False)
        for j, i in enumerate(idx):
            x, y = rng.integers(0, TILE - side + 1, 2)
            canvas[i, :, y : y + side, x : x + side] = scaled[j]
    tiles = background[:, :, None, None] * (1 - canvas) + colour[:, :, None, None] * canvas
    return tiles.round().clamp(0, 255).to(torch.uint8)


def pretrain(idx_dir: str, out: Path, *, epochs: int, batch: int, seed: int, limit: int | None = None) -> dict:
    """Train resnet18 on the official train split's garments (10 classes); save its backbone as safetensors."""
    import timm
    from safetensors.torch import save_file

    data = load_fashion_mnist(idx_dir)
    images, labels = data["train_images"][:limit], data["train_labels"][:limit]
    tiles, labels = render_tiles(images, seed), torch.from_numpy(labels.astype(np.int64))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    torch.manual_seed(seed)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).to(memory_format=torch.channels_last)
    steps = epochs * math.ceil(len(tiles) / batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    start, step, correct, seen = time.perf_counter(), 0, 0, 0
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(tiles))
        for first in range(0, len(tiles), batch):
            idx = order[first : first + batch]
            x = tiles[idx].float()
            flip = torch.rand(len(idx)) < 0.5
            x[flip] = x[flip].flip(-1)
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            # forward, loss (label smoothing: soft targets transfer better than saturated ones), backward, step
            logits = model(x)
            loss = F.cross_entropy(logits, labels[idx], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            correct += int((logits.argmax(1) == labels[idx]).sum())
            seen += len(idx)
            if step % 50 == 0 or step == steps:
                print(f"  pretrain epoch {epoch + 1} step {step}/{steps}: loss {loss.item():.3f}, "
                      f"train accuracy {correct / seen:.3f}", flush=True)  # fmt: skip
                correct = seen = 0
    seconds = time.perf_counter() - start
    accuracy = _test_accuracy(model, data, mean, std, seed)
    weights = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    save_file(weights, out)
    return {"seconds": seconds, "test_accuracy": accuracy, "images": len(tiles) * epochs}


@torch.no_grad()
def _test_accuracy(model, data: dict, mean, std, seed: int) -> float:
    """Single-label accuracy on tiles of the official test split (a sanity check of the pretext task)."""
    model.eval()
    tiles = render_tiles(data["test_images"][:2000], seed + 1)
    labels = torch.from_numpy(data["test_labels"][:2000].astype(np.int64))
    logits = model(((tiles.float() - mean) / std).contiguous(memory_format=torch.channels_last))
    return float((logits.argmax(1) == labels).float().mean())


def train_arm(name: str, files: dict, work: Path, args, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "mlic", "train", str(files["train"]), "--val", str(files["val"]), "--test",
               str(files["test"]), "--model", "resnet18", "--image-size", str(args.image_size), "--epochs",
               str(args.epochs), "--max-minutes", str(args.minutes), "--no-report", "--no-progress",
               "--output-dir", str(work / "runs"), "--name", name, "--overwrite", "--seed", str(args.seed),
               *extra]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    report = json.loads((work / "runs" / name / "test_metrics.json").read_text())
    history = (work / "runs" / name / "metrics.csv").read_text().strip().splitlines()
    return {"metrics": report, "seconds": time.perf_counter() - start, "epochs": len(history) - 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idx-dir", default=IDX_DIR)
    ap.add_argument("--train", type=int, default=2000, help="training collages")
    ap.add_argument("--val", type=int, default=500)
    ap.add_argument("--test", type=int, default=4000, help="test collages (official test split garments only)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--minutes", type=float, default=10.0, help="time budget of each arm (mlic train --max-minutes)")
    ap.add_argument("--epochs", type=int, default=60, help="epoch cap of each arm; the budget usually ends first")
    ap.add_argument("--pretrain-epochs", type=int, default=1, help="passes over the 60,000 training garments")
    ap.add_argument("--garments", type=int, help="pretrain on the first N training garments only (a quick check)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="keep the data, weights and runs here (default: a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        weights = work / "resnet18_fashion.safetensors"
        print("pretraining resnet18 on the Fashion-MNIST train split (single-label, 10 classes)...", flush=True)
        pre = pretrain(
            args.idx_dir, weights, epochs=args.pretrain_epochs, batch=128, seed=args.seed, limit=args.garments
        )
        print(f"pretrained on {pre['images']} garment images in {pre['seconds'] / 60:.1f} min; "
              f"accuracy on official test garments {pre['test_accuracy']:.3f}", flush=True)  # fmt: skip
        files = make_fashion_collages(args.idx_dir, work / "collages", num_train=args.train, num_val=args.val,
                                      num_test=args.test, image_size=args.image_size, seed=args.seed,
                                      progress=False)  # fmt: skip
        arms = {
            "scratch": ["--config", str(ROOT / "configs" / "default.yaml")],
            "finetune": ["--config", str(ROOT / "configs" / "finetune.yaml"), "--pretrained", str(weights)],
        }
        results = {}
        for name, extra in arms.items():
            print(f"arm {name}: mlic train {' '.join(extra)} ({args.minutes:g} min budget)...", flush=True)
            results[name] = train_arm(name, files, work, args, extra)
        print(f"\n{args.train} training collages at {args.image_size} px, {args.test} test collages, "
              f"resnet18, {args.minutes:g} min per arm")  # fmt: skip
        print(f"{'arm':<10} {'test mAP':>9} {'macro-F1':>9} {'micro-F1':>9} {'epochs':>7} {'minutes':>8}")
        for name, r in results.items():
            m = r["metrics"]
            print(f"{name:<10} {m['mAP']:>9.4f} {m['f1_macro']:>9.4f} {m['f1_micro']:>9.4f} {r['epochs']:>7} "
                  f"{r['seconds'] / 60:>8.1f}")  # fmt: skip
        gain = results["finetune"]["metrics"]["mAP"] - results["scratch"]["metrics"]["mAP"]
        print(f"\nfine-tuned minus scratch: {100 * gain:+.1f} points of test mAP (target: at least +5)")
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

"""Batch-1 model latency on the CPU: a naive eager model against ``Predictor``'s two engines, in one run.

Ways to get one image's probabilities from the same weights, on the same image (the float variants get it
normalised, float32 (1, 3, S, S) as ``Predictor.loader`` makes it, normalised before the clock starts):

  * naive: the plain ``nn.Module`` forward in eval mode under ``torch.no_grad``, NCHW, BatchNorm unfolded
    (what a model straight out of training gives);
  * torch: ``Predictor(engine="torch")``: BatchNorm folded, channels-last, ``inference_mode``;
  * onnx: ``Predictor(engine="onnx")``: ONNX Runtime on the ONNX copy (``mlic.inference.engines``);
  * int8 (``--int8``): what ``mlic export CKPT out.onnx --int8`` writes, run by ``OnnxPredictor`` as ``mlic
    predict out.onnx`` and ``mlic serve out.onnx`` run it, from the uint8 pixels of the same image (its graph
    scales and normalises inside, so int8's figure includes that step and the others' do not).

Without --int8 the weights are random; with it, every variant runs one checkpoint that ``benchmarks/int8.py``
fits in seconds (random convolutions, BatchNorm statistics and a least-squares head from generated images), since
INT8 needs calibration images and a checkpoint whose labels it must agree with (``export_int8`` refuses below
99%).

The calls are interleaved in rounds, so a change in machine load hits the three alike; each figure is the
median of ``--calls`` timed calls after ``--warmup`` untimed ones. Prints the medians, the ratios to naive
and to torch, the largest probability difference to naive, and the load averages before and after (compare
runs only on a quiet machine). Run from the repository root:

    .venv/bin/python benchmarks/latency.py                           # seed_cnn, 224 px, 200 calls each
    .venv/bin/python benchmarks/latency.py --model resnet18          # any timm name (zoo extra), random weights
    .venv/bin/python benchmarks/latency.py --int8                    # + INT8 export (export extra)
    .venv/bin/python benchmarks/latency.py --size 64 --calls 20      # a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mlic.checkpoint import load_checkpoint
from mlic.data.transforms import Preprocessing, batch_inputs
from mlic.inference.predictor import Predictor
from mlic.models import build_model
from mlic.runtime.cpu import cpu_count

CLASSES = [f"class{i}" for i in range(20)]
ROUNDS = 10  # the timed calls of each variant are split into this many interleaved rounds


def _variants(model_name: str, size: int, threads: int, work: Path | None) -> tuple[dict, Preprocessing]:
    """(name -> a callable giving (1, C) probabilities for a (1, 3, S, S) uint8 image, the preprocessing);
    ``work``: a folder for the fitted checkpoint and its INT8 export (``--int8``), else random weights."""
    cpu = torch.device("cpu")
    if work is None:
        torch.manual_seed(0)
        model = build_model(model_name, num_classes=len(CLASSES)).eval()
        meta = {"class_names": CLASSES, "preprocessing": Preprocessing(image_size=size).to_dict()}
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from int8 import fitted_checkpoint  # the INT8 benchmark's checkpoint maker

        from mlic.inference.int8 import export_int8
        from mlic.inference.onnx_predictor import OnnxPredictor

        checkpoint = fitted_checkpoint(work / "checkpoint", model_name, size, images=160)
        model, meta = load_checkpoint(checkpoint, device="cpu")
        model.eval()
        int8 = OnnxPredictor.from_file(export_int8(checkpoint, work / "model.int8.onnx").path, num_threads=threads)
    pre = Preprocessing.from_dict(meta["preprocessing"])

    def normalised(x: torch.Tensor) -> torch.Tensor:  # done before timing: as loader outputs it
        return batch_inputs(x, None, pre, cpu)

    @torch.no_grad()
    def naive(x: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(model(x)).numpy()

    float_runs = {
        "naive": naive,
        "torch": Predictor(model, meta, cpu, engine="torch").predict_probabilities,
        "onnx": Predictor(model, meta, cpu, engine="onnx", num_threads=threads).predict_probabilities,
    }
    variants = {name: _FloatInput(run, normalised) for name, run in float_runs.items()}
    if work is not None:
        variants["int8"] = int8.predict_probabilities
    return variants, pre


class _FloatInput:
    """A float variant called with a uint8 image: normalised once per distinct input, outside the timing."""

    def __init__(self, run, normalise) -> None:
        self.run, self.normalise, self._key, self._x = run, normalise, None, None

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        if self._key is not x:
            self._key, self._x = x, self.normalise(x)
        return self.run(self._x)


def _time(variants: dict, x: torch.Tensor, calls: int, warmup: int) -> dict[str, list[float]]:
    """Per variant: the seconds of each timed call, the variants interleaved in rounds."""
    for run in variants.values():
        for _ in range(warmup):
            run(x)
    times: dict[str, list[float]] = {name: [] for name in variants}
    per_round = max(1, calls // ROUNDS)
    while min(len(t) for t in times.values()) < calls:
        for name, run in variants.items():
            for _ in range(per_round):
                start = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="seed_cnn", help="seed_cnn or a timm model name (random weights)")
    ap.add_argument("--size", type=int, default=224, help="image size in px")
    ap.add_argument("--calls", type=int, default=200, help="timed calls per variant (median reported)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed calls per variant first")
    ap.add_argument("--threads", type=int, default=cpu_count(), help="PyTorch and ONNX Runtime threads")
    ap.add_argument("--int8", action="store_true", help="also time the INT8 export (fitted weights, not random)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mlic-latency-") as cache:
        os.environ.setdefault("MLIC_CACHE_DIR", cache)  # the ONNX copy goes to a throwaway cache
        variants, _ = _variants(args.model, args.size, args.threads, Path(cache) if args.int8 else None)
        generator = torch.Generator().manual_seed(1)
        x = torch.randint(0, 256, (1, 3, args.size, args.size), dtype=torch.uint8, generator=generator)
        reference = variants["naive"](x)
        diffs = {name: float(np.abs(run(x) - reference).max()) for name, run in variants.items()}
        times = _time(variants, x, args.calls, args.warmup)
    after = os.getloadavg()
    medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
    print(f"{args.model}, {args.size} px, batch 1, {args.threads} threads, {cpu_count()} usable cores; median of "
          f"{args.calls} calls after {args.warmup} warm-up")  # fmt: skip
    print(f"{'variant':<8} {'median ms':>10} {'p90 ms':>8} {'vs naive':>9} {'vs torch':>9} {'max |dp|':>9}")
    for name, t in times.items():
        p90 = float(np.percentile(t, 90)) * 1000
        print(f"{name:<8} {medians[name]:>10.2f} {p90:>8.2f} {medians['naive'] / medians[name]:>8.2f}x "
              f"{medians['torch'] / medians[name]:>8.2f}x {diffs[name]:>9.1e}")  # fmt: skip
    print(f"load average before {' '.join(f'{v:.2f}' for v in before)}, after {' '.join(f'{v:.2f}' for v in after)}")


if __name__ == "__main__":
    main()

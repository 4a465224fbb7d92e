"""Load test for ``mlic serve``: concurrent clients against a live server on loopback.

Starts ``python -m mlic serve`` as a subprocess, measures one client alone (the baseline), then C concurrent
clients for T seconds, each posting images from a fixed set over its own keep-alive connection. Prints
throughput (requests/s, images/s, and the ratio to the baseline), latency percentiles, error counts and the
server's peak memory, then checks every answer against sequential in-process prediction of the same image
(``Predictor.predict_image``): labels equal and probabilities bit-identical, else counted as a mismatch.
Run from the repository root:

    .venv/bin/python benchmarks/serve_load.py                        # trains a tiny checkpoint; 64 clients, 20 s
    .venv/bin/python benchmarks/serve_load.py --checkpoint runs/shapes/checkpoints/best --clients 16 --seconds 10

Bounded: at most 256 clients and 600 s, and every request has a timeout. The server gets
``--max-in-flight`` = clients, so no request is shed; pass a smaller --max-in-flight to watch 503s instead.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from mlic.cli import main as mlic_main
from mlic.data.builders.synthetic import make_shapes_dataset
from mlic.inference.predictor import Predictor

REQUEST_TIMEOUT_S = 60.0


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    errors: list[str] = field(default_factory=list)  # transport errors and non-200 answers other than 503
    busy: int = 0  # 503 answers (load shedding)
    answers: list[tuple[int, dict]] = field(default_factory=list)  # (image index, result) for the check
    lock: threading.Lock = field(default_factory=threading.Lock)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_checkpoint(work: Path) -> tuple[Path, Path]:
    """Train the shapes demo model for one epoch; returns (checkpoint, folder of test images)."""
    data = make_shapes_dataset(work / "data", num_train=256, num_val=64, num_test=64, image_size=40, seed=0)
    args = ["train", str(data["train"]), "--val", str(data["val"]), "--image-size", "40", "--epochs", "1",
            "--output-dir", str(work / "runs"), "--name", "bench", "--no-progress", "--device", "cpu"]  # fmt: skip
    assert mlic_main(args) == 0
    return work / "runs/bench/checkpoints/best", work / "data/images/test"


def _start_server(args, checkpoint: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlic", "serve", str(checkpoint), "--port", str(port), "--device", args.device,
           "--max-in-flight", str(args.max_in_flight or args.clients), "--max-batch", str(args.max_batch)]  # fmt: skip
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"mlic serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("mlic serve did not answer /health within 120 s")


def _client(url: str, payloads: list[tuple[str, bytes]], per_request: int, offset: int, deadline: float,
            tally: Tally) -> None:  # fmt: skip
    """Post images round-robin from ``offset`` until ``deadline``; one keep-alive connection per client."""
    i = offset
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as http:
        while time.monotonic() < deadline:
            ks = [(i + j) % len(payloads) for j in range(per_request)]
            i += per_request
            start = time.perf_counter()
            try:
                r = http.post(url, files=[("files", (payloads[k][0], payloads[k][1], "image/png")) for k in ks])
            except httpx.HTTPError as exc:
                with tally.lock:
                    tally.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - start
            with tally.lock:
                if r.status_code == 200:
                    tally.latencies.append(elapsed)
                    tally.answers += zip(ks, r.json()["results"], strict=True)
                elif r.status_code == 503:
                    tally.busy += 1
                else:
                    tally.errors.append(f"HTTP {r.status_code}: {r.text[:200]}")


def _drive(url: str, payloads: list, per_request: int, clients: int, seconds: float) -> tuple[Tally, float]:
    tally = Tally()
    start = time.monotonic()
    threads = [
        threading.Thread(target=_client, args=(url, payloads, per_request, c * 7, start + seconds, tally), daemon=True)
        for c in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + REQUEST_TIMEOUT_S + 10)
    return tally, time.monotonic() - start


def _summary(name: str, tally: Tally, wall: float) -> float:
    lat = np.asarray(tally.latencies) * 1000
    if not len(lat):
        print(f"{name:<22} no successful request; errors {len(tally.errors)}  503 {tally.busy}")
        return 0.0
    rate = len(lat) / wall
    pct = "  ".join(f"p{q} {np.percentile(lat, q):.1f} ms" for q in (50, 90, 99))
    print(f"{name:<22} {len(lat)} requests ok in {wall:.1f} s: {rate:.1f} req/s, {len(tally.answers) / wall:.1f} "
          f"images/s; latency {pct}, max {lat.max():.1f} ms; errors {len(tally.errors)}, 503 {tally.busy}")  # fmt: skip
    return rate


def _check(tally: Tally, expected: list) -> None:
    """Compare every answer with the sequential in-process prediction of its image."""
    label_diff = prob_diff = mismatches = 0
    worst = 0.0
    for k, got in tally.answers:
        want = expected[k]
        label_diff += got["labels"] != want.labels
        prob_diff += got["probabilities"] != want.probabilities  # dict equality: every float bit-identical
        mismatches += got["labels"] != want.labels or got["probabilities"] != want.probabilities
        worst = max(worst, max(abs(got["probabilities"][n] - p) for n, p in want.probabilities.items()))
    print(
        f"checked {len(tally.answers)} answers against sequential Predictor.predict_image: {mismatches} mismatches "
        f"(labels differ {label_diff}, probabilities not bit-identical {prob_diff}, max |dp| {worst:.2e})"
    )


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="default: train a tiny shapes checkpoint first")
    ap.add_argument("--images", type=Path, help="folder of PNG images to post (default: generated shapes)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--baseline-seconds", type=float, default=5.0, help="one client alone, for the ratio")
    ap.add_argument("--max-images", type=int, default=64, help="distinct images in the rotation")
    ap.add_argument("--files-per-request", type=int, default=1, help="images in each POST /predict (max 16)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-batch", type=int, default=1, help="passed to mlic serve")
    ap.add_argument("--max-in-flight", type=int, help="passed to mlic serve (default: --clients)")
    ap.add_argument("--threads", type=int, help="passed to mlic serve (PyTorch CPU threads)")
    args = ap.parse_args()
    if not 1 <= args.clients <= 256 or not 0 < args.seconds <= 600 or not 0 <= args.baseline_seconds <= 600:
        sys.exit("--clients must be 1..256 and --seconds / --baseline-seconds at most 600")
    if not 1 <= args.files_per_request <= 16:
        sys.exit("--files-per-request must be 1..16 (the server's default max_files)")

    with tempfile.TemporaryDirectory(prefix="mlic-serve-load-") as tmp:
        work = Path(tmp)
        checkpoint, images = args.checkpoint, args.images
        if checkpoint is None:
            checkpoint, generated = _tiny_checkpoint(work)
            images = images or generated
        elif images is None:
            images = Path(make_shapes_dataset(work / "data", num_train=0, num_val=0, num_test=64)["test"]).parent
            images = images / "images" / "test"
        paths = sorted(images.glob("*.png"))[: args.max_images]
        if not paths:
            sys.exit(f"no PNG images in {images}")
        payloads = [(p.name, p.read_bytes()) for p in paths]
        predictor = Predictor.from_checkpoint(checkpoint, device=args.device)
        expected = [predictor.predict_image(p) for p in paths]  # sequential, in-process: the reference

        port = _free_port()
        server = _start_server(args, checkpoint, port, work / "serve.log")
        url = f"http://127.0.0.1:{port}/predict"
        try:
            print(f"mlic serve on 127.0.0.1:{port}: {checkpoint}, device {args.device}, max_batch {args.max_batch}, "
                  f"{len(paths)} distinct {predictor.preprocessing.image_size}px-model images")  # fmt: skip
            _drive(
                url, payloads, args.files_per_request, 2, 1.0
            )  # warm-up: first requests pay for lazy imports and thread start-up
            base_rate = 0.0
            if args.baseline_seconds > 0:
                tally, wall = _drive(url, payloads, args.files_per_request, 1, args.baseline_seconds)
                base_rate = _summary("1 client (baseline)", tally, wall)
                _check(tally, expected)
            tally, wall = _drive(url, payloads, args.files_per_request, args.clients, args.seconds)
            rate = _summary(f"{args.clients} clients, {args.seconds:g} s", tally, wall)
            if base_rate:
                print(f"throughput vs one client: {rate / base_rate:.2f}x")
            _check(tally, expected)
            for message in sorted(set(tally.errors))[:5]:
                print(f"  error: {message}")
            print(f"server peak RSS: {_peak_rss_mb(server.pid) or float('nan'):.0f} MB")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()

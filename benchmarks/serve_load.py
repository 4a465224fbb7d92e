"""Load test for ``mlic serve``: concurrent clients against a live server on loopback.

Starts ``python -m mlic serve`` as a subprocess, once per mode: ``default`` (the server's defaults: batched
model calls on the fastest engine, ONNX Runtime on a CPU) and ``exact`` (``--exact``: PyTorch, one image per
call, the old default). In each, 1, 16 and 64 clients (``--clients``) post for T seconds, each images from a
fixed set over its own keep-alive connection. Prints, per mode and client count, throughput (requests/s,
images/s, the ratio to one client), latency p50/p99, errors and 503s, then checks every answer against
sequential in-process ``Predictor.predict_image`` (PyTorch) of the same image: in default mode probabilities
within 1e-4, in exact mode bit-identical, labels equal in both, else counted as a mismatch. Load averages are
printed before and after: compare runs only on a quiet machine. Run from the repository root:

    .venv/bin/python benchmarks/serve_load.py               # trains a tiny 128 px checkpoint; 1/16/64 clients, 10 s
    .venv/bin/python benchmarks/serve_load.py --checkpoint runs/shapes/checkpoints/best --clients 1 8 --seconds 5
    .venv/bin/python benchmarks/serve_load.py --image-size 32 --clients 1 4 --seconds 1   # a smoke run

Bounded: at most 256 clients and 600 s, and every request has a timeout. The server gets
``--max-in-flight`` = the most clients, so no request is shed; pass a smaller --max-in-flight to watch 503s.

Two hostile scenarios (``--scenario slow``, ``--scenario bombs``, or ``all`` for the three):

* slow: 32 connections send their headers and then one body byte every few seconds, held open while 16 normal
  clients post for 20 s. Reported: the normal clients' share of 200s and their p99, and how many slow
  connections the server cut off (408) and after how long.
* bombs: requests of 16 PNGs that each declare 7000 x 7000 pixels in 514 bytes (refused whole, by the
  per-request pixel budget), then requests of 4 of them (decoded under the server-wide budget, then refused as
  broken). Reported: the answers, the server's idle, peak and after-burst RSS (10 s later).
"""

from __future__ import annotations

import argparse
import os
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
MODES = ("default", "exact")
DEFAULT_TOLERANCE = 1e-4  # default mode: batched, and on ONNX Runtime when installed


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


def _tiny_checkpoint(work: Path, size: int) -> tuple[Path, Path]:
    """Train the shapes demo model at ``size`` px for one epoch; returns (checkpoint, folder of test images)."""
    data = make_shapes_dataset(work / "data", num_train=128, num_val=32, num_test=64, image_size=size, seed=0)
    args = ["train", str(data["train"]), "--val", str(data["val"]), "--image-size", str(size), "--epochs", "1",
            "--output-dir", str(work / "runs"), "--name", "bench", "--no-progress", "--no-report",
            "--device", "cpu"]  # fmt: skip
    assert mlic_main(args) == 0
    return work / "runs/bench/checkpoints/best", work / "data/images/test"


def _start_server(args, checkpoint: Path, port: int, log: Path, mode: str = "default") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlic", "serve", str(checkpoint), "--port", str(port), "--device", args.device,
           "--max-in-flight", str(args.max_in_flight or max(args.clients))]  # fmt: skip
    if mode == "exact":
        cmd += ["--exact"]
    else:  # the server's own defaults unless asked otherwise
        for flag, value in (("--engine", args.engine), ("--max-batch", args.max_batch),
                            ("--batch-wait-ms", args.batch_wait_ms)):  # fmt: skip
            cmd += [] if value is None else [flag, str(value)]
    if args.scenario != "normal":
        cmd += ["--max-uploading", "64"]  # room for the slow connections beside the normal clients
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300  # a first start exports the checkpoint to ONNX (seconds, then cached)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"mlic serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("mlic serve did not answer /health within 300 s")


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


def _check(tally: Tally, expected: list, tolerance: float = 0.0) -> str:
    """Compare every answer with the sequential in-process prediction of its image: probabilities within
    ``tolerance`` (0: bit-identical) and labels equal; returns a one-line verdict."""
    label_diff = prob_diff = 0
    worst = 0.0
    for k, got in tally.answers:
        want = expected[k]
        label_diff += got["labels"] != want.labels
        dp = max(abs(got["probabilities"][n] - p) for n, p in want.probabilities.items())
        # tolerance 0: dict equality, every float bit-identical through JSON and back
        prob_diff += got["probabilities"] != want.probabilities if tolerance == 0 else dp > tolerance
        worst = max(worst, dp)
    rule = "bit-identical" if tolerance == 0 else f"within {tolerance:g}"
    ok = "ok" if label_diff == prob_diff == 0 else "MISMATCH"
    return (f"{ok}: {len(tally.answers)} answers vs Predictor.predict_image, probabilities {rule}: "
            f"{prob_diff} off, labels differ {label_diff}, max |dp| {worst:.1e}")  # fmt: skip


@dataclass
class Row:
    mode: str
    clients: int
    rate: float  # requests/s
    images: float  # images/s
    p50: float  # ms
    p99: float  # ms
    errors: int
    busy: int
    check: str


def _row(mode: str, clients: int, tally: Tally, wall: float, check: str) -> Row:
    lat = np.asarray(tally.latencies) * 1000
    p50, p99 = (float(np.percentile(lat, q)) for q in (50, 99)) if len(lat) else (float("nan"), float("nan"))
    return Row(mode, clients, len(lat) / wall, len(tally.answers) / wall, p50, p99, len(tally.errors), tally.busy,
               check)  # fmt: skip


def _table(rows: list[Row]) -> None:
    """One line per mode and client count; each mode's ratio is to its own one-client run."""
    print(f"{'mode':<8} {'clients':>7} {'req/s':>8} {'img/s':>8} {'vs 1':>6} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'errors':>6} {'503':>5}  answers")  # fmt: skip
    for r in rows:
        one = next((o.rate for o in rows if o.mode == r.mode and o.clients == 1), 0.0)
        ratio = f"{r.rate / one:.2f}x" if one else "-"
        print(f"{r.mode:<8} {r.clients:>7} {r.rate:>8.1f} {r.images:>8.1f} {ratio:>6} {r.p50:>8.1f} {r.p99:>8.1f} "
              f"{r.errors:>6} {r.busy:>5}  {r.check}")  # fmt: skip
    for c in sorted({r.clients for r in rows}):
        pair = {r.mode: r.rate for r in rows if r.clients == c}
        if pair.get("exact") and "default" in pair:
            print(f"{c} clients: default {pair['default'] / pair['exact']:.2f}x the throughput of --exact")


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


SLOW_CONNECTIONS, SLOW_NORMAL_CLIENTS, SLOW_SECONDS, TRICKLE_S = 32, 16, 20.0, 3.0
RSS_BUDGET_MB, RSS_RETURN_MB = 1536, 200


def _rss_mb(pid: int, field: str = "VmRSS:") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def _slow_connection(port: int, stop: threading.Event, outcome: list) -> None:
    """Headers, then one body byte every TRICKLE_S seconds, until the server answers or closes."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                  b"Content-Length: 100000\r\n\r\n")  # fmt: skip
        s.settimeout(TRICKLE_S)
        while not stop.is_set():
            try:
                answer = s.recv(4096)
            except TimeoutError:
                try:
                    s.sendall(b"x")
                except OSError:
                    outcome.append(("closed", time.monotonic() - start))
                    return
                continue
            status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed"
            outcome.append((status, time.monotonic() - start))
            return
        outcome.append(("held to the end", time.monotonic() - start))


def _scenario_slow(url: str, port: int, payloads: list) -> None:
    stop, outcome = threading.Event(), []
    holders = [threading.Thread(target=_slow_connection, args=(port, stop, outcome), daemon=True)
               for _ in range(SLOW_CONNECTIONS)]  # fmt: skip
    for t in holders:
        t.start()
    time.sleep(0.5)
    tally, wall = _drive(url, payloads, 1, SLOW_NORMAL_CLIENTS, SLOW_SECONDS)
    stop.set()
    for t in holders:
        t.join(timeout=TRICKLE_S + 5)
    total = len(tally.latencies) + len(tally.errors) + tally.busy
    ok = len(tally.latencies) / total if total else 0.0
    p99 = float(np.percentile(tally.latencies, 99)) if tally.latencies else float("nan")
    cut = [seconds for status, seconds in outcome if status == "408"]
    print(f"slow: {SLOW_CONNECTIONS} trickling connections beside {SLOW_NORMAL_CLIENTS} normal clients for "
          f"{SLOW_SECONDS:g} s: normal {len(tally.latencies)}/{total} answered 200 ({ok:.1%}), p99 "
          f"{p99 * 1000:.0f} ms, {len(tally.latencies) / wall:.1f} req/s; slow connections: {len(cut)} cut off "
          f"with 408 after {min(cut, default=0):.1f}-{max(cut, default=0):.1f} s, others "
          f"{sorted({status for status, _ in outcome if status != '408'})}")  # fmt: skip
    print(f"  criteria: normal 200s >= 90%: {ok >= 0.9}; p99 < 2 s: {p99 < 2}; every slow one cut off: "
          f"{len(cut) == SLOW_CONNECTIONS}")  # fmt: skip


def _bomb(width: int = 7000, height: int = 7000) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 400)) + chunk(b"IEND", b"")
    )


def _scenario_bombs(url: str, pid: int) -> None:
    bomb = _bomb()
    time.sleep(2)
    idle = _rss_mb(pid)
    peak, sampling = [idle], threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak.append(_rss_mb(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    answers: dict[str, list[int]] = {"16 files": [], "4 files": []}

    def post(files: int, key: str) -> None:
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as http:
            for _ in range(3):
                r = http.post(url, files=[("files", (f"b{i}.png", bomb, "image/png")) for i in range(files)])
                answers[key].append(r.status_code)

    workers = [threading.Thread(target=post, args=(n, k)) for n, k in ((16, "16 files"), (4, "4 files")) * 4]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    sampling.set()
    sampler.join()
    time.sleep(10)
    after = _rss_mb(pid)
    for key, codes in answers.items():
        print(f"bombs: {len(codes)} requests of {key} declaring 7000x7000 each ({len(bomb)} bytes a file): "
              f"answers {sorted(set(codes))}")  # fmt: skip
    print(f"  server RSS: idle {idle:.0f} MB, peak {max(peak):.0f} MB, 10 s after the burst {after:.0f} MB")
    print(f"  criteria: peak <= {RSS_BUDGET_MB} MB: {max(peak) <= RSS_BUDGET_MB}; back within {RSS_RETURN_MB} MB "
          f"of idle: {after - idle <= RSS_RETURN_MB}")  # fmt: skip


def _measure(args, url: str, port: int, pid: int, payloads: list, expected: list, mode: str) -> list[Row]:
    """The chosen scenarios against the running server; the rows of the normal one."""
    _drive(url, payloads, args.files_per_request, 2, 1.0)  # warm-up: lazy imports, thread start-up
    if args.scenario in ("slow", "all"):
        _scenario_slow(url, port, payloads)
    if args.scenario in ("bombs", "all"):
        _scenario_bombs(url, pid)
    if args.scenario not in ("normal", "all"):
        return []
    rows, errors = [], set()
    for clients in args.clients:
        tally, wall = _drive(url, payloads, args.files_per_request, clients, args.seconds)
        _summary(f"{mode}, {clients} clients", tally, wall)
        check = _check(tally, expected, 0.0 if mode == "exact" else DEFAULT_TOLERANCE)
        rows.append(_row(mode, clients, tally, wall, check))
        errors |= set(tally.errors)
    for message in sorted(errors)[:5]:
        print(f"  error: {message}")
    print(f"{mode}: server peak RSS {_peak_rss_mb(pid) or float('nan'):.0f} MB")
    return rows


def _serve_mode(args, mode: str, checkpoint: Path, work: Path, payloads: list, expected: list) -> list[Row]:
    """Start mlic serve in ``mode``, measure it, stop it."""
    port = _free_port()
    server = _start_server(args, checkpoint, port, work / f"serve-{mode}.log", mode)
    try:
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
        print(f"{mode}: mlic serve on 127.0.0.1:{port}, engine {health.get('engine')}, max batch "
              f"{health.get('max_batch')}, wait {health.get('batch_wait_ms')} ms, decode threads "
              f"{health.get('decode_threads')}")  # fmt: skip
        return _measure(args, f"http://127.0.0.1:{port}/predict", port, server.pid, payloads, expected, mode)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="default: train a tiny shapes checkpoint first")
    ap.add_argument("--images", type=Path, help="folder of PNG images to post (default: generated shapes)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64], help="client counts, one run each")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="default: both")
    ap.add_argument("--image-size", type=int, default=128, help="of the trained tiny checkpoint and its images")
    ap.add_argument("--max-images", type=int, default=64, help="distinct images in the rotation")
    ap.add_argument("--files-per-request", type=int, default=1, help="images in each POST /predict (max 16)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--engine", help="passed to mlic serve in default mode (default: the server's)")
    ap.add_argument("--max-batch", type=int, help="passed to mlic serve in default mode (default: the server's)")
    ap.add_argument("--batch-wait-ms", type=float, help="passed to mlic serve in default mode")
    ap.add_argument("--max-in-flight", type=int, help="passed to mlic serve (default: the most --clients)")
    ap.add_argument("--threads", type=int, help="passed to mlic serve (the model's CPU threads)")
    ap.add_argument("--scenario", choices=("normal", "slow", "bombs", "all"), default="normal")
    args = ap.parse_args()
    if not all(1 <= c <= 256 for c in args.clients) or not 0 < args.seconds <= 600:
        sys.exit("--clients must be 1..256 and --seconds at most 600")
    if not 1 <= args.files_per_request <= 16:
        sys.exit("--files-per-request must be 1..16 (the server's default max_files)")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} CPUs)")

    with tempfile.TemporaryDirectory(prefix="mlic-serve-load-") as tmp:
        work = Path(tmp)
        checkpoint, images = args.checkpoint, args.images
        if checkpoint is None:
            checkpoint, generated = _tiny_checkpoint(work, args.image_size)
            images = images or generated
        elif images is None:
            images = Path(make_shapes_dataset(work / "data", num_train=0, num_val=0, num_test=64)["test"]).parent
            images = images / "images" / "test"
        paths = sorted(images.glob("*.png"))[: args.max_images]
        if not paths:
            sys.exit(f"no PNG images in {images}")
        payloads = [(p.name, p.read_bytes()) for p in paths]
        predictor = Predictor.from_checkpoint(checkpoint, device=args.device)  # PyTorch, as evaluation runs it
        expected = [predictor.predict_image(p) for p in paths]  # sequential, in-process: the reference
        print(f"{checkpoint}: {predictor.preprocessing.image_size} px model, device {args.device}, {len(paths)} "
              f"distinct images, {args.files_per_request} per request, {args.seconds:g} s a run")  # fmt: skip
        rows = []
        for mode in args.modes:
            rows += _serve_mode(args, mode, checkpoint, work, payloads, expected)
        if rows:
            _table(rows)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()

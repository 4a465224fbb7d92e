"""``mlic serve``: an HTTP API and a web page that label uploaded images with a checkpoint."""

from __future__ import annotations

import argparse
import sys

from mlic.cli.flags import add_command, add_setting, add_threshold, int_at_least
from mlic.config import collect_settings
from mlic.inference.serve import ServeLimits

HELP = """examples:
  mlic serve runs/shapes/checkpoints/best                 # http://127.0.0.1:8000 (web page), /docs (API)
  mlic serve runs/shapes/checkpoints/best --port 9000 --max-in-flight 8
  mlic serve runs/shapes/checkpoints/best --exact        # bit-exact answers: PyTorch, one image per model call
  mlic serve model.int8.onnx                              # an exported model (fp32 or INT8), by ONNX Runtime
  curl -F files=@photo.jpg -F files=@other.png http://127.0.0.1:8000/predict

Endpoints: POST /predict (multipart field 'files', repeatable), GET /labels, GET /health, GET /docs.
Images of concurrent requests share model calls (up to --max-batch, waiting up to --batch-wait-ms for images
still being decoded); answers equal `mlic predict`'s to 1e-4, or bit for bit with --exact. --engine auto runs
the checkpoint in ONNX Runtime on the CPU when the export extra is installed (exported once at start-up and
cached), else in PyTorch.
Limits answer with JSON errors: body over --max-upload-mb 413, a body slower than --body-timeout-s 408,
an image over --max-pixels or a request over --max-request-pixels 413, bytes that are no image 415, more
than --max-in-flight requests or --max-uploading uploads 503 with Retry-After, a Host not allowed 400.
Bound to loopback (the default) the server answers only to localhost names, so web pages cannot reach it
by DNS rebinding. There is no authentication: binding beyond loopback (--host 0.0.0.0) belongs behind a
reverse proxy.
Needs the serve extra: pip install 'mlic[serve]'.
"""

LIMITS = collect_settings(ServeLimits)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "serve", "serve a checkpoint over HTTP, with a web page", __doc__, HELP)
    p.add_argument("checkpoint", help="checkpoint folder (runs/<name>/checkpoints/best), or an .onnx file")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    add_setting(p, "device", own_default=True)
    add_threshold(p)
    g = p.add_argument_group("limits and model calls")
    for s in LIMITS:
        add_setting(g, s, own_default=True)
    p.add_argument("--threads", type=int_at_least(1), help="CPU threads for the model: PyTorch's, or ONNX Runtime's "
                   "intra-op threads (default: PyTorch's choice; one per core for ONNX Runtime)")  # fmt: skip
    p.add_argument(
        "--allowed-hosts",
        metavar="NAMES",
        help="comma-separated Host names to answer ('*': any; default: localhost names when --host is loopback, "
        "else any)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.inference.serve import serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"mlic serve: listening on {args.host} without authentication or TLS", file=sys.stderr)
    limits = ServeLimits(**{s.key: getattr(args, s.flat) for s in LIMITS})
    serve(
        args.checkpoint,
        args.host,
        args.port,
        device=args.device,
        threshold=args.threshold,
        threads=args.threads,
        limits=limits,
    )
    return 0

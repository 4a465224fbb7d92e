"""``mlic serve``: an HTTP API and a web page that label uploaded images with a checkpoint."""

from __future__ import annotations

import argparse
import sys

HELP = """examples:
  mlic serve runs/shapes/checkpoints/best                 # http://127.0.0.1:8000 (web page), /docs (API)
  mlic serve runs/shapes/checkpoints/best --port 9000 --max-in-flight 8
  curl -F files=@photo.jpg -F files=@other.png http://127.0.0.1:8000/predict

Endpoints: POST /predict (multipart field 'files', repeatable), GET /labels, GET /health, GET /docs.
Limits answer with JSON errors: body over --max-upload-mb 413, an image over --max-pixels 413, bytes that
are no image 415, more than --max-in-flight predict requests 503 with Retry-After. There is no
authentication: binding beyond loopback (--host 0.0.0.0) belongs behind a reverse proxy.
Needs the serve extra: pip install 'mlic[serve]'.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from mlic.serve import DEFAULT_MAX_FILES, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_BYTES

    p = sub.add_parser(
        "serve",
        help="serve a checkpoint over HTTP, with a web page",
        description=__doc__,
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint folder (runs/<name>/checkpoints/best)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threshold", type=float, help="one threshold for every class, instead of the checkpoint's")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_BYTES / 2**20,
                   help="largest request body in MiB (default %(default)g)")  # fmt: skip
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="largest image, width x height (default %(default)s)")  # fmt: skip
    p.add_argument("--max-files", type=int, default=DEFAULT_MAX_FILES, help="images per request (default %(default)s)")
    p.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT,
                   help="predict requests served at once; more get 503 (default %(default)s)")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=1,
                   help="images per model call, batched across requests; above 1 is faster on a GPU but moves "
                        "probabilities by float rounding with the load (default 1: bit-exact)")  # fmt: skip
    p.add_argument("--threads", type=int, help="PyTorch CPU threads for the model (default: PyTorch's choice)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.cli import UserError
    from mlic.serve import serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"mlic serve: listening on {args.host} without authentication or TLS", file=sys.stderr)
    try:
        serve(
            args.checkpoint,
            args.host,
            args.port,
            device=args.device,
            threshold=args.threshold,
            threads=args.threads,
            max_upload_bytes=int(args.max_upload_mb * 2**20),
            max_pixels=args.max_pixels,
            max_files=args.max_files,
            max_in_flight=args.max_in_flight,
            max_batch=args.max_batch,
        )
    except (ImportError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    return 0

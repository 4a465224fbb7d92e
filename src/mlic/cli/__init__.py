"""The ``mlic`` command: one module per subcommand, each adding its arguments and calling one library function.

``main(argv)`` is importable so tests run the CLI in-process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mlic.cli import data, demo, evaluate, explain, export, predict, report, serve, train

# explicit, in the order --help lists them
SUBCOMMANDS = (demo, data, train, evaluate, predict, export, serve, report, explain)

EPILOG = """examples:
  mlic demo                                              # build demo data, train, evaluate, predict
  mlic train data/train.csv --val data/val.csv --epochs 10 --name shapes
  mlic evaluate runs/shapes/checkpoints/best --data data/test.csv
  mlic predict runs/shapes/checkpoints/best photos/ --format csv --output preds.csv
  mlic export runs/shapes/checkpoints/best --format onnx model.onnx   # ONNX with thresholds inside
  mlic serve runs/shapes/checkpoints/best                # web page + HTTP API on http://127.0.0.1:8000
  mlic report runs/shapes                                # HTML report: curves, per-label errors, Grad-CAM
  mlic explain runs/shapes/checkpoints/best photo.png    # Grad-CAM map per predicted label
  mlic data inspect data/train.csv                       # label statistics and broken/duplicate images
"""


class UserError(Exception):
    """Raised by subcommands for bad flags; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlic",
        description="Multi-label image classification: train, evaluate, predict.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from mlic import __version__

    parser.add_argument("--version", action="version", version=f"mlic {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from mlic.checkpoint import CheckpointError
    from mlic.config import ConfigError
    from mlic.data.images import ImageDecodeError
    from mlic.data.records import DataError
    from mlic.engine.loop import NonFiniteLossError
    from mlic.engine.runtime import configure_allocator

    configure_allocator()  # keep big activation buffers mapped between steps (MLIC_NO_MALLOPT=1 opts out)
    try:
        return int(args.run(args) or 0)
    except (
        UserError,
        DataError,
        ConfigError,
        CheckpointError,
        ImageDecodeError,
        FileExistsError,
        FileNotFoundError,
        NonFiniteLossError,
    ) as exc:
        print(f"mlic {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mlic {args.command}: interrupted", file=sys.stderr)
        return 130

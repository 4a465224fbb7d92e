"""The ``mlic`` command: one module per subcommand, each adding its arguments and calling one library function.

``main(argv)`` is importable so tests run the CLI in-process. A mistake the user can fix (any
``mlic.errors.UserError``, a missing or unwritable file, a bad flag) ends as one line,
``mlic <command>: error: ...``, with exit code 2; only a bug in mlic shows a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mlic.cli import card, data, demo, embed, evaluate, explain, export, predict, report, serve, train
from mlic.errors import UserError

# explicit, in the order --help lists them
SUBCOMMANDS = (demo, data, train, evaluate, predict, embed, export, serve, report, explain, card)

EPILOG = """examples:
  mlic demo                                              # build demo data, train, evaluate, predict
  mlic train data/train.csv --val data/val.csv --epochs 10 --name shapes
  mlic evaluate runs/shapes/checkpoints/best --data data/test.csv
  mlic predict runs/shapes/checkpoints/best photos/ --output preds.csv
  mlic embed runs/shapes/checkpoints/best photos/ --output emb.parquet  # pooled features per image
  mlic export runs/shapes/checkpoints/best model.onnx    # ONNX with thresholds inside
  mlic serve runs/shapes/checkpoints/best                # web page + HTTP API on http://127.0.0.1:8000
  mlic report runs/shapes                                # HTML report: curves, per-label errors, Grad-CAM
  mlic explain runs/shapes/checkpoints/best photo.png    # Grad-CAM map per predicted label
  mlic card runs/shapes/checkpoints/best --data test.csv # MODEL_CARD.md with metrics and intervals
  mlic data inspect data/train.csv                       # label statistics and broken/duplicate images
"""


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line (the usage itself is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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


def print_error(prog: str, exc: BaseException) -> None:
    """Details first (a message's later lines, e.g. a list of bad files), then the one error line."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    for line in lines[1:]:
        print(line, file=sys.stderr)
    print(f"{prog}: error: {lines[0]}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    prog = getattr(args, "prog", f"mlic {args.command}")
    if extra:  # named by the subcommand that did not take them, not by the top-level parser
        print(f"{prog}: error: unrecognized arguments: {' '.join(extra)} (see {prog} --help)", file=sys.stderr)
        return 2
    try:
        return int(args.run(args) or 0)
    except (UserError, OSError) as exc:  # OSError: a path the user gave that is missing, a folder, unwritable
        print_error(prog, exc)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130

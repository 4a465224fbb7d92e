"""``mlic embed``: each image's embedding (the model's pooled features) into Parquet or .npy, streaming at any
scale."""

from __future__ import annotations

import argparse
import sys
from itertools import chain
from pathlib import Path

from mlic.cli.flags import add_command, add_compute, add_setting

HELP = """examples:
  mlic embed runs/shapes/checkpoints/best photos/ --output emb.parquet
  mlic embed runs/shapes/checkpoints/best 'more/**/*.png' --output emb.npy     # + emb.paths.txt
  mlic embed runs/shapes/checkpoints/best --list files.txt --output emb.parquet --overwrite
  mlic embed model.onnx photos/ --output emb.npy       # an ONNX model exported with --embedding

An embedding is the model's globally pooled backbone features, the vector its classifier starts from
(seed_cnn: the 256 averaged feature channels; timm models: forward_head(..., pre_logits=True)). Images
are decoded and preprocessed exactly as `mlic predict` does; inputs are expanded the same way (folders
recursively, globs, --list .txt/.csv) and streamed, so nothing is held in memory all at once.
--output .parquet: columns path (string) and embedding (fixed-size list of float32), in input order.
--output .npy: a float32 (N, D) array, and beside it OUT.paths.txt (emb.npy -> emb.paths.txt) with
the path of row i on line i.
Unreadable images do not stop the run, as in `mlic predict`: each is named in a warning on stderr,
left out of the output (so row i is the i-th readable image) and counted at the end.
An existing output is replaced only with --overwrite; an output that is also an input is refused.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "embed", "write each image's embedding (pooled features) to Parquet or .npy", __doc__, HELP)
    p.add_argument("checkpoint", metavar="MODEL", help="checkpoint folder, or .onnx exported with --embedding")
    p.add_argument("inputs", nargs="*", metavar="PATH", help="image files, folders or glob patterns")
    p.add_argument("--list", metavar="FILE", help="also embed the paths listed in this .txt or .csv file")
    add_setting(p, "image_root", own_default=True)
    p.add_argument("--output", metavar="FILE", required=True, help="file to write: .parquet, or .npy (+ .paths.txt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    add_compute(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.errors import UserError
    from mlic.inference.embed import (
        check_destinations,
        embedding_destinations,
        embedding_format,
        import_parquet,
        write_embeddings,
    )
    from mlic.inference.inputs import iter_inputs
    from mlic.inference.load import load_predictor
    from mlic.runtime.console import warn
    from mlic.runtime.cpu import configure_allocator

    configure_allocator()  # batches of activations stay mapped between model calls (training's setting)

    if not args.inputs and not args.list:
        raise UserError("give image paths, folders or globs, or --list FILE")
    dests = embedding_destinations(args.output, overwrite=args.overwrite)  # the suffix is checked here
    if embedding_format(args.output) == "parquet":
        import_parquet()  # a broken install fails now, not after the model is loaded
    check_destinations(dests, args.inputs, args.list)  # before anything is loaded: never write over what is read
    paths = iter_inputs(args.inputs, list_file=args.list, image_root=args.image_root)
    first = next(paths, None)  # peek, so an empty input set fails before any output is written
    if first is None:
        raise UserError(f"no images found in: {' '.join(args.inputs + ([args.list] if args.list else []))}")
    predictor = load_predictor(args.checkpoint, device=args.device, max_pixels=args.max_image_pixels)
    summary = write_embeddings(
        predictor,
        chain([first], paths),
        Path(args.output),
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=args.progress,
        on_unreadable=lambda path, why: warn(f"warning: {path}: {why}; left out"),
    )
    written = " and ".join(str(d.path) for d in dests)
    print(f"{summary.line()}; written to {written}", file=sys.stderr)
    return 0

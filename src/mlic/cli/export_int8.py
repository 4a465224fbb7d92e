"""``mlic export ... --int8``: the flags of the INT8 export and its run (``mlic.inference.int8``)."""

from __future__ import annotations

import argparse

from mlic.inference.export_format import INT8_CALIBRATION_IMAGES, INT8_MIN_AGREEMENT, ExportError

HELP = f"""
INT8 (--int8, ONNX only): the fp32 export statically quantised by ONNX Runtime (QDQ, uint8 activations,
int8 per-channel weights), with the same input, sigmoid, thresholds and metadata, plus a `quantization`
entry. Ranges are calibrated on {INT8_CALIBRATION_IMAGES} training images (--calibration-images) of the
checkpoint's run, or on --calibration-data. The file is kept only if its labels match the checkpoint's on
at least {INT8_MIN_AGREEMENT:.0%} of the (image, label) cells of held-out images: the run's validation images, a
held-out share of --calibration-data, or --check-data. `mlic predict`, `evaluate` and `serve` take it as
any .onnx.
"""


def add_int8_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("INT8")
    g.add_argument("--int8", action="store_true", help="ONNX: statically quantise to INT8 (see below)")
    g.add_argument(
        "--calibration-images",
        type=int,
        metavar="N",
        help=f"--int8: training images to calibrate on (default: {INT8_CALIBRATION_IMAGES})",
    )
    g.add_argument(
        "--calibration-data",
        metavar="LABELS_OR_FOLDER",
        help="--int8: calibrate on these images (a label file, or a folder) instead of the run's training labels; "
        "a held-out share is checked on",
    )
    g.add_argument(
        "--check-data",
        metavar="LABELS_OR_FOLDER",
        help="--int8: check the INT8 model against the checkpoint on these images (default: the run's validation "
        "images, or the held-out share of --calibration-data)",
    )


def int8_flags(args: argparse.Namespace) -> list[str]:
    """The INT8 options given on the command line (each defaults to None, so one given without --int8 is named)."""
    flags = {"--calibration-images": args.calibration_images, "--calibration-data": args.calibration_data,
             "--check-data": args.check_data}  # fmt: skip
    return [flag for flag, value in flags.items() if value is not None]


def run_int8(args: argparse.Namespace, fmt: str) -> int:
    from mlic.inference.int8 import export_int8

    if not args.int8:
        raise ExportError(f"{', '.join(int8_flags(args))}: for --int8 only")
    if fmt != "onnx":
        raise ExportError("--int8 applies to ONNX export only")
    if getattr(args, "embedding", False):
        raise ExportError("--int8 with --embedding is not supported: its embedding output would go unchecked")
    r = export_int8(
        args.checkpoint,
        args.output,
        calibration_data=args.calibration_data,
        calibration_images=INT8_CALIBRATION_IMAGES if args.calibration_images is None else args.calibration_images,
        check_data=args.check_data,
        opset=args.opset,
        input_dtype=args.input_dtype,
    )
    meta, c = r.metadata, r.check
    skipped = len(r.calibration.paths) - r.calibration_images
    print(
        f"wrote {r.path} (onnx INT8, {len(meta['class_names'])} classes, input {meta['input']['dtype']} "
        f"{meta['input']['shape']})\ncalibrated on {r.calibration_images} images of {r.calibration.source}"
        + (f" ({skipped} unreadable, skipped)" if skipped else "")
        + f"\nagreement with the checkpoint: {c.agreement:.2%} of {c.cells} (image, label) cells over {c.images} "
        f"held-out images ({r.check_source}); max |p - checkpoint| {c.max_abs_diff:.4f}\nmetadata: {r.sidecar}"
    )
    return 0

"""``mlic explain``: Grad-CAM overlays showing where the model sees each label in an image."""

from __future__ import annotations

import argparse

from mlic.cli.flags import add_command, add_setting

HELP = """examples:
  mlic explain runs/shapes/checkpoints/best photo.png                  # one map per predicted label
  mlic explain runs/shapes/checkpoints/best photo.png --label star --label ring
  mlic explain runs/resnet/checkpoints/best photo.jpg --target-layer layer3 --output-dir maps/

Writes one PNG per requested label, or per predicted label (the top-1 label if none is predicted):
the image and its Grad-CAM heat map side by side, with the label's probability in the caption.
The target layer is the last convolutional feature map (seed_cnn: features.3; timm CNNs: the last
4-D module of forward_features); --target-layer names another module as in model.named_modules().
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "explain", "Grad-CAM maps: where the model sees each label", __doc__, HELP)
    p.add_argument("checkpoint", help="checkpoint folder (runs/<name>/checkpoints/best)")
    p.add_argument("image", help="image file")
    p.add_argument("--label", dest="labels", action="append", metavar="NAME", help="label to explain (repeatable)")
    p.add_argument("--output-dir", default="explanations", help="where the PNGs go (default: explanations/)")
    p.add_argument("--target-layer", help="module to take the maps from, e.g. features.2 or layer4")
    add_setting(p, "device", own_default=True)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlic.errors import UserError
    from mlic.insight.gradcam import explain_image

    try:
        paths = explain_image(
            args.checkpoint,
            args.image,
            labels=args.labels,
            output_dir=args.output_dir,
            target_layer=args.target_layer,
            device=args.device,
        )
    except ValueError as exc:  # unknown label or layer, or a model without a CNN feature map
        raise UserError(str(exc)) from None
    for path in paths:
        print(path)
    return 0

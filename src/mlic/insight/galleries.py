"""The pictures of ``mlic report`` that show images: per-label galleries of hits and errors, and Grad-CAM.

Images are re-read from the paths saved with the predictions, through the one decoder, and embedded as
small JPEG data URIs. Counts are capped so the page stays small whatever the dataset size.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from mlic.insight.page import gallery_html

THUMB_PX = 96
PER_KIND = 4  # thumbnails per label and kind
MAX_GALLERY_CLASSES = 60  # the most frequent labels, beyond this
GRADCAM_IMAGES = 6
GRADCAM_PX = 128
GRADCAM_MAX_LABELS = 6  # maps per image, highest probabilities first


class Thumbnails:
    """Path -> JPEG data URI (None if unreadable), each image decoded and encoded once."""

    def __init__(self, size: int = THUMB_PX, quality: int = 80) -> None:
        self.size, self.quality = size, quality
        self._cache: dict[str, str | None] = {}

    def get(self, path: str) -> str | None:
        if path not in self._cache:
            from mlic.data.images import ImageDecodeError, decode_image

            try:
                image = decode_image(path, draft_size=(self.size, self.size))  # a thumbnail needs no more
            except (ImageDecodeError, OSError):
                self._cache[path] = None
            else:
                image.thumbnail((self.size, self.size))  # never enlarges; the page scales small images up
                self._cache[path] = jpeg_data_uri(image, self.quality)
        return self._cache[path]


def jpeg_data_uri(image: Any, quality: int = 80) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def gallery_items(
    pred: dict[str, Any], predicted: np.ndarray, true: np.ndarray, known: np.ndarray, per_kind: int = PER_KIND
) -> list[dict[str, Any]]:
    """Per label (most frequent first, capped): the top ``per_kind`` confident hits, false positives and misses.

    Hits and false positives are ranked by probability, highest first; misses lowest first. ``predicted``,
    ``true`` and ``known`` are (N, C) booleans.
    """
    names, probs, paths = pred["class_names"], pred["probs"], pred["paths"]
    support = true.sum(0)
    order = sorted(range(len(names)), key=lambda c: (-support[c], str(names[c])))[:MAX_GALLERY_CLASSES]
    thumbs = Thumbnails()
    label_names = np.asarray(names, dtype=object)
    classes = []
    for c in sorted(order):
        p = probs[:, c]
        pools = {
            "correct": (known[:, c] & true[:, c] & predicted[:, c], -p),
            "fp": (known[:, c] & ~true[:, c] & predicted[:, c], -p),
            "fn": (known[:, c] & true[:, c] & ~predicted[:, c], p),
        }
        kinds = {}
        for kind, (pool, key) in pools.items():
            rows = np.flatnonzero(pool)
            rows = rows[np.argsort(key[rows], kind="stable")][:per_kind]
            kinds[kind] = [
                {
                    "src": thumbs.get(paths[i]),
                    "path": paths[i],
                    "prob": float(p[i]),
                    "true": list(label_names[true[i]]),
                    "pred": list(label_names[predicted[i]]),
                }
                for i in rows
            ]
        classes.append({"name": names[c], "kinds": kinds})
    return classes


def galleries_html(pred: dict[str, Any], predicted: np.ndarray, true: np.ndarray, known: np.ndarray) -> str:
    classes = gallery_items(pred, predicted, true, known)
    shown = len(classes)
    note = f"Up to {PER_KIND} images per label and kind; hover an image for its path."
    if shown < len(pred["class_names"]):
        note += f" Showing the {shown} most frequent of {len(pred['class_names'])} labels."
    return gallery_html(classes, note)


def gradcam_html(checkpoint: Path, pred: dict[str, Any], predicted: np.ndarray, device: str = "cpu") -> str:
    """Grad-CAM overlays for a sample of the evaluated images, one per predicted label (top-1 if none)."""
    from mlic.checkpoint import CheckpointError, load_checkpoint
    from mlic.data.images import ImageDecodeError
    from mlic.data.pixels import eval_loader
    from mlic.data.transforms import Preprocessing
    from mlic.insight.gradcam import gradcam

    try:
        model, meta = load_checkpoint(checkpoint, device=device)
    except (CheckpointError, ImportError, ValueError) as exc:
        reason = html.escape(str(exc))
        return f'<p class="missing">Grad-CAM needs the best checkpoint, which cannot be loaded: {reason}</p>'
    loader = eval_loader(Preprocessing.from_dict(meta["preprocessing"]))
    names, probs, paths = pred["class_names"], pred["probs"], pred["paths"]
    rows = []
    candidates = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), 4 * GRADCAM_IMAGES)).round().astype(int))
    for i in candidates:
        if len(rows) == GRADCAM_IMAGES:
            break
        try:
            image = loader.decode(paths[i])
        except (ImageDecodeError, OSError):
            continue
        chosen = [int(c) for c in np.flatnonzero(predicted[i])] or [int(np.argmax(probs[i]))]
        chosen = sorted(chosen, key=lambda c: -probs[i, c])[:GRADCAM_MAX_LABELS]
        try:
            maps = gradcam(model, loader.transform(image).unsqueeze(0), chosen)
        except (ValueError, RuntimeError) as exc:
            return f'<p class="missing">Grad-CAM does not apply to this model: {html.escape(str(exc))}</p>'
        rows.append(_cam_row(image, paths[i], maps, probs[i], pred["targets"][i], names))
    if not rows:
        return '<p class="missing">Grad-CAM: none of the evaluated images could be read from here.</p>'
    intro = (
        f"<p>{len(rows)} evaluated images, one map per predicted label (the top label when none is predicted). "
        "Red: the regions that raised the label's score most. &#10003; the label is in the ground truth.</p>"
    )
    return intro + "\n".join(rows)


def _cam_row(image, path: str, maps: dict[int, np.ndarray], probs, targets, names) -> str:
    from mlic.insight.plots import heatmap_overlay

    # Scaled to GRADCAM_PX on the long side, up or down, so small images get a smooth map rather than blocks.
    scale = GRADCAM_PX / max(image.size)
    shown = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    true = ", ".join(str(names[c]) for c in np.flatnonzero(targets > 0)) or "-"
    figures = [
        f'<figure title="{html.escape(path)}"><img src="{jpeg_data_uri(shown)}" alt="image">'
        f"<figcaption>image<br>true: {html.escape(true)}</figcaption></figure>"
    ]
    for c, cam in maps.items():
        mark = "&#10003;" if targets[c] > 0 else "&#10007;"
        mark += " (no evidence found)" if not cam.any() else ""
        name = html.escape(str(names[c]))
        figures.append(
            f'<figure><img src="{jpeg_data_uri(heatmap_overlay(shown, cam))}" alt="Grad-CAM {name}">'
            f"<figcaption>{name} p = {probs[c]:.2f} {mark}</figcaption></figure>"
        )
    return f'<div class="cam-row">{"".join(figures)}</div>'

"""``review.html`` of a label audit: the flagged cells to look at, most certain first, self-contained.

One row per flagged (image, label): a thumbnail, the label, the given and suggested values, the model's
probability of the label (from the fold whose model never saw the image's labels), the audit score, and
the label's Grad-CAM map from that same model. Sortable by any column; pictures are data URIs and the page
fetches nothing, like the report.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlic.insight.galleries import THUMB_PX, Thumbnails, jpeg_data_uri
from mlic.insight.page import page_html, section

MAX_REVIEW_ROWS = 200  # the most certain; audit.csv has them all


def write_review_page(path: Path, rows: Sequence[dict[str, Any]], summary: dict[str, Any], device: str = "cpu") -> Path:
    """Write the review page of ``rows`` (``mlic.engine.audit`` rows, with their fold's checkpoint in
    ``summary["runs"]``) to ``path``."""
    shown = list(rows[:MAX_REVIEW_ROWS])
    checkpoints = {run["fold"]: run["checkpoint"] for run in summary.get("runs", [])}
    cams = _gradcams(shown, checkpoints, device)
    thumbs = Thumbnails()
    body = [
        "<thead><tr><th>image</th><th>label</th><th>given</th><th>suggested</th><th>p(label)</th><th>score</th>"
        "<th>Grad-CAM</th><th>path</th></tr></thead><tbody>"
    ]
    for i, row in enumerate(shown):
        src = thumbs.get(row["image"])
        image = f'<img src="{src}" alt="image">' if src else "unreadable"
        cam = f'<img src="{cams[i]}" alt="Grad-CAM">' if cams.get(i) else "n/a"
        p = row["score"] if row["suggested"] == 1 else 1 - row["score"]
        body.append(
            f'<tr><td>{image}</td><td>{html.escape(str(row["label"]))}</td><td data-v="{row["given"]}">'
            f'{row["given"]}</td><td data-v="{row["suggested"]}">{row["suggested"]}</td>'
            f'<td data-v="{p!r}">{p:.3f}</td><td data-v="{row["score"]!r}">{row["score"]:.3f}</td><td>{cam}</td>'
            f"<td>{html.escape(str(row['image']))}</td></tr>"
        )
    body.append("</tbody>")
    table = f'<table id="audit-table" class="sortable">{"".join(body)}</table>'
    intro = (
        f"<p>{summary['flagged']} of {summary['cells']} known (image, label) cells flagged by {summary['method']} "
        f"on out-of-fold probabilities from {summary['folds']} folds; the {len(shown)} most certain are shown "
        f"(all in audit.csv). given 1 -> suggested 0: a likely spurious label; 0 -> 1: a likely missing one. "
        f"Unknown labels are never flagged. Thumbnails {THUMB_PX} px; click a header to sort.</p>"
    )
    leaks = summary.get("leaks")
    if leaks:
        intro += (
            f"<p>Leaks between splits: {leaks['exact']} exact and {leaks['near']} near copies ({leaks['file']}).</p>"
        )
    style = "<style>#audit-table img { width: 96px; height: 96px; object-fit: contain; }</style>"
    page = page_html(f"mlic audit: {summary['data']}", [style + section("audit", "Flagged labels", intro + table)],
                     nav=(("audit", "flagged labels"),))  # fmt: skip
    path.write_text(page, encoding="utf-8")
    return path


def _gradcams(rows: Sequence[dict[str, Any]], checkpoints: dict[int, str], device: str) -> dict[int, str]:
    """Row index -> Grad-CAM overlay (data URI) of the row's label, from its fold's model."""
    from mlic.checkpoint import CheckpointError, load_checkpoint
    from mlic.data.images import ImageDecodeError
    from mlic.data.pixels import eval_loader
    from mlic.data.transforms import Preprocessing
    from mlic.insight.gradcam import gradcam
    from mlic.insight.plots import heatmap_overlay

    out: dict[int, str] = {}
    models: dict[int, Any] = {}
    for i, row in enumerate(rows):
        fold = row.get("fold")
        if fold not in checkpoints:
            continue
        if fold not in models:  # each fold's model and its eval pipeline, once
            try:
                model, meta = load_checkpoint(checkpoints[fold], device=device)
                models[fold] = (model, meta, eval_loader(Preprocessing.from_dict(meta["preprocessing"])))
            except (CheckpointError, OSError):
                models[fold] = None
        if models[fold] is None:
            continue
        model, meta, loader = models[fold]
        if row["label"] not in meta["class_names"]:
            continue
        try:
            image = loader.decode(row["image"])
            cam = gradcam(model, loader.transform(image).unsqueeze(0), [meta["class_names"].index(row["label"])])
        except (ImageDecodeError, OSError, ValueError, RuntimeError):
            continue
        shown = image.resize((THUMB_PX, THUMB_PX))
        out[i] = jpeg_data_uri(heatmap_overlay(shown, next(iter(cam.values()))))
    return out

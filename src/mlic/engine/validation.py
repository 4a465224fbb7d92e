"""Validation during training: the weights in memory scored on the validation loader, gathered across ranks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mlic.evaluation.cells import Cells
from mlic.evaluation.metrics import metrics_from_cells
from mlic.evaluation.scoring import Forward, Predictions, score_loader
from mlic.runtime.distributed import DistInfo, gather_all, gather_rows


def validate(
    net: torch.nn.Module,
    loader,
    forward: Forward,
    loss_fn: torch.nn.Module,
    class_names: Sequence[str],
    info: DistInfo,
    *,
    max_steps: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """{"loss", "preds", "metrics"} of ``net`` on ``loader``; under DDP every rank scored its shard, and the rows
    are gathered in dataset order with the sampler's padding duplicates dropped, so they equal one process's."""
    preds = score_loader(net, loader, forward, loss_fn=loss_fn, max_steps=max_steps, progress=progress, desc="val")
    if info.enabled:
        preds = _gathered(preds, info)
    metrics = metrics_from_cells(preds.cells, 0.5, list(class_names))
    return {"loss": preds.loss, "preds": preds, "metrics": metrics}


def _gathered(preds: Predictions, info: DistInfo) -> Predictions:
    """Every rank's predictions in dataset order, each image once (the sampler pads with repeats)."""
    losses = np.full(len(preds.indices), preds.loss, np.float64)
    if preds.dense:
        idx, probs, targets, masks, losses = gather_rows(
            info, preds.indices, preds.probs, preds.targets, preds.masks, losses
        )
        return Predictions(probs, targets, masks, idx, float(losses.mean()) if len(losses) else 0.0, preds.bad_images)
    # Only known cells were kept: gather them by dataset index, drop the padding's repeats, renumber the rows.
    c = preds.cells
    image = preds.indices[c.rows]
    idx, losses = gather_rows(info, preds.indices, losses)
    image, cols, scores, targets = gather_all(info, image, c.cols, c.scores, c.targets)
    key = np.unique(image * c.num_classes + cols, return_index=True)[1]
    rows = np.searchsorted(idx, image[key])
    cells = Cells.from_coo(len(idx), c.num_classes, rows, cols[key], scores[key], targets[key])
    return Predictions(None, None, None, idx, float(losses.mean()) if len(losses) else 0.0, preds.bad_images, cells)


def pick_weights(scored: dict[str, dict | None]) -> str:
    """Raw or EMA weights, whichever had the higher validation mAP; raw on ties or without validation."""
    ema, raw = scored.get("ema"), scored["raw"]
    if ema is not None and (ema["metrics"]["mAP"] or -1) > (raw["metrics"]["mAP"] or -1):
        return "ema"
    return "raw"

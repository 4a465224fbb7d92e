"""Saved predictions: a run's probabilities, targets and masks on a labelled set, as one compressed ``.npz``.

Every plot of ``mlic report`` is drawn from these files and ``metrics.csv``, so a finished run can be
reported on (again) without retraining. The file holds only numeric and unicode arrays and is read with
``allow_pickle=False``: opening a predictions file never runs code.

Arrays in the file::

    version      ()     int, FORMAT_VERSION
    probs        (N, C) float32 sigmoid probabilities
    targets      (N, C) uint8 0/1
    masks        (N, C) uint8 1 = label known (0: unknown, skipped by every metric)
    paths        (N,)   unicode image paths, row order
    class_names  (C,)   unicode
    thresholds   (C,)   float64, the per-class thresholds the predictions were judged with
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mlic.errors import UserError

FORMAT_VERSION = 1
_KEYS = ("version", "probs", "targets", "masks", "paths", "class_names", "thresholds")


class PredictionsFileError(UserError, ValueError):
    """A predictions file that cannot be read; the message names it."""


def save_predictions(
    path: str | Path,
    *,
    probs: ArrayLike,
    targets: ArrayLike,
    masks: ArrayLike | None,
    paths: Sequence[str],
    class_names: Sequence[str],
    thresholds: float | ArrayLike | None,
) -> Path:
    """Write predictions to ``path`` (compressed npz, written atomically); ``masks=None``: all known.

    ``thresholds`` may be None (0.5 everywhere), a scalar, or one value per class.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (N, C), got shape {probs.shape}")
    n, c = probs.shape
    targets = np.asarray(targets)
    masks = np.ones((n, c), np.uint8) if masks is None else np.asarray(masks)
    for name, array in (("targets", targets), ("masks", masks)):
        if array.shape != (n, c):
            raise ValueError(f"{name} must have the shape of probs {(n, c)}, got {array.shape}")
    if len(paths) != n or len(class_names) != c:
        raise ValueError(f"got {len(paths)} paths and {len(class_names)} class names for probs of shape {(n, c)}")
    thr = np.full(c, 0.5 if thresholds is None else 0.0, np.float64)
    if thresholds is not None:
        thr[:] = np.asarray(thresholds, np.float64)  # broadcasts a scalar; a wrong length raises
    arrays = {
        "version": np.asarray(FORMAT_VERSION),
        "probs": probs,
        "targets": (targets > 0).astype(np.uint8),
        "masks": (masks > 0).astype(np.uint8),
        # str_ arrays are plain fixed-width unicode: no object dtype, so no pickle on either side.
        "paths": np.asarray([str(p) for p in paths], dtype=np.str_).reshape(n),
        "class_names": np.asarray([str(x) for x in class_names], dtype=np.str_).reshape(c),
        "thresholds": thr,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:  # a file object: numpy would append ".npz" to a name without it
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)
    return path


def load_predictions(path: str | Path) -> dict[str, Any]:
    """Read a file written by ``save_predictions``: numpy arrays, with paths and class_names as str lists."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            loaded = {k: data[k] for k in _KEYS if k in data.files}
    except (OSError, EOFError, ValueError) as exc:  # not a zip: numpy tries pickle, refused with a ValueError
        raise PredictionsFileError(f"{path}: not an mlic predictions file ({exc})") from None
    missing = [k for k in _KEYS if k not in loaded]
    if missing:
        raise PredictionsFileError(f"{path}: not an mlic predictions file (missing {', '.join(missing)})")
    if int(loaded["version"]) != FORMAT_VERSION:
        raise PredictionsFileError(f"{path}: predictions format version {int(loaded['version'])} is not supported")
    return {
        "probs": loaded["probs"].astype(np.float32),
        "targets": loaded["targets"].astype(np.float32),
        "masks": loaded["masks"].astype(np.float32),
        "paths": [str(p) for p in loaded["paths"]],
        "class_names": [str(x) for x in loaded["class_names"]],
        "thresholds": loaded["thresholds"].astype(np.float64),
    }


def save_scored(
    path: str | Path, preds: Any, records: Sequence[Any], class_names: Sequence[str], thresholds
) -> Path | None:
    """Save ``mlic.evaluation.scoring.Predictions`` made on a dataset of ``records``; None, and nothing written,
    for predictions too large to have been kept densely (the report then says it has none to draw).

    ``preds.indices`` maps rows back to records, since unreadable images are absent from the rows.
    """
    if not preds.dense:
        return None
    return save_predictions(
        path,
        probs=preds.probs,
        targets=preds.targets,
        masks=preds.masks,
        paths=preds.paths(records),
        class_names=list(class_names),
        thresholds=thresholds,
    )

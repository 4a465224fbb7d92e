"""The run folder: its name, metrics.csv, the per-epoch summary line, checkpoint metadata, plots."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from mlic.config import ThresholdConfig
from mlic.data.transforms import Preprocessing
from mlic.evaluation.thresholds import tune_thresholds

METRIC_COLUMNS = [
    "epoch", "train_loss", "val_loss", "val_mAP", "val_f1_micro", "val_f1_macro", "val_f1_samples",
    "val_hamming_loss", "val_exact_match", "val_mAP_ema", "lr", "seconds", "train_images_per_second",
]  # fmt: skip


def make_run_dir(output_dir: str, name: str | None, overwrite: bool) -> Path:
    name = name or datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(output_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"run folder {run_dir} already exists; choose another --name or pass --overwrite")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def checkpoint_meta(
    model: dict[str, Any],
    class_names,
    pre: Preprocessing,
    epoch: int,
    val: dict | None,
    tcfg: ThresholdConfig,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Checkpoint metadata: ``model`` is {"name", "kwargs"}, ``config`` the run's config as a dict; thresholds are
    tuned on this epoch's validation predictions (None: 0.5 everywhere)."""
    thresholds, info = None, None
    if val is not None and len(val["preds"].probs):
        p = val["preds"]
        tuned = tune_thresholds(
            p.probs, p.targets, p.masks, method=tcfg.method, min_positives=tcfg.min_positives, fixed=tcfg.fixed
        )
        thresholds, info = [float(x) for x in tuned.thresholds], tuned.to_dict()
    return {
        "model": model,
        "class_names": list(class_names),
        "thresholds": thresholds,
        "threshold_info": info,
        "preprocessing": pre.to_dict(),
        "epoch": epoch,
        "metrics": _scalar_metrics(val["metrics"]) if val else {},
        "config": config,
        "created": datetime.now().isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
    }


def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.csv from the history (small; rewriting keeps it equal to the state after a resume)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in METRIC_COLUMNS})
    tmp.replace(path)


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) or v is None}


def summary_line(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"train_loss {row['train_loss']:.4f}"]
    for key in ("val_loss", "val_mAP", "val_f1_micro", "val_f1_macro", "val_exact_match"):
        if row.get(key) is not None:
            parts.append(f"{key} {row[key]:.4f}")
    parts.append(f"{row['train_images_per_second']:.1f} img/s")
    parts.append(f"{row['seconds']:.1f}s")
    return " | ".join(parts)


def plot_history_png(history: list[dict[str, Any]], path: Path) -> None:
    from mlic.insight.plots import plot_history

    plot_history(history, path)

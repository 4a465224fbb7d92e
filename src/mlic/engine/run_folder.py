"""The run folder: its name, metrics.csv, the per-epoch summary line, checkpoint metadata, plots, test results,
the report."""

from __future__ import annotations

import csv
import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from mlic.config import ThresholdConfig
from mlic.data.transforms import Preprocessing
from mlic.evaluation.calibration import calibrate_cells, fit_calibration
from mlic.evaluation.thresholds import tune_on_cells

METRIC_COLUMNS = [
    "epoch", "train_loss", "val_loss", "val_mAP", "val_f1_micro", "val_f1_macro", "val_f1_samples",
    "val_hamming_loss", "val_exact_match", "val_mAP_ema", "lr", "seconds", "train_images_per_second",
]  # fmt: skip


def make_run_dir(output_dir: str, name: str | None, overwrite: bool) -> Path:
    """An empty run folder ``output_dir/name`` (default name: a timestamp).

    A folder that already holds a run (a complete checkpoint) is refused unless ``overwrite``, and then every
    artifact of that run is removed first, so nothing of it (its test predictions, its report) passes for the
    new run's. A folder with no checkpoint (a run that failed before its first epoch ended) is no run: it is
    emptied and reused, so a retry under the same name just works.
    """
    name = name or datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(output_dir) / name
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if holds_a_run(run_dir) and not overwrite:
            raise FileExistsError(f"run folder {run_dir} already exists; choose another --name or pass --overwrite")
        for entry in run_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def holds_a_run(folder: Path) -> bool:
    """Whether ``folder`` has a complete checkpoint, i.e. a run worth keeping."""
    return any((folder / "checkpoints" / kind / "meta.json").is_file() for kind in ("best", "last"))


def checkpoint_meta(
    model: dict[str, Any],
    class_names,
    pre: Preprocessing,
    epoch: int,
    val: dict | None,
    tcfg: ThresholdConfig,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Checkpoint metadata: ``model`` is {"name", "kwargs"}, ``config`` the run's config as a dict. The per-class
    calibration is fitted on this epoch's validation predictions and the thresholds tuned on the calibrated
    ones (no validation: neither, and 0.5 everywhere)."""
    thresholds, info, calibration, calibration_info = None, None, None, None
    if val is not None and len(val["preds"].indices):
        fit, calibration_info = fit_calibration(val["preds"].cells, tcfg.calibration)
        calibration = fit.to_dict() if fit.fitted.any() else None
        tuned = tune_on_cells(calibrate_cells(val["preds"].cells, fit), method=tcfg.method, objective=tcfg.objective,
                              min_positives=tcfg.min_positives, shrinkage=tcfg.shrinkage, fixed=tcfg.fixed,
                              calibrated=tcfg.calibration != "none")  # fmt: skip
        thresholds, info = [float(x) for x in tuned.thresholds], tuned.to_dict()
    return {
        "model": model,
        "class_names": list(class_names),
        "thresholds": thresholds,
        "threshold_info": info,
        "calibration": calibration,
        "calibration_info": calibration_info,
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


def write_test_results(run_dir: Path, checkpoint: Path, records, batch, data_name: str) -> dict[str, Any]:
    """Score the test ``records`` with ``checkpoint`` (``batch``: ``BatchOptions``); write test_metrics.json and
    predictions/test.npz; return the metrics."""
    from mlic.evaluation.evaluate import evaluation_report
    from mlic.evaluation.prediction_files import save_scored
    from mlic.evaluation.scoring import score_checkpoint

    scored = score_checkpoint(checkpoint, records, batch)
    report = evaluation_report(scored, data_name=data_name)
    thresholds = scored.meta.get("thresholds")
    save_scored(run_dir / "predictions" / "test.npz", scored.preds, scored.records, scored.class_names, thresholds)
    (run_dir / "test_metrics.json").write_text(json.dumps(report, indent=2))
    return report


def write_report(run_dir: Path) -> None:
    """report.html of a finished run; a failure is a warning, never the loss of the run it reports on."""
    from mlic.insight.report import build_report
    from mlic.runtime.console import log

    try:
        log(f"report: {build_report(run_dir)}")
    except Exception as exc:  # a report must never cost the user a finished training run
        log(f"warning: could not write the report: {type(exc).__name__}: {exc}")


def report_bad_images(bad: list[tuple[str, str]], limit: int = 5) -> None:
    """The images a training span skipped as unreadable (the first ``limit``, then a count)."""
    from mlic.runtime.console import log

    for path, reason in bad[:limit]:
        log(f"warning: skipped unreadable image {path}: {reason}")
    if len(bad) > limit:
        log(f"warning: ... and {len(bad) - limit} more unreadable images skipped")

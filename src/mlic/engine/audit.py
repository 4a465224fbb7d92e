"""``mlic data audit``: out-of-fold probabilities from K trained folds, then the labels they contradict.

The training images are cut into K folds stratified on every label (``mlic.data.splits.fold_assignment``).
For each fold a model is trained with the given recipe on the other K - 1 (holding out its own validation
share of them, as ``mlic train`` does, and within ``--max-minutes`` per fold), and its best checkpoint
scores the fold: every image is scored by a model that never saw its labels. Confident learning then ranks
the cells whose given label those probabilities contradict (``mlic.evaluation.confident``). A cell marked
unknown is never scored, so never flagged; a class a fold's model does not know is not audited in it.

Writes, in the audit folder: ``audit.csv`` (image, label, given, suggested, score; most certain first),
``summary.json`` (counts per class, the folds' runs, leaks), ``out_of_fold.npz`` (every known cell's
out-of-fold probability, for one's own analysis), ``review.html`` (the flagged cells with a
thumbnail, the probability and the label's Grad-CAM from the fold's model; sortable, self-contained) and,
with --val/--test, ``leaks.csv`` (images found in two splits). The folds' run folders stay in ``folds/``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlic.config import TrainConfig
from mlic.data.convert import write_records
from mlic.data.fixes import AUDIT_COLUMNS
from mlic.data.labels import build_vocabulary
from mlic.data.records import DataError
from mlic.data.scan import drop_bad_images
from mlic.data.sources import load_records
from mlic.data.splits import fold_assignment
from mlic.data.table import as_table
from mlic.engine.fit import fit
from mlic.evaluation.cells import Cells
from mlic.evaluation.confident import find_label_issues
from mlic.evaluation.scoring import BatchOptions, score_checkpoint
from mlic.runtime.console import log

AUDIT_FILE, SUMMARY_FILE, REVIEW_FILE, LEAKS_FILE = "audit.csv", "summary.json", "review.html", "leaks.csv"
OOF_FILE = "out_of_fold.npz"  # every known cell's out-of-fold probability: rows, cols, probs, given


@dataclass
class Audit:
    folder: Path
    rows: list[dict[str, Any]]  # the flagged cells, most certain first (AUDIT_COLUMNS + fold)
    summary: dict[str, Any]


def audit_labels(cfg: TrainConfig, out: str | Path, *, folds: int = 5, overwrite: bool = False) -> Audit:
    """Audit the labels of ``cfg.data.train`` with ``folds`` models trained by the recipe ``cfg``."""
    folder = Path(out)
    if (folder / AUDIT_FILE).exists() and not overwrite:
        raise FileExistsError(f"{folder / AUDIT_FILE} already exists (pass --overwrite to replace the audit)")
    d = cfg.data
    records = as_table(drop_bad_images(load_records(d.train, **_reading(d)), skip=d.skip_bad_images,
                                       max_pixels=d.max_image_pixels, progress=cfg.progress))  # fmt: skip
    if len(records) < 2 * folds:  # each fold's model trains on the others and holds out its own validation
        raise DataError(f"{d.train}: {len(records)} images are too few for {folds} folds (need at least "
                        f"{2 * folds}); pass a smaller --folds")  # fmt: skip
    class_names = build_vocabulary(records)
    table = records.with_classes(class_names)
    assign = fold_assignment(table, folds, seed=cfg.seed)
    cells, fold_of_image, runs = _out_of_fold(cfg, table, assign, folder)
    issues = find_label_issues(cells)
    rows = _rows(table, class_names, cells, issues, fold_of_image)
    summary = {"data": str(d.train), "folds": folds, "images": len(table), "cells": int(len(cells.rows)),
               "flagged": len(rows), "per_class": issues.per_class(class_names), "runs": runs,
               "method": "confident learning (Northcutt et al. 2021), per class, prune by noise rate"}  # fmt: skip
    summary["leaks"] = _leaks(cfg, records, folder)
    _write_csv(folder / AUDIT_FILE, rows)
    np.savez_compressed(folder / OOF_FILE, rows=cells.rows, cols=cells.cols, probs=cells.scores, given=cells.targets,
                        paths=np.array([str(p) for p in table.paths]), class_names=np.array(class_names))  # fmt: skip
    (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    return Audit(folder, rows, summary)


def _reading(d) -> dict[str, Any]:
    """How the data config says its label files are read (images are checked by the scan, not here)."""
    return dict(fmt=d.format, image_root=d.image_root, label_delimiter=d.label_delimiter, check_files=False)


def _out_of_fold(cfg: TrainConfig, table, assign: np.ndarray, folder: Path):
    """(out-of-fold cells over the whole table, fold of each image, the folds' checkpoints)."""
    c = table.labels.num_classes
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("rows", "cols", "scores", "targets")}
    runs = []
    batch = BatchOptions(cfg.device, cfg.optim.batch_size, cfg.data.num_workers, cfg.progress,
                         cfg.data.max_image_pixels)  # fmt: skip
    for k in range(int(assign.max()) + 1):
        held = np.flatnonzero(assign == k)
        train_file = write_records(table.take(np.flatnonzero(assign != k)), folder / "folds" / f"fold{k + 1}.jsonl",
                                   "jsonl", overwrite=True)  # fmt: skip
        log(f"audit: fold {k + 1}/{int(assign.max()) + 1}: training on {len(table) - len(held)} images, "
            f"scoring {len(held)}")  # fmt: skip
        fold_cfg = _fold_config(cfg, train_file, folder / "folds", f"fold{k + 1}")
        result = fit(fold_cfg, overwrite=True)
        scored = score_checkpoint(result.best_checkpoint, table.take(held), batch, desc=f"fold {k + 1}")
        model_classes = {name: i for i, name in enumerate(scored.class_names)}
        col_map = np.array([model_classes.get(n, -1) for n in table.class_names])
        _collect(parts, scored.preds.cells, held, col_map)
        runs.append({"fold": k + 1, "images": int(len(held)), "checkpoint": str(result.best_checkpoint)})
    arrays = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    cells = Cells.from_coo(len(table), c, arrays["rows"].astype(np.int64), arrays["cols"].astype(np.int64),
                           arrays["scores"], arrays["targets"].astype(bool))  # fmt: skip
    return cells, assign, runs


def _collect(parts, fold_cells: Cells, held: np.ndarray, col_map: np.ndarray) -> None:
    """Add a fold's known cells, in the whole table's numbering, for the classes its model knows."""
    # the fold's model scored the held-out images over its own classes; map them back, keep known cells
    inverse = np.full(fold_cells.num_classes, -1)
    for j_table, j_model in enumerate(col_map):
        if j_model >= 0:
            inverse[j_model] = j_table
    cols = inverse[fold_cells.cols]
    keep = cols >= 0
    parts["rows"].append(held[fold_cells.rows[keep]])
    parts["cols"].append(cols[keep])
    parts["scores"].append(fold_cells.scores[keep])
    parts["targets"].append(fold_cells.targets[keep])


def _fold_config(cfg: TrainConfig, train_file: Path, runs: Path, name: str) -> TrainConfig:
    """The recipe, trained on one fold's training part: its own held-out validation, no test, no report."""
    data = dataclasses.replace(cfg.data, train=str(train_file), val=None, test=None, format="jsonl",
                               image_root=None)  # fmt: skip
    return dataclasses.replace(cfg, data=data, output_dir=str(runs), name=name, report=False)


def _rows(table, class_names, cells: Cells, issues, fold_of_image: np.ndarray) -> list[dict[str, Any]]:
    images, classes = cells.rows[issues.flagged], cells.cols[issues.flagged]
    known = table.labels.known(images, classes)  # flagged cells are known by construction; checked again here
    if not known.all():
        k = int(np.argmin(known))
        raise AssertionError(f"the audit flagged an unknown cell ({table.paths[images[k]]}, {class_names[classes[k]]})")
    rows = []
    for cell, i, j, score in zip(issues.flagged.tolist(), images.tolist(), classes.tolist(), issues.score.tolist(),
                                 strict=True):  # fmt: skip
        given = bool(cells.targets[cell])
        rows.append({"image": table.paths[i], "label": class_names[j], "given": int(given),
                     "suggested": int(not given), "score": round(float(score), 6),
                     "fold": int(fold_of_image[i]) + 1, "row": i, "col": j})  # fmt: skip
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=AUDIT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _leaks(cfg: TrainConfig, train, folder: Path) -> dict[str, Any] | None:
    """Images in both train and val/test (exact or near copies), when --val or --test name those splits."""
    d = cfg.data
    if not d.val and not d.test:
        return None
    from mlic.data.leaks import find_leaks

    held_out = {name: path for name, path in (("val", d.val), ("test", d.test)) if path}
    splits = {"train": train} | {name: load_records(path, **_reading(d)) for name, path in held_out.items()}
    leaks = find_leaks(splits, max_pixels=d.max_image_pixels, progress=cfg.progress)
    with open(folder / LEAKS_FILE, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["kind", "split_a", "image_a", "split_b", "image_b", "distance"])
        writer.writerows([(x.kind, x.split_a, x.path_a, x.split_b, x.path_b, x.distance) for x in leaks])
    return {"exact": sum(x.kind == "exact" for x in leaks), "near": sum(x.kind == "near" for x in leaks),
            "file": LEAKS_FILE}  # fmt: skip

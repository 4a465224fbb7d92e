"""Evaluate a checkpoint on a labelled dataset: metrics overall and per class, as data and as tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mlic.checkpoint import load_checkpoint
from mlic.data.dataset import MultiLabelDataset
from mlic.data.loader import build_loader, load_records
from mlic.data.records import Record
from mlic.data.transforms import Preprocessing, build_eval_pipeline
from mlic.engine.loop import evaluate
from mlic.engine.runtime import select_device
from mlic.inference import resolve_thresholds
from mlic.metrics import compute_metrics
from mlic.models.fold import inference_form

OVERALL_KEYS = [
    "mAP", "roc_auc_macro", "f1_micro", "f1_macro", "f1_samples", "precision_micro", "precision_macro",
    "precision_samples", "recall_micro", "recall_macro", "recall_samples", "hamming_loss", "exact_match",
]  # fmt: skip


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path | Sequence[Record],
    *,
    fmt: str = "auto",
    image_root: str | Path | None = None,
    label_delimiter: str | None = None,
    threshold: float | None = None,
    batch_size: int = 32,
    device: str | torch.device = "auto",
    num_workers: int = -1,
    progress: bool = True,
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on ``data`` (a label file/folder, or records) as a JSON-ready dict."""
    dev = device if isinstance(device, torch.device) else select_device(device)
    model, meta = load_checkpoint(checkpoint, device=dev)
    model, channels_last = inference_form(model, dev)
    records = (
        data
        if not isinstance(data, str | Path)
        else load_records(data, fmt=fmt, image_root=image_root, label_delimiter=label_delimiter)
    )
    class_names = list(meta["class_names"])
    known = set(class_names)
    unseen = sorted({name for r in records for name in r.positives} - known)
    pre = Preprocessing.from_dict(meta["preprocessing"])
    dataset = MultiLabelDataset(records, class_names, build_eval_pipeline(pre))
    loader = build_loader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    preds = evaluate(model, loader, dev, progress=progress, desc="evaluate", pre=pre, channels_last=channels_last)

    method = (meta.get("threshold_info") or {}).get("method")
    thresholds, source = resolve_thresholds(meta.get("thresholds"), len(class_names), threshold, method)
    metrics = compute_metrics(preds.probs, preds.targets, preds.masks, thresholds, class_names)
    # Always also at 0.5, so the effect of tuned thresholds is visible side by side.
    at_half = compute_metrics(preds.probs, preds.targets, preds.masks, 0.5, class_names)
    return {
        "checkpoint": str(checkpoint),
        "data": str(data) if isinstance(data, str | Path) else f"{len(records)} records",
        "thresholds": source,
        "labels_not_in_model": unseen,
        "unreadable_images": [{"path": p, "reason": r} for p, r in preds.bad_images],
        **metrics,
        "at_threshold_0.5": {k: at_half[k] for k in OVERALL_KEYS},
    } | ({"_predictions": preds} if keep_predictions else {})


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_report(report: dict[str, Any]) -> str:
    """Overall table, then the per-class table (support, AP, precision, recall, F1, threshold)."""
    lines = [
        f"images: {report['num_images']}   classes: {report['num_classes']}   thresholds: {report['thresholds']}",
        "",
    ]
    half = report.get("at_threshold_0.5", {})
    lines += [f"{'metric':<20}{'value':>10}{'at 0.5':>10}", "-" * 40]
    lines += [f"{key:<20}{_fmt(report.get(key)):>10}{_fmt(half.get(key)):>10}" for key in OVERALL_KEYS]
    width = max([5] + [len(str(c["name"])) for c in report["per_class"]]) + 2
    lines += ["", f"{'class':<{width}}{'support':>9}{'AP':>9}{'prec':>9}{'recall':>9}{'F1':>9}{'thresh':>9}"]
    lines.append("-" * (width + 54))
    for c in report["per_class"]:
        lines.append(
            f"{c['name']!s:<{width}}{c['support']:>9}{_fmt(c['ap']):>9}{_fmt(c['precision']):>9}"
            f"{_fmt(c['recall']):>9}{_fmt(c['f1']):>9}{_fmt(c['threshold']):>9}"
        )
    if report.get("excluded_from_map"):
        lines.append(
            f"\nexcluded from mAP (no positives in this data): {', '.join(map(str, report['excluded_from_map']))}"
        )
    if report.get("labels_not_in_model"):
        lines.append(
            f"labels in the data the model does not know (ignored): {', '.join(report['labels_not_in_model'])}"
        )
    if report.get("unreadable_images"):
        lines.append(f"unreadable images skipped: {len(report['unreadable_images'])}")
    return "\n".join(lines)

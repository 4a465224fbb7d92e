"""Evaluate a checkpoint on a labelled dataset: metrics overall and per class, as data and as tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlic.data.records import Record
from mlic.data.sources import load_records
from mlic.evaluation.metrics import metrics_from_cells
from mlic.evaluation.scoring import BatchOptions, Scored, score_checkpoint
from mlic.evaluation.thresholds import resolve_thresholds

OVERALL_KEYS = [
    "mAP", "roc_auc_macro", "f1_micro", "f1_macro", "f1_samples", "precision_micro", "precision_macro",
    "precision_samples", "recall_micro", "recall_macro", "recall_samples", "hamming_loss", "exact_match",
]  # fmt: skip

UNREADABLE_LISTED = 20  # unreadable images named in the printed report; the JSON has every one


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path | Sequence[Record],
    *,
    fmt: str = "auto",
    image_root: str | Path | None = None,
    label_delimiter: str | None = None,
    threshold: float | None = None,
    batch: BatchOptions | None = None,
) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on ``data`` (a label file/folder read with ``fmt``, ``image_root`` and
    ``label_delimiter``, or records) as a JSON-ready dict."""
    if isinstance(data, str | Path):
        records = load_records(data, fmt=fmt, image_root=image_root, label_delimiter=label_delimiter)
        name = str(data)
    else:
        records, name = list(data), f"{len(data)} records"
    return evaluation_report(score_checkpoint(checkpoint, records, batch), threshold, name)


def evaluation_report(scored: Scored, threshold: float | None = None, data_name: str = "") -> dict[str, Any]:
    """The metrics of scored predictions at the checkpoint's thresholds (or ``threshold``), and at 0.5."""
    meta, preds, class_names = scored.meta, scored.preds, scored.class_names
    unseen = sorted({name for r in scored.records for name in r.positives} - set(class_names))
    method = (meta.get("threshold_info") or {}).get("method")
    thresholds, source = resolve_thresholds(meta.get("thresholds"), len(class_names), threshold, method)
    metrics = metrics_from_cells(preds.cells, thresholds, class_names)
    # Always also at 0.5, so the effect of tuned thresholds is visible side by side.
    at_half = metrics_from_cells(preds.cells, 0.5, class_names)
    return {
        "checkpoint": str(scored.checkpoint),
        "data": data_name or f"{len(scored.records)} records",
        "thresholds": source,
        "labels_not_in_model": unseen,
        "unreadable_images": [{"path": p, "reason": r} for p, r in preds.bad_images],
        **metrics,
        "at_threshold_0.5": {k: at_half[k] for k in OVERALL_KEYS},
    }


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
    if bad := report.get("unreadable_images"):
        lines.append(f"unreadable images skipped: {len(bad)}")
        lines += [f"  {item['path']}: {item['reason']}" for item in bad[:UNREADABLE_LISTED]]
        if len(bad) > UNREADABLE_LISTED:
            lines.append(f"  ... and {len(bad) - UNREADABLE_LISTED} more (all of them in the JSON report)")
    return "\n".join(lines)

"""Evaluate a checkpoint on a labelled dataset: metrics overall and per class, as data and as tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlic.data.records import Record
from mlic.data.sources import load_records
from mlic.evaluation.bootstrap import WIDE, Resampling, bootstrap_intervals
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
    bootstrap: Resampling | None = None,
) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on ``data`` (a label file/folder read with ``fmt``, ``image_root`` and
    ``label_delimiter``, or records) as a JSON-ready dict; ``bootstrap``: how to draw 95% intervals (none
    by default)."""
    if isinstance(data, str | Path):
        records = load_records(data, fmt=fmt, image_root=image_root, label_delimiter=label_delimiter)
        name = str(data)
    else:
        records, name = list(data), f"{len(data)} records"
    return evaluation_report(score_checkpoint(checkpoint, records, batch), threshold, name, bootstrap=bootstrap)


def evaluation_report(
    scored: Scored, threshold: float | None = None, data_name: str = "", *, bootstrap: Resampling | None = None
) -> dict[str, Any]:
    """The metrics of scored predictions at the checkpoint's thresholds (or ``threshold``), and at 0.5; with
    ``bootstrap``, their 95% intervals."""
    meta, preds, class_names = scored.meta, scored.preds, scored.class_names
    unseen = sorted({name for r in scored.records for name in r.positives} - set(class_names))
    method = (meta.get("threshold_info") or {}).get("method")
    thresholds, source = resolve_thresholds(meta.get("thresholds"), len(class_names), threshold, method)
    metrics = metrics_from_cells(preds.cells, thresholds, class_names)
    # Always also at 0.5, so the effect of tuned thresholds is visible side by side.
    at_half = metrics_from_cells(preds.cells, 0.5, class_names)
    report = {
        "checkpoint": str(scored.checkpoint),
        "data": data_name or f"{len(scored.records)} records",
        "thresholds": source,
        "labels_not_in_model": unseen,
        "unreadable_images": [{"path": p, "reason": r} for p, r in preds.bad_images],
        **metrics,
        "at_threshold_0.5": {k: at_half[k] for k in OVERALL_KEYS},
    }
    if bootstrap is not None and bootstrap.replicates:
        report["intervals"] = bootstrap_intervals(preds.cells, thresholds, replicates=bootstrap.replicates,
                                                  seed=bootstrap.seed, class_names=class_names)  # fmt: skip
    return report


def _interval(bounds: list[float] | None) -> str:
    return "n/a" if bounds is None else f"[{bounds[0]:.3f}, {bounds[1]:.3f}]"


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_report(report: dict[str, Any]) -> str:
    """Overall table, then the per-class table (support, AP, precision, recall, F1, threshold); with
    bootstrap intervals, their 95% bounds beside each value and a * on classes with a wide interval."""
    ci = report.get("intervals")
    lines = [
        f"images: {report['num_images']}   classes: {report['num_classes']}   thresholds: {report['thresholds']}",
        "",
    ]
    half = report.get("at_threshold_0.5", {})
    head = f"{'metric':<20}{'value':>10}{'at 0.5':>10}" + (f"{'95% interval':>22}" if ci else "")
    lines += [head, "-" * len(head)]
    for key in OVERALL_KEYS:
        row = f"{key:<20}{_fmt(report.get(key)):>10}{_fmt(half.get(key)):>10}"
        lines.append(row + (f"{_interval(ci['overall'].get(key)):>22}" if ci else ""))
    width = max([5] + [len(str(c["name"])) for c in report["per_class"]]) + 2
    head = f"{'class':<{width}}{'support':>9}{'AP':>9}{'prec':>9}{'recall':>9}{'F1':>9}{'thresh':>9}"
    head += f"{'AP 95%':>18}{'F1 95%':>18}" if ci else ""
    lines += ["", head, "-" * len(head)]
    for i, c in enumerate(report["per_class"]):
        row = (f"{c['name']!s:<{width}}{c['support']:>9}{_fmt(c['ap']):>9}{_fmt(c['precision']):>9}"
               f"{_fmt(c['recall']):>9}{_fmt(c['f1']):>9}{_fmt(c['threshold']):>9}")  # fmt: skip
        if ci:
            k = ci["per_class"][i]
            row += f"{_interval(k['ap']):>18}{_interval(k['f1']):>18}" + (" *" if k["wide"] else "")
        lines.append(row)
    if ci:
        lines.append(f"\n95% percentile intervals from {ci['replicates']} bootstrap resamples of the images "
                     f"(seed {ci['seed']}); * = an AP or F1 interval wider than {WIDE}: too few examples")  # fmt: skip
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

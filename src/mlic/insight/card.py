"""``mlic card``: a model card (``MODEL_CARD.md``) in the Hugging Face convention, from a checkpoint and labelled data.

YAML front matter first (``library_name``, ``tags``, ``pipeline_tag`` and a ``model-index`` whose results carry
the metrics measured here, as the Hub reads them), then: the model and how it was trained, the data it was
measured on (images, labels per class, the share of unknown labels), every class's metrics with their 95%
bootstrap intervals, the thresholds and how they were chosen, the calibration, the label audit's estimates
when one ran (``mlic data audit``), and intended use and limits. Everything is measured or read from the
checkpoint; nothing is written by hand, so the card can be regenerated after every run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from mlic.checkpoint import checkpoint_folder
from mlic.data.records import Record
from mlic.data.table import as_table
from mlic.evaluation.bootstrap import WIDE, Resampling
from mlic.evaluation.evaluate import evaluation_report
from mlic.evaluation.scoring import BatchOptions, score_checkpoint

CARD_FILE = "MODEL_CARD.md"
FRONT_METRICS = (("mAP", "mAP", "mean average precision"), ("f1", "f1_micro", "micro-F1"),
                 ("f1", "f1_macro", "macro-F1"), ("precision", "precision_micro", "micro-precision"),
                 ("recall", "recall_micro", "micro-recall"), ("hamming_loss", "hamming_loss", "Hamming loss"),
                 ("exact_match", "exact_match", "exact match (subset accuracy)"))  # fmt: skip


def write_model_card(
    checkpoint: str | Path,
    records: Sequence[Record],
    data_name: str,
    out: str | Path | None = None,
    *,
    batch: BatchOptions | None = None,
    bootstrap: Resampling | None = None,
    audit: str | Path | None = None,
) -> Path:
    """Measure ``checkpoint`` on ``records`` and write the card (default: the run folder's MODEL_CARD.md)."""
    folder = checkpoint_folder(checkpoint)
    scored = score_checkpoint(folder, records, batch or BatchOptions(device="cpu", progress=False))
    report = evaluation_report(scored, data_name=data_name, bootstrap=bootstrap or Resampling(1000, 0))  # 0: none
    meta = scored.meta
    audit_summary = json.loads(Path(audit).read_text()) if audit else None
    run_dir = folder.parent.parent
    name = run_dir.name if (run_dir / "config.yaml").is_file() else folder.name
    unknown = unknown_shares(scored.records, scored.class_names)
    text = _front_matter(name, report, data_name) + _body(name, meta, report, scored.records, unknown, audit_summary)
    path = Path(out) if out is not None else run_dir / CARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _front_matter(name: str, report: dict[str, Any], data_name: str) -> str:
    metrics = [{"type": kind, "name": label, "value": round(float(report[key]), 6)}
               for kind, key, label in FRONT_METRICS if report.get(key) is not None]  # fmt: skip
    front = {
        "library_name": "mlic",
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "multi-label-classification", "mlic"],
        "model-index": [{
            "name": name,
            "results": [{
                "task": {"type": "image-classification", "name": "Multi-label image classification"},
                "dataset": {"name": Path(data_name).stem or data_name, "type": data_name},
                "metrics": metrics,
            }],
        }],
    }  # fmt: skip
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n"


def _body(name: str, meta: dict, report: dict, records, unknown: dict[int, float], audit: dict | None) -> str:
    parts = [f"# {name}\n", _model_part(meta), _data_part(report, records), _classes_part(report, unknown),
             _thresholds_part(meta), _calibration_part(meta), _audit_part(audit), _use_part(report)]  # fmt: skip
    return "\n".join(p for p in parts if p)


def _model_part(meta: dict) -> str:
    cfg = meta.get("config") or {}
    optim, data = cfg.get("optim", {}), cfg.get("data", {})
    pre = meta.get("preprocessing", {})
    lines = ["## Model", "",
             f"- architecture: `{meta['model']['name']}` {json.dumps(meta['model'].get('kwargs', {}))}",
             f"- input: {pre.get('image_size')} x {pre.get('image_size')} RGB, normalised with mean {pre.get('mean')} "
             f"and std {pre.get('std')}; output: one sigmoid probability per class ({len(meta['class_names'])})",
             f"- trained on `{data.get('train')}` (validation `{data.get('val')}`), {optim.get('epochs')} epochs of "
             f"{optim.get('optimizer')} at lr {optim.get('lr')}, batch {optim.get('batch_size')}, loss "
             f"{optim.get('loss')}, augmentation {data.get('augment')}; best epoch {meta.get('epoch')}",
             f"- initial weights: {_initial_weights(meta.get('initial_weights'))}",
             f"- created {meta.get('created')} with torch {meta.get('torch_version')}", ""]  # fmt: skip
    return "\n".join(lines)


def _initial_weights(source: dict | None) -> str:
    """Where training started: random, a hub repo at a revision, or a local file, with the file's SHA-256."""
    if not source:
        return "random (trained from scratch)"
    if source.get("kind") == "hub":
        return (f"hub `{source.get('repo')}` revision `{source.get('revision')}`, `{source.get('file')}` "
                f"(sha256 `{source.get('sha256')}`)")  # fmt: skip
    return f"local file `{source.get('file')}` (sha256 `{source.get('sha256')}`)"


def _data_part(report: dict, records) -> str:
    labels = as_table(records, report_class_names(report)).labels
    n, c = len(labels), labels.num_classes
    known = labels.known_counts()
    unknown_rate = 1 - known.sum() / max(n * c, 1)
    lines = ["## Evaluation data", "",
             f"- `{report['data']}`: {report['num_images']} images scored ({n} listed), {c} classes",
             f"- labels known: {known.sum():,} of {n * c:,} cells; unknown share {unknown_rate:.1%} (unknown labels "
             "are never counted as errors)",
             f"- unreadable images skipped: {len(report.get('unreadable_images', []))}", ""]  # fmt: skip
    if report.get("labels_not_in_model"):
        lines.insert(-1, f"- labels in the data the model does not know: {', '.join(report['labels_not_in_model'])}")
    return "\n".join(lines)


def report_class_names(report: dict) -> list[str]:
    return [str(c["name"]) for c in report["per_class"]]


def _ci(bounds) -> str:
    return "n/a" if bounds is None else f"{bounds[0]:.3f} to {bounds[1]:.3f}"


def _classes_part(report: dict, unknown: dict[int, float]) -> str:
    ci = report.get("intervals")
    overall = ["## Results", "", "| metric | value | 95% interval |", "|---|---|---|"]
    for _, key, label in FRONT_METRICS:
        value = report.get(key)
        bounds = (ci or {}).get("overall", {}).get(key)
        overall.append(f"| {label} | {'n/a' if value is None else f'{value:.4f}'} | {_ci(bounds)} |")
    rows = ["", "| class | support | unknown | AP (95%) | precision | recall | F1 (95%) | threshold |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for i, c in enumerate(report["per_class"]):
        k = ci["per_class"][i] if ci else {"ap": None, "f1": None, "wide": False}
        flag = " (wide)" if k["wide"] else ""
        ap = "n/a" if c["ap"] is None else f"{c['ap']:.3f} ({_ci(k['ap'])})"
        rows.append(f"| {c['name']}{flag} | {c['support']} | {unknown[i]:.1%} | {ap} | {c['precision']:.3f} | "
                    f"{c['recall']:.3f} | {c['f1']:.3f} ({_ci(k['f1'])}) | {c['threshold']:.4f} |")  # fmt: skip
    if ci:
        rows.append(f"\nIntervals: 95% percentile bootstrap over {ci['replicates']} resamples of the images. "
                    f"(wide): an AP or F1 interval wider than {WIDE}, too few examples to trust the number "
                    f"({len(ci['wide_classes'])} classes).")  # fmt: skip
    return "\n".join(overall + rows) + "\n"


def _thresholds_part(meta: dict) -> str:
    info = meta.get("threshold_info")
    if not info:
        return "## Thresholds\n\nNone tuned (no validation set): every class uses 0.5.\n"
    names = meta["class_names"]
    fallback = [names[c] for c in info.get("fallback_classes", [])]
    lines = ["## Thresholds", "",
             f"Tuned on the validation set ({info.get('method')}, objective {info.get('objective', 'f1')}), on "
             "calibrated probabilities: each class's threshold sits in the middle, in logit space, of its best "
             f"plateau, pulled toward {_prior(info)} with weight K / (K + positives), K = {info.get('shrinkage', 0)}. "
             "A label is predicted when its probability reaches its threshold."]  # fmt: skip
    if fallback:
        lines.append(f"\nClasses with too few validation positives, given the global threshold: {', '.join(fallback)}.")
    return "\n".join(lines) + "\n"


def _prior(info: dict) -> str:
    if info.get("prior") == "calibrated optimum":
        return "its own calibrated optimum (half its best validation F1, Lipton et al. 2014)"
    return f"the global threshold ({info.get('global_threshold', 0.5):.4f})"


def _calibration_part(meta: dict) -> str:
    cal, info = meta.get("calibration"), meta.get("calibration_info") or {}
    if not cal:
        return "## Calibration\n\nNone (no validation set, or no class's validation log-loss improved).\n"
    names = meta["class_names"]
    rows = ["## Calibration", "",
            f"Per-class {cal['method']} scaling fitted on the validation set, kept where it lowered the class's "
            "validation log-loss; folded into the model, so every probability it gives is calibrated.", "",
            "| class | fitted | validation ECE before | after |", "|---|---|---|---|"]  # fmt: skip
    for j, name in enumerate(names):
        before, after = (info.get(k, [None] * len(names))[j] for k in ("ece_before", "ece_after"))
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        rows.append(f"| {name} | {'yes' if cal['fitted'][j] else 'no'} | {fmt(before)} | {fmt(after)} |")
    return "\n".join(rows) + "\n"


def _audit_part(audit: dict | None) -> str:
    if not audit:
        return ""
    lines = ["## Label audit", "",
             f"`mlic data audit` ({audit.get('folds')} folds, confident learning): {audit.get('flagged')} cells "
             f"flagged as likely wrong of {audit.get('cells')} known; estimated label errors per class below.", "",
             "| class | likely missing positives | likely spurious positives |", "|---|---|---|"]  # fmt: skip
    for row in audit.get("per_class", []):
        lines.append(f"| {row['name']} | {row['missing']} | {row['spurious']} |")
    return "\n".join(lines) + "\n"


def _use_part(report: dict) -> str:
    wide = (report.get("intervals") or {}).get("wide_classes", [])
    lines = ["## Intended use and limits", "",
             "- Multi-label tagging of images like the evaluation data above; every number here was measured on it "
             "and holds for images from the same source. Measure again on your own images before relying on it.",
             "- Probabilities are calibrated on the validation set; thresholds were tuned there, never on the "
             "evaluation data.",
             "- Unknown labels in the data were ignored, not counted as negatives: classes with a high unknown "
             "share are measured on fewer images than their support suggests."]  # fmt: skip
    if wide:
        lines.append(f"- Too few examples to trust the per-class numbers of: {', '.join(map(str, wide))}.")
    if report.get("excluded_from_map"):
        lines.append(f"- Not measured (no positive in the data): {', '.join(map(str, report['excluded_from_map']))}.")
    return "\n".join(lines) + "\n"


def unknown_shares(records, class_names: Sequence[str]) -> dict[int, float]:
    """Per class, the share of images whose label for it is unknown."""
    labels = as_table(records, class_names).labels
    known = labels.known_counts()
    return {i: float(1 - known[i] / max(len(labels), 1)) for i in range(len(class_names))}

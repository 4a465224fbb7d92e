"""``mlic report``: one self-contained HTML page per run, drawn only from what the run saved.

Inputs, all in the run folder: ``config.yaml``, ``metrics.csv``, ``checkpoints/best`` (class names, thresholds,
and the weights for Grad-CAM) and ``predictions/*.npz`` (see ``mlic.evaluation.prediction_files``). So a finished run is
reported on without retraining, and ``--data`` adds a new labelled set by predicting it with the best checkpoint.

The page embeds every picture as base64 (PNG plots, small JPEG thumbnails) and its Content-Security-Policy
forbids any fetch: it opens offline, from an e-mail attachment as well as from the run folder. Sizes are
capped (thumbnails of 96 px, 4 per label and kind, at most 60 labels in the galleries) so 50 labels and
1,000 test images stay well under 20 MB.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mlic.data.sources import load_records
from mlic.evaluation.prediction_files import load_predictions, save_scored
from mlic.evaluation.scoring import BatchOptions, score_checkpoint
from mlic.insight.page import page_html, section, table_html

REPORT_FILE = "report.html"
PREDICTIONS_DIR = "predictions"
PR_PER_FIGURE = 24  # small multiples per image: 4 rows of 6
MAX_PR_CLASSES = 120  # beyond this, the most frequent labels only
NO_PREDICTIONS = (
    "This run saved no validation or test predictions (it had neither a validation nor a test set), so this "
    "section does not apply. <code>mlic report RUN_DIR --data labels.csv</code> evaluates the best checkpoint "
    "on labelled data and fills it in."
)


def build_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    data: str | Path | None = None,
    fmt: str = "auto",
    image_root: str | Path | None = None,
    label_delimiter: str | None = None,
    predictions: str | Path | None = None,
    batch: BatchOptions | None = None,
) -> Path:
    """Write the HTML report of ``run_dir`` (default ``run_dir/report.html``) and return its path.

    The evaluated set is ``predictions`` if given, else ``data`` (predicted now with the best checkpoint and
    saved under ``run_dir/predictions/``), else the run's test predictions, else its validation predictions.
    ``batch``: how ``data`` is predicted, and the device of the Grad-CAM maps (default: CPU, no progress bars).
    """
    batch = batch or BatchOptions(device="cpu", progress=False)
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.csv").is_file() and not (run_dir / "checkpoints" / "best").is_dir():
        raise FileNotFoundError(f"{run_dir}: not an mlic run folder (no metrics.csv, no checkpoints/best)")
    if data is not None:
        records = load_records(data, fmt=fmt, image_root=image_root, label_delimiter=label_delimiter)
        scored = score_checkpoint(run_dir / "checkpoints" / "best", records, batch, desc="predict")
        out_npz = run_dir / PREDICTIONS_DIR / f"data_{Path(data).stem}.npz"
        predictions = save_scored(
            out_npz, scored.preds, scored.records, scored.class_names, scored.meta.get("thresholds")
        )
    run = _load_run(run_dir, predictions)
    sections = [
        _summary_section(run),
        _data_section(run),
        _training_section(run),
        *_evaluation_sections(run, str(batch.device)),
        *_card_section(run_dir),
    ]
    page = page_html(f"mlic report: {run_dir.name}", sections)
    out = Path(out) if out is not None else run_dir / REPORT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


# --- loading ---------------------------------------------------------------------------------------


def _load_run(run_dir: Path, predictions: str | Path | None) -> dict[str, Any]:
    import yaml

    from mlic.checkpoint import CheckpointError, read_meta

    config_text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    try:
        meta = read_meta(run_dir / "checkpoints" / "best")
    except CheckpointError:
        meta = None
    pred_path = Path(predictions) if predictions is not None else None
    if pred_path is None:
        pred_path = next(
            (p for p in (run_dir / PREDICTIONS_DIR / f"{s}.npz" for s in ("test", "val")) if p.is_file()), None
        )
    pred = load_predictions(pred_path) if pred_path is not None else None
    if pred is not None and len(pred["probs"]) == 0:
        pred = None
    metrics, intervals = None, None
    if pred is not None:
        from mlic.evaluation.metrics import compute_metrics

        metrics = compute_metrics(
            pred["probs"], pred["targets"], pred["masks"], pred["thresholds"], pred["class_names"]
        )
        intervals = _intervals(pred)
    return {
        "dir": run_dir,
        "config_text": config_text,
        "config": (yaml.safe_load(config_text) or {}) if config_text else {},
        "meta": meta,
        "history": _read_metrics(run_dir / "metrics.csv"),
        "pred": pred,
        "pred_path": pred_path,
        "metrics": metrics,
        "intervals": intervals,
        "class_names": list(meta["class_names"]) if meta else (pred["class_names"] if pred else []),
    }


REPORT_BOOTSTRAP = 1000  # resamples behind the report's 95% intervals
BOOTSTRAP_MAX_CELLS = 2_000_000  # above this many known cells the report leaves the intervals to mlic evaluate


def _intervals(pred: dict[str, Any]) -> dict[str, Any] | None:
    from mlic.evaluation.bootstrap import bootstrap_intervals
    from mlic.evaluation.cells import Cells

    known = pred["masks"] > 0
    if known.sum() > BOOTSTRAP_MAX_CELLS:
        return None
    cells = Cells.from_dense(pred["probs"].astype(np.float64), pred["targets"] > 0, known)
    return bootstrap_intervals(cells, np.asarray(pred["thresholds"], np.float64), replicates=REPORT_BOOTSTRAP,
                               class_names=pred["class_names"])  # fmt: skip


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.csv rows with numbers as floats (epoch as int) and empty cells as None."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {k: (float(v) if v not in ("", None) else None) for k, v in raw.items()}
            row["epoch"] = int(row["epoch"] or 0)
            rows.append(row)
    return rows


# --- sections --------------------------------------------------------------------------------------


def _summary_section(run: dict[str, Any]) -> str:
    meta, pred = run["meta"] or {}, run["pred"]
    facts = [
        ("run folder", str(run["dir"])),
        ("model", (meta.get("model") or {}).get("name", "?")),
        ("labels", str(len(run["class_names"]))),
        ("best epoch", str(meta.get("epoch", "?"))),
    ]
    if pred is None:
        return section("summary", "Summary", table_html(["", ""], facts) + f'<p class="missing">{NO_PREDICTIONS}</p>')
    metrics = run["metrics"]
    facts.append(("evaluated on", f"{_set_name(run)}: {metrics['num_images']} images ({run['pred_path'].name})"))
    keys = ("mAP", "roc_auc_macro", "f1_micro", "f1_macro", "f1_samples", "precision_micro", "recall_micro")
    overall = (run["intervals"] or {}).get("overall", {})
    facts += [(key, _num(metrics[key]) + _bounds(overall.get(key))) for key in (*keys, "hamming_loss", "exact_match")]
    if run["intervals"]:
        facts.append(("intervals", f"95% bootstrap percentile intervals, {run['intervals']['replicates']} resamples "
                      "of the images"))  # fmt: skip
    if metrics["excluded_from_map"]:
        facts.append(("not in mAP (no positives)", ", ".join(map(str, metrics["excluded_from_map"]))))
    link = '<p><a href="#model-card">Model card</a></p>' if (run["dir"] / "MODEL_CARD.md").is_file() else ""
    return section("summary", "Summary", table_html(["", ""], facts) + link)


def _card_section(run_dir: Path) -> list[str]:
    """The run's MODEL_CARD.md (``mlic card``), shown as written, when there is one."""
    from mlic.insight.card import CARD_FILE

    card = run_dir / CARD_FILE
    if not card.is_file():
        return []
    body = f"<p>{CARD_FILE}, as <code>mlic card</code> wrote it:</p><pre>{html.escape(card.read_text())}</pre>"
    return [section("model-card", "Model card", body)]


def _set_name(run: dict[str, Any]) -> str:
    stem = run["pred_path"].stem
    return {"test": "test set", "val": "validation set (also used to pick the checkpoint and thresholds)"}.get(
        stem, f"labelled data {stem.removeprefix('data_')}"
    )


def _data_section(run: dict[str, Any]) -> str:
    from mlic.insight.plots import plot_label_frequency

    cfg_data = run["config"].get("data", {}) if isinstance(run["config"], dict) else {}
    rows, train_counts = [], None
    for split in ("train", "val", "test"):
        source = cfg_data.get(split)
        if not source:
            rows.append((split, "(none)", "", ""))
            continue
        counts = _label_counts(source, cfg_data)
        if counts is None:
            rows.append((split, str(source), "not readable from here", ""))
            continue
        n_images, per_label = counts
        train_counts = per_label if split == "train" else train_counts
        rows.append((split, str(source), str(n_images), str(sum(1 for v in per_label.values() if v))))
    body = table_html(["split", "label file", "images", "labels present"], rows)
    fraction = cfg_data.get("val_fraction") or 0
    if not cfg_data.get("val") and cfg_data.get("train"):
        held_out = f"{fraction:.0%} of the training images were held out" if fraction > 0 else "no validation set"
        body += f"<p>No validation file: {held_out}.</p>"
    body += f"<details><summary>config.yaml</summary><pre>{html.escape(run['config_text'])}</pre></details>"
    names, counted = run["class_names"], "Training images per label."
    if train_counts is None and run["pred"] is not None:  # fall back to the evaluated set's labels
        counted = "Evaluated images per label (the training labels cannot be read from here)."
        train_counts = dict(zip(names, (run["pred"]["targets"] * run["pred"]["masks"]).sum(0).astype(int), strict=True))
    plot = ""
    if train_counts and names:
        png = _with_tmp_file(lambda p: plot_label_frequency(names, [int(train_counts.get(n, 0)) for n in names], p))
        plot = f"<div><p>{counted}</p>{_img(png, 'label frequencies', 'plot freq')}</div>"
    elif not names:
        plot = '<p class="missing">No labels known: the run has no best checkpoint and no predictions.</p>'
    return section("data", "Config and data", f'<div class="row"><div>{body}</div>{plot}</div>')


def _label_counts(source: str, cfg_data: dict[str, Any]) -> tuple[int, dict[str, int]] | None:
    """(images, positives per label) of a label file named in the config; None if it cannot be read here."""
    try:
        records = load_records(
            source,
            fmt=cfg_data.get("format") or "auto",
            image_root=cfg_data.get("image_root"),
            label_delimiter=cfg_data.get("label_delimiter"),
            check_files=False,
            on_warning=lambda _message: None,
        )
    except (ValueError, OSError):  # DataError is a ValueError: moved, renamed or unreadable
        return None
    counts: dict[str, int] = {}
    for record in records:
        for name in record.positives:
            counts[name] = counts.get(name, 0) + 1
    return len(records), counts


def _training_section(run: dict[str, Any]) -> str:
    from mlic.insight.plots import plot_training_curves

    if not run["history"]:
        return section("training", "Training curves", '<p class="missing">No metrics.csv in this run.</p>')
    body = _img(_png(plot_training_curves, run["history"]), "training curves", "plot wide")
    if all(row.get("val_mAP") is None for row in run["history"]):
        body += '<p class="missing">No validation set: only the training loss and learning rate were recorded.</p>'
    return section("training", "Training curves", body)


def _evaluation_sections(run: dict[str, Any], device: str) -> list[str]:
    titles = [
        ("per-class", "Per-label metrics"),
        ("calibration", "Calibration per label"),
        ("curves", "Precision-recall and calibration"),
        ("errors", "Co-occurrence and errors"),
        ("galleries", "Galleries"),
        ("gradcam", "Grad-CAM"),
    ]
    pred = run["pred"]
    if pred is None:
        return [section(key, title, f'<p class="missing">{NO_PREDICTIONS}</p>') for key, title in titles]
    from mlic.evaluation.metrics import predict_labels
    from mlic.insight.galleries import galleries_html, gradcam_html

    known = pred["masks"] > 0
    predicted = predict_labels(pred["probs"], pred["thresholds"]) & known
    true = (pred["targets"] > 0) & known
    counts = {"tp": (predicted & true).sum(0), "fp": (predicted & ~true).sum(0), "fn": (~predicted & true).sum(0)}
    bodies = [
        _per_class_table(run["metrics"], counts, run["intervals"]),
        _calibration_section(run, known),
        _curves(run["metrics"], pred, known),
        _errors(pred["class_names"], true, predicted, counts),
        galleries_html(pred, predicted, true, known),
        gradcam_html(run["dir"] / "checkpoints" / "best", pred, predicted, device),
    ]
    return [section(key, title, body) for (key, title), body in zip(titles, bodies, strict=True)]


def _per_class_table(metrics: dict[str, Any], counts: dict[str, np.ndarray], intervals: dict | None) -> str:
    header = ["label", "support", "AP", "ROC AUC", "precision", "recall", "F1", "threshold", "TP", "FP", "FN"]
    if intervals:
        header += ["AP 95%", "F1 95%", "wide"]
    rows = []
    for c, m in enumerate(metrics["per_class"]):
        values = [m["support"], m["ap"], m["roc_auc"], m["precision"], m["recall"], m["f1"], m["threshold"]]
        row = [str(m["name"]), *values, *(int(counts[k][c]) for k in ("tp", "fp", "fn"))]
        if intervals:
            ci = intervals["per_class"][c]
            row += [_bounds(ci["ap"]).strip(" ()") or None, _bounds(ci["f1"]).strip(" ()") or None,
                    "wide" if ci["wide"] else ""]  # fmt: skip
        rows.append(row)
    note = "<p>Click a column header to sort. A label is predicted when its probability reaches its threshold.</p>"
    if intervals:
        from mlic.evaluation.bootstrap import WIDE

        note += (f"<p>95% intervals from {intervals['replicates']} bootstrap resamples of the images; "
                 f"<em>wide</em>: an AP or F1 interval wider than {WIDE}, too few examples to rank this label "
                 f"against others ({len(intervals['wide_classes'])} labels).</p>")  # fmt: skip
    return note + table_html(header, rows, table_id="per-class-table", sortable=True)


def _bounds(bounds: list[float] | None) -> str:
    return "" if bounds is None else f" ({bounds[0]:.3f} to {bounds[1]:.3f})"


MAX_RELIABILITY_CLASSES = 12  # diagrams for the most frequent labels; the table lists every label


def _calibration_section(run: dict[str, Any], known: np.ndarray) -> str:
    """Per label: the calibration fitted on validation, its ECE there before and after, and reliability
    diagrams before and after on the set shown here (its probabilities are the calibrated ones)."""
    from mlic.evaluation.calibration import Calibration, expected_calibration_error, reliability
    from mlic.insight.plots import plot_reliability_grid

    meta, pred = run["meta"] or {}, run["pred"]
    if not meta.get("calibration"):
        return '<p class="missing">No calibration: the run had no validation set, or no label\'s validation ' \
               "log-loss improved with one (<code>--calibration</code>).</p>"  # fmt: skip
    calibration, info = Calibration.from_dict(meta["calibration"]), meta.get("calibration_info") or {}
    names, c = pred["class_names"], len(pred["class_names"])
    rows_, cols_ = np.nonzero(known)
    after_p = pred["probs"][rows_, cols_].astype(np.float64)
    before_p = calibration.uncalibrated(after_p, cols_)
    y = pred["targets"][rows_, cols_].astype(np.float64)
    ece_before, ece_after = (expected_calibration_error(p, y, cols_, c) for p in (before_p, after_p))
    header = ["label", "fitted", "scale", "shift", "val ECE before", "val ECE after", "ECE before", "ECE after"]
    table = []
    for j, name in enumerate(names):
        val_b, val_a = (info.get(k, [None] * c)[j] for k in ("ece_before", "ece_after"))
        fitted = "yes" if calibration.fitted[j] else "no"
        table.append([str(name), fitted, float(calibration.scale[j]), float(calibration.shift[j]), val_b, val_a,
                      _finite(ece_before[j]), _finite(ece_after[j])])  # fmt: skip
    support = np.bincount(cols_, weights=y, minlength=c)
    shown = sorted(np.argsort(-support, kind="stable")[:MAX_RELIABILITY_CLASSES].tolist())
    panels = [{"name": names[j], "before": reliability(before_p[cols_ == j], y[cols_ == j]),
               "after": reliability(after_p[cols_ == j], y[cols_ == j]), "ece_before": _finite(ece_before[j]),
               "ece_after": _finite(ece_after[j])} for j in shown]  # fmt: skip
    note = (f"<p>Calibration <code>{html.escape(calibration.method)}</code>, fitted per label on the validation "
            "set (kept only where it lowered that label's validation log-loss); thresholds were tuned on the "
            f"calibrated probabilities. ECE: {15} equal-width bins over known cells. \"before/after\" columns "
            "without \"val\" are on the set this report shows.</p>")  # fmt: skip
    diagrams = _img(_png(plot_reliability_grid, panels), "reliability diagrams per label", "plot")
    return note + table_html(header, table, table_id="calibration-table", sortable=True) + diagrams


def _finite(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _curves(metrics: dict[str, Any], pred: dict[str, Any], known: np.ndarray) -> str:
    from mlic.insight.plots import plot_calibration, plot_pr_grid

    names, per_class = pred["class_names"], metrics["per_class"]
    order = sorted(range(len(names)), key=lambda c: (-per_class[c]["support"], str(names[c])))
    shown = order[:MAX_PR_CLASSES]
    curves = []
    for c in sorted(shown):
        recall, precision = pr_curve(pred["probs"][:, c], pred["targets"][:, c], known[:, c])
        m = per_class[c]
        point = (m["recall"], m["precision"])
        curves.append({"name": names[c], "recall": recall, "precision": precision, "ap": m["ap"], "point": point})
        curves[-1]["threshold"] = m["threshold"]
    body = "<p>One panel per label; the red dot is the operating point at the label's threshold.</p>"
    if len(shown) < len(names):
        body += f"<p>Showing the {len(shown)} most frequent of {len(names)} labels.</p>"
    grids = "".join(
        _img(_png(plot_pr_grid, curves[start : start + PR_PER_FIGURE]), "precision-recall curves", "plot pr")
        for start in range(0, len(curves), PR_PER_FIGURE)
    )
    bins = calibration_bins(pred["probs"], pred["targets"], known)
    calibration = _img(_png(plot_calibration, bins), "calibration plot", "plot calibration")
    note = "<h3>Calibration</h3><p>Every known (image, label) pair, binned by predicted probability.</p>"
    return body + f'<div class="row"><div>{grids}</div><div>{note}{calibration}</div></div>'


def _errors(names: list[str], true: np.ndarray, predicted: np.ndarray, counts: dict[str, np.ndarray]) -> str:
    from mlic.insight.plots import plot_cooccurrence_pair, plot_error_counts

    body = ""
    if len(names) < 2:
        body += '<p class="missing">Co-occurrence needs at least two labels; this model has one.</p>'
    else:
        t, p = true.astype(np.int64), predicted.astype(np.int64)
        body += "<p>Images carrying both labels; the diagonal counts images with the label.</p>"
        body += _img(_png(plot_cooccurrence_pair, names, t.T @ t, p.T @ p), "label co-occurrence", "plot")
    errors = _img(_png(plot_error_counts, names, counts["tp"], counts["fp"], counts["fn"]), "error counts", "plot")
    return f'<div class="row">{body and f"<div>{body}</div>"}<div>{errors}</div></div>'


# --- numbers behind the plots ----------------------------------------------------------------------


def pr_curve(scores: np.ndarray, targets: np.ndarray, known: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(recall, precision) at every distinct score of one label's known entries, from recall 0; None without positives.

    Tied scores form one operating point, as in ``mlic.evaluation.metrics.average_precision``.
    """
    s, t = np.asarray(scores, np.float64)[known], np.asarray(targets)[known] > 0
    if not t.any():
        return None, None
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last row of each group of tied scores
    tp, fp = np.cumsum(t)[last], np.cumsum(~t)[last]
    recall, precision = tp / t.sum(), tp / (tp + fp)
    return np.r_[0.0, recall], np.r_[1.0, precision]


def calibration_bins(probs: np.ndarray, targets: np.ndarray, known: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Equal-width reliability bins over all known entries, and the expected calibration error."""
    p, t = np.asarray(probs, np.float64)[known], np.asarray(targets)[known] > 0
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(which, weights=p, minlength=bins) / count
        frac_pos = np.bincount(which, weights=t, minlength=bins) / count
    filled = count > 0
    ece = float((count[filled] * np.abs(frac_pos[filled] - mean_prob[filled])).sum() / max(count.sum(), 1))
    return {"edges": edges, "mean_prob": mean_prob, "frac_pos": frac_pos, "count": count, "ece": ece}


# --- embedding ---------------------------------------------------------------------------------------


def _png(plot: Callable[..., Any], *args: Any, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    plot(*args, buffer, **kwargs)
    return buffer.getvalue()


def _with_tmp_file(plot: Callable[[Path], Any]) -> bytes:
    """PNG bytes from a plot function that only writes to a path."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plot.png"
        plot(path)
        return path.read_bytes()


def _img(png: bytes, alt: str, cls: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"

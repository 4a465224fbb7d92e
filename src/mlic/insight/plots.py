"""Plots, drawn with matplotlib's Agg backend. matplotlib is imported here only, lazily."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def _plain_text(plot: Callable) -> Callable:
    """Draw ``plot``'s text as given: class names are users' strings, and matplotlib would read "$x$" in one as
    math (and fail on an odd number of "$")."""

    @functools.wraps(plot)
    def drawn(*args: Any, **kwargs: Any):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return plot(*args, **kwargs)

    return drawn


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed; safe on servers and CI
    import matplotlib.pyplot as plt

    return plt


@_plain_text
def plot_history(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss curves (left) and validation metrics (right) per epoch, like the seed's training_history.png."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        values = [row.get(key) for row in history]
        if any(v is not None for v in values):
            ax_loss.plot(epochs, values, marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="BCE loss", title="Loss")
    ax_loss.legend()
    for key, label in (
        ("val_mAP", "mAP"),
        ("val_f1_micro", "F1 micro"),
        ("val_f1_macro", "F1 macro"),
        ("val_exact_match", "exact match"),
        ("val_hamming_loss", "Hamming loss"),
    ):
        values = [row.get(key) for row in history]
        if any(v is not None for v in values):
            ax_metric.plot(epochs, values, marker="o", label=label)
    ax_metric.set(xlabel="epoch", ylabel="value", title="Validation metrics", ylim=(0, 1.02))
    if ax_metric.lines:
        ax_metric.legend()
    else:
        ax_metric.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=ax_metric.transAxes)
    fig.tight_layout()
    return _save(fig, path, dpi=100)


@_plain_text
def plot_label_frequency(
    class_names: Sequence[str], positives: Sequence[int], path: str | Path, *, max_classes: int = 50
) -> Path:
    """Images per label as horizontal bars, most frequent on top: the class imbalance at a glance."""
    plt = _pyplot()
    order = sorted(range(len(class_names)), key=lambda i: (-positives[i], class_names[i]))[:max_classes]
    names, counts = [class_names[i] for i in order], [positives[i] for i in order]
    fig, ax = plt.subplots(figsize=(8, min(2.0 + 0.25 * len(names), 16)))
    bars = ax.barh(range(len(names)), counts, color="tab:blue")
    ax.bar_label(bars, padding=2, fontsize=8)
    ax.set_yticks(range(len(names)), labels=names)
    ax.invert_yaxis()  # most frequent first
    shown = f" (top {len(names)} of {len(class_names)})" if len(names) < len(class_names) else ""
    ax.set(xlabel="images", title=f"Images per label{shown}")
    if not names:
        ax.text(0.5, 0.5, "no labels", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return _save(fig, path, dpi=100)


@_plain_text
def plot_cooccurrence(
    class_names: Sequence[str], matrix: Sequence[Sequence[int]], path: str | Path, *, max_classes: int = 30
) -> Path:
    """Heatmap of how many images carry both labels (the diagonal: images with the label), frequent labels only."""
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(matrix, dtype=np.int64).reshape(len(class_names), len(class_names))
    order = sorted(range(len(class_names)), key=lambda i: (-counts[i, i], class_names[i]))[:max_classes]
    sub = counts[np.ix_(order, order)]
    names = [class_names[i] for i in order]
    side = min(max(4.0, 2.5 + 0.35 * len(names)), 16)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    if names:
        fig.colorbar(ax.imshow(sub, cmap="viridis", vmin=0), ax=ax, label="images")
    else:
        ax.text(0.5, 0.5, "no labels", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks(range(len(names)), labels=names, rotation=90)
    ax.set_yticks(range(len(names)), labels=names)
    if len(names) <= 15:  # numbers stay legible only on small grids
        top = sub.max() if sub.size else 0
        for (row, col), value in np.ndenumerate(sub):
            color = "black" if value > top / 2 else "white"
            ax.text(col, row, str(value), ha="center", va="center", fontsize=8, color=color)
    shown = f" (top {len(names)} of {len(class_names)})" if len(names) < len(class_names) else ""
    ax.set_title(f"Label co-occurrence{shown}; diagonal: images with the label")
    fig.tight_layout()
    return _save(fig, path, dpi=100)


# --- report plots (mlic report, mlic explain). Each takes an output path or a binary file object. ---


def _save(fig, out, dpi: int = 90):
    """Save ``fig`` as PNG to a path or a binary file object, close it, and return ``out``."""
    import matplotlib.pyplot as plt

    target = Path(out) if isinstance(out, str | Path) else out
    fig.savefig(target, format="png", dpi=dpi)
    plt.close(fig)
    return target


@_plain_text
def plot_training_curves(rows: Sequence[dict[str, Any]], out):
    """Four panels per epoch from metrics.csv rows: loss, mAP, F1 (micro/macro/samples), learning rate."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in rows]
    panels = (
        ("Loss", (("train_loss", "train"), ("val_loss", "val"))),
        ("Validation mAP", (("val_mAP", "mAP"), ("val_mAP_ema", "mAP (EMA weights)"))),
        ("Validation F1", (("val_f1_micro", "micro"), ("val_f1_macro", "macro"), ("val_f1_samples", "samples"))),
        ("Learning rate", (("lr", "lr"),)),
    )
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    for ax, (title, series) in zip(axes, panels, strict=True):
        for key, label in series:
            values = [row.get(key) for row in rows]
            if any(v is not None for v in values):
                ax.plot(epochs, [float("nan") if v is None else v for v in values], marker="o", ms=3, label=label)
        ax.set(xlabel="epoch", title=title)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return _save(fig, out)


@_plain_text
def plot_pr_grid(curves: Sequence[dict[str, Any]], out, *, columns: int | None = None):
    """Small multiples of precision-recall curves, the chosen threshold's operating point marked.

    Each curve: ``name``, ``recall`` and ``precision`` arrays (None: no positives), ``ap``, ``point``
    ((recall, precision) at the threshold) and ``threshold``.
    """
    import math

    plt = _pyplot()
    if columns is None:  # about square: 6 labels in 3 x 2, 24 in 5 x 5
        columns = min(6, math.ceil(math.sqrt(len(curves))))
    columns = max(1, min(columns, len(curves)))
    rows = max(1, -(-len(curves) // columns))
    width, height = 2.1 * columns + 0.6, 2.0 * rows + 0.4
    fig, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False)
    # Fixed margins (inches) instead of tight_layout, and tick labels on the outer panels only: text layout
    # is most of the drawing time, and 50 labels make 50 panels.
    fig.subplots_adjust(left=0.6 / width, right=1 - 0.1 / width, bottom=0.45 / height, top=1 - 0.25 / height)
    fig.subplots_adjust(wspace=0.12, hspace=0.35)
    for i, (ax, curve) in enumerate(zip(axes.flat, curves, strict=False)):
        ax.set(xlim=(0, 1.02), ylim=(0, 1.05), xticks=(0, 0.5, 1), yticks=(0, 0.5, 1))
        ax.tick_params(labelsize=7, labelbottom=i + columns >= len(curves), labelleft=i % columns == 0)
        name = str(curve["name"])
        name = name if len(name) <= 24 else name[:23] + "…"
        if curve["recall"] is None:
            ax.set_title(name, fontsize=8)
            ax.text(0.5, 0.5, "no positives", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            continue
        ax.step(curve["recall"], curve["precision"], where="post", lw=1.2)
        r, p = curve["point"]
        ax.plot([r], [p], "o", color="tab:red", ms=4)
        ax.set_title(f"{name}  AP {curve['ap']:.2f}", fontsize=8)
        label = f"t={curve['threshold']:.2f}"
        ax.annotate(label, (r, p), fontsize=6, xytext=(-5, -10), textcoords="offset points", ha="right")
    for ax in list(axes.flat)[len(curves) :]:
        ax.axis("off")
    fig.supxlabel("recall", fontsize=8)
    fig.supylabel("precision", fontsize=8, x=0.08 / width, ha="left")
    return _save(fig, out, dpi=90)


@_plain_text
def plot_calibration(bins: dict[str, Any], out):
    """Reliability diagram: fraction of positives against mean predicted probability per bin, counts below.

    ``bins``: ``edges`` (B + 1,), ``mean_prob``, ``frac_pos``, ``count`` (B,) and ``ece``.
    """
    import matplotlib.ticker
    import numpy as np

    plt = _pyplot()
    edges, count = np.asarray(bins["edges"]), np.asarray(bins["count"])
    filled = count > 0
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5, 5.2), height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1, label="perfectly calibrated")
    ax.plot(np.asarray(bins["mean_prob"])[filled], np.asarray(bins["frac_pos"])[filled], "o-", label="model")
    ax.set(ylabel="fraction positive", xlim=(0, 1), ylim=(0, 1), title=f"Calibration (ECE {bins['ece']:.3f})")
    ax.legend(fontsize=8, loc="upper left")
    ax_n.bar(edges[:-1], count, width=np.diff(edges), align="edge", color="tab:blue", edgecolor="white")
    if count.max(initial=0) > 0:
        ax_n.set_yscale("log")  # near-0 negatives outnumber the rest by orders of magnitude
        ax_n.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax_n.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_n.set(xlabel="predicted probability", ylabel="labels")
    fig.tight_layout()
    return _save(fig, out)


@_plain_text
def plot_reliability_grid(panels: Sequence[dict[str, Any]], out, *, columns: int = 4):
    """Small multiples of per-label reliability diagrams, before and after calibration.

    Each panel: ``name``, ``before`` and ``after`` (lists of {"mean_p", "rate", "count"} per non-empty bin,
    ``mlic.evaluation.calibration.reliability``) and ``ece_before`` / ``ece_after``.
    """
    plt = _pyplot()
    columns = max(1, min(columns, len(panels)))
    rows = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.5 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels, strict=False):
        ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=0.8)
        for key, style, colour in (("before", "o--", "tab:gray"), ("after", "o-", "tab:blue")):
            points = panel[key]
            ece = panel[f"ece_{key}"]
            label = f"{key} (ECE {ece:.3f})" if ece is not None else key
            ax.plot([b["mean_p"] for b in points], [b["rate"] for b in points], style, ms=3, color=colour, label=label)
        ax.set(xlim=(0, 1), ylim=(0, 1), title=str(panel["name"])[:28])
        ax.title.set_fontsize(9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper left")
    fig.supxlabel("predicted probability", fontsize=9)
    fig.supylabel("fraction positive", fontsize=9)
    fig.tight_layout()
    return _save(fig, out)


@_plain_text
def plot_cooccurrence_pair(class_names: Sequence[str], truth, predicted, out, *, max_classes: int = 30):
    """Label co-occurrence of the ground truth and of the predictions side by side, same label order.

    Both matrices are (C, C) image counts; labels are ordered by ground-truth frequency.
    """
    import numpy as np

    plt = _pyplot()
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    order = sorted(range(len(class_names)), key=lambda i: (-truth[i, i], class_names[i]))[:max_classes]
    names = [class_names[i] for i in order]
    side = min(max(3.5, 1.5 + 0.28 * len(names)), 11)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.5, side))
    top = max(int(truth.max(initial=0)), int(predicted.max(initial=0)), 1)
    for ax, matrix, title in ((axes[0], truth, "ground truth"), (axes[1], predicted, "predicted")):
        sub = matrix[np.ix_(order, order)]
        image = ax.imshow(sub, cmap="viridis", vmin=0, vmax=top)
        if len(names) <= 12:  # numbers stay legible only on small grids
            for (row, col), value in np.ndenumerate(sub):
                color = "black" if value > top / 2 else "white"
                ax.text(col, row, str(value), ha="center", va="center", fontsize=7, color=color)
        ax.set_xticks(range(len(names)), labels=names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), labels=names, fontsize=7)
        ax.set_title(f"Co-occurrence, {title}", fontsize=9)
    fig.colorbar(image, ax=axes, label="images", shrink=0.8)
    return _save(fig, out)


@_plain_text
def plot_error_counts(class_names: Sequence[str], tp, fp, fn, out, *, max_classes: int = 60):
    """Per-class TP / FP / FN counts as grouped horizontal bars, most frequent labels on top."""
    import numpy as np

    plt = _pyplot()
    tp, fp, fn = (np.asarray(a) for a in (tp, fp, fn))
    order = sorted(range(len(class_names)), key=lambda i: (-(tp[i] + fn[i]), class_names[i]))[:max_classes]
    y = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(7, min(1.5 + 0.32 * len(order), 22)))
    bars = ((-0.27, tp, "TP", "tab:green"), (0.0, fp, "FP", "tab:orange"), (0.27, fn, "FN", "tab:red"))
    for shift, values, label, color in bars:
        ax.barh(y + shift, values[order], height=0.26, label=label, color=color)
    ax.set_yticks(y, labels=[class_names[i] for i in order], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="images", title="True positives, false positives, false negatives per label")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


@_plain_text
def heatmap_overlay(image, cam, *, alpha: float = 0.6):
    """An RGB PIL image with ``cam`` ((h, w) in [0, 1], any size) drawn over ``image`` in the jet colour map."""
    import matplotlib
    import numpy as np
    from PIL import Image

    base = image.convert("RGB")
    heat = Image.fromarray(np.uint8(np.clip(cam, 0, 1) * 255)).resize(base.size, Image.Resampling.BILINEAR)
    level = np.asarray(heat, np.float32) / 255.0  # (H, W)
    colours = matplotlib.colormaps["jet"](level)[..., :3]  # (H, W, 3) in [0, 1]
    # Opacity follows the map, so regions without evidence keep the image's own colours.
    weight = (alpha * (0.25 + 0.75 * level))[..., None]
    mixed = (1 - weight) * np.asarray(base, np.float32) + weight * 255.0 * colours
    return Image.fromarray(np.uint8(np.clip(mixed, 0, 255)))


@_plain_text
def plot_gradcam_overlay(image, cam, caption: str, out):
    """PNG of the image and its Grad-CAM overlay side by side, with ``caption`` as the title."""
    from PIL import Image

    plt = _pyplot()
    # Small images (the 40 px demo scenes) are shown larger, big photos smaller: about 256-512 px.
    scale = min(max(256 / max(image.size), 1.0), 512 / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    shown = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.8))
    for ax, picture in zip(axes, (shown, heatmap_overlay(shown, cam)), strict=True):
        ax.imshow(picture)
        ax.axis("off")
    fig.suptitle(caption, fontsize=10)
    fig.tight_layout()
    return _save(fig, out, dpi=100)

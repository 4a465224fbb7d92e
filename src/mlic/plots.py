"""Plots, drawn with matplotlib's Agg backend. matplotlib is imported here only, lazily."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed; safe on servers and CI
    import matplotlib.pyplot as plt

    return plt


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
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

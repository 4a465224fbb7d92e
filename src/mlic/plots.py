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

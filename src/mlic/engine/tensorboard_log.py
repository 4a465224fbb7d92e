"""Optional TensorBoard event files from training (``--tensorboard``), for users who already live there.

``tensorboard`` is not a dependency of mlic: it is imported when a writer is made, and its absence is a
ConfigError naming the package to install.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import TracebackType
from typing import Any

from mlic.config import ConfigError


def _tag(key: str) -> str:
    """metrics.csv column -> TensorBoard tag, grouped by prefix: train_loss -> train/loss, val_mAP -> val/mAP."""
    for prefix in ("train_", "val_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix) :]}"
    return key


class TensorboardWriter:
    """Writes one scalar per metric and epoch under ``log_dir`` (e.g. ``runs/<name>/tensorboard``)."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "--tensorboard needs the tensorboard package: pip install tensorboard (or turn it off)"
            ) from None
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Log every finite number of a metrics row (the ``epoch`` key is the step); None and text are skipped."""
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                self._writer.add_scalar(_tag(key), float(value), global_step=epoch)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorboardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def tensorboard_writer(log_dir: str | Path, enabled: bool):
    """A ``TensorboardWriter`` as a context manager, or a null context when ``enabled`` is false."""
    import contextlib

    return TensorboardWriter(log_dir) if enabled else contextlib.nullcontext()

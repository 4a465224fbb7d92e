"""Where a run stands (``Progress``) and how a run continues: its folder, its last checkpoint, and the
config keys that must not change in between."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mlic.checkpoint import CheckpointError, load_train_state, load_weights, read_meta
from mlic.config import ConfigError
from mlic.engine.run_folder import holds_a_run, make_run_dir
from mlic.engine.trainer import Trainer, load_trainer_state
from mlic.runtime.console import log
from mlic.runtime.distributed import DistInfo

# Config keys a resumed run must share with the checkpoint; anything else (epochs, workers, device) may change.
RESUME_KEYS = (
    "model.name",
    "model.widths",
    "model.hidden",
    "data.image_size",
    "data.train",
    "data.val",
    "optim.batch_size",
    "optim.accum_steps",
    "optim.optimizer",
    "optim.schedule",
    "optim.loss",
    "optim.ema",
    "seed",
)


@dataclass
class Progress:
    """Where training stands; stored in ``checkpoints/last/meta.json`` so a run can resume exactly."""

    epochs: int  # planned (a time budget may change it)
    epoch: int = 0  # completed epochs
    step: int = 0  # steps done in epoch ``epoch + 1``
    loss_sum: float = 0.0  # partial-epoch loss and image count, so a resumed epoch logs the same mean
    images: int = 0
    seconds: float = 0.0
    probed: bool = False  # the budget probe has sized the run (a resumed run does not probe again)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"score": None, "epoch": 0, "weights": "raw"})


def restore(last: Path, config: dict[str, Any], class_names: list[str], t: Trainer) -> Progress:
    """Load the resume point ``last`` into ``t``: weights, EMA, optimizer, schedule, RNG; return the progress."""
    meta = read_meta(last)
    check_compatible(meta, config, class_names, last)
    state, ema = load_train_state(last)
    load_weights(last, t.raw)
    try:
        if t.ema is not None and ema is not None:
            t.ema.module.load_state_dict(ema)
        load_trainer_state(t, state)
        p = Progress(**meta["progress"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # another run's, another version's, damaged
        raise CheckpointError(f"{last}: cannot resume from this training state ({type(exc).__name__}: {exc})") from None
    log(f"resuming from {last}: epoch {p.epoch} complete, {p.step} step(s) into epoch {p.epoch + 1}")
    return p


def check_compatible(meta: dict, config: dict[str, Any], class_names: list[str], path: Path) -> None:
    saved, diffs = meta.get("config", {}), []
    for dotted in RESUME_KEYS:
        a, b = saved, config
        for part in dotted.split("."):
            a, b = (a or {}).get(part), (b or {}).get(part)
        if a != b:
            diffs.append(f"{dotted} (checkpoint: {a!r}, now: {b!r})")
    if list(meta["class_names"]) != list(class_names):
        diffs.append(f"class names (checkpoint: {len(meta['class_names'])} classes, now: {len(class_names)})")
    if diffs:
        raise ConfigError(f"cannot resume from {path}: the config differs in " + "; ".join(diffs))


def resolve_run_dir(output_dir: str, name: str | None, overwrite: bool, resume: str | None, info: DistInfo) -> Path:
    """The run folder: the one to resume, or a new one (rank 0 makes it and tells the others)."""
    if resume and resume != "auto":
        run_dir = Path(resume)
    elif resume == "auto":
        if not name:
            raise ConfigError("--resume auto needs --name (the run folder to continue)")
        run_dir = Path(output_dir) / name
    else:
        run_dir = broadcast_path(make_run_dir(output_dir, name, overwrite) if info.is_main else None, info)
    if resume and not (run_dir / "checkpoints" / "last" / "meta.json").is_file():
        raise ConfigError(f"--resume: no complete checkpoint in {run_dir / 'checkpoints' / 'last'}")
    return run_dir


def discard_unstarted(run_dir: Path, resume: str | None, info: DistInfo) -> None:
    """Remove the run folder made for a run that failed before its first checkpoint (a new run only)."""
    if resume or not info.is_main or holds_a_run(run_dir):
        return
    shutil.rmtree(run_dir, ignore_errors=True)


def broadcast_path(path: Path | None, info: DistInfo) -> Path:
    """Rank 0 names the run folder (a timestamp by default); the others use the same."""
    if not info.enabled:
        return path
    box = [str(path) if path else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return Path(box[0])

"""Where a run stands (``Progress``) and how a run continues: its folder, its last checkpoint, and the
config keys that must not change in between."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mlic.checkpoint import load_train_state, load_weights, read_meta
from mlic.config import ConfigError, TrainConfig, save_config, to_dict
from mlic.engine.console import log
from mlic.engine.data_setup import RunData
from mlic.engine.distributed import DistInfo
from mlic.engine.run_folder import make_run_dir
from mlic.engine.trainer import Trainer, load_trainer_state

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
    "optim.loss",
    "optim.ema",
    "seed",
)


@dataclass
class Progress:
    """Where training stands; stored in ``checkpoints/last/meta.json`` so a run can resume exactly."""

    epochs: int  # planned (a time budget may lower it after epoch 1)
    epoch: int = 0  # completed epochs
    step: int = 0  # steps done in epoch ``epoch + 1``
    loss_sum: float = 0.0  # partial-epoch loss and image count, so a resumed epoch logs the same mean
    images: int = 0
    seconds: float = 0.0
    probed: bool = False  # the budget probe has sized the run (a resumed run does not probe again)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"score": None, "epoch": 0, "weights": "raw"})


def restore(last: Path, cfg: TrainConfig, data: RunData, t: Trainer) -> Progress:
    meta = read_meta(last)
    check_compatible(meta, cfg, data.class_names, last)
    state, ema = load_train_state(last)
    load_weights(last, t.raw)
    if t.ema is not None and ema is not None:
        t.ema.module.load_state_dict(ema)
    load_trainer_state(t, state)
    p = Progress(**meta["progress"])
    log(f"resuming from {last}: epoch {p.epoch} complete, {p.step} step(s) into epoch {p.epoch + 1}")
    return p


def check_compatible(meta: dict, cfg: TrainConfig, class_names: list[str], path: Path) -> None:
    saved, now = meta.get("config", {}), to_dict(cfg)
    diffs = []
    for dotted in RESUME_KEYS:
        a, b = saved, now
        for part in dotted.split("."):
            a, b = (a or {}).get(part), (b or {}).get(part)
        if a != b:
            diffs.append(f"{dotted} (checkpoint: {a!r}, now: {b!r})")
    if list(meta["class_names"]) != list(class_names):
        diffs.append(f"class names (checkpoint: {len(meta['class_names'])} classes, now: {len(class_names)})")
    if diffs:
        raise ConfigError(f"cannot resume from {path}: the config differs in " + "; ".join(diffs))


def resolve_run_dir(cfg: TrainConfig, overwrite: bool, resume: str | None, info: DistInfo) -> Path:
    if resume and resume != "auto":
        run_dir = Path(resume)
    elif resume == "auto":
        run_dir = Path(cfg.output_dir) / (cfg.name or "")
        if not cfg.name:
            raise ConfigError("--resume auto needs --name (the run folder to continue)")
    else:
        run_dir = make_run_dir(cfg.output_dir, cfg.name, overwrite) if info.is_main else None
        run_dir = broadcast_path(run_dir, info)
    if resume and not (run_dir / "checkpoints" / "last" / "meta.json").is_file():
        raise ConfigError(f"--resume: no complete checkpoint in {run_dir / 'checkpoints' / 'last'}")
    if info.is_main:
        save_config(cfg, run_dir / "config.yaml")
    return run_dir


def broadcast_path(path: Path | None, info: DistInfo) -> Path:
    """Rank 0 names the run folder (a timestamp by default); the others use the same."""
    if not info.enabled:
        return path
    box = [str(path) if path else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return Path(box[0])

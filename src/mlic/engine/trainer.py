"""The trainer: model, optimizer, schedule, loss, EMA, mixing, built once from the config;
its state (everything an exact resume needs) saved and restored as plain tensors and numbers."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mlic.config import ConfigError, TrainConfig
from mlic.data.dataset import MultiLabelDataset
from mlic.data.mixing import Mixer
from mlic.engine.console import log
from mlic.engine.distributed import DistInfo
from mlic.engine.ema import ModelEma
from mlic.engine.loop import StepOptions
from mlic.engine.optim import build_optimizer, build_scheduler
from mlic.engine.precision import resolve_precision
from mlic.engine.run_folder import model_kwargs
from mlic.losses import auto_pos_weight, build_loss
from mlic.models import build_model


@dataclass
class Trainer:
    """Everything ``fit`` builds once and the epoch loop uses."""

    model: torch.nn.Module  # what is trained: the bare model, or wrapped by DDP / torch.compile
    raw: torch.nn.Module  # the bare model: evaluated and saved
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: torch.nn.Module
    opts: StepOptions
    ema: ModelEma | None
    mixer: Mixer | None


def build_trainer(
    cfg: TrainConfig,
    num_classes: int,
    train_ds: MultiLabelDataset,
    steps_per_epoch: int,
    device: torch.device,
    info: DistInfo,
) -> Trainer:
    o = cfg.optim
    raw = _build_model(cfg, num_classes, device, info)
    precision = resolve_precision(cfg.runtime.precision, device)
    channels_last = cfg.runtime.channels_last and device.type in ("cpu", "cuda")
    raw.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = build_optimizer(raw, o.optimizer, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum)
    optim_steps = math.ceil(steps_per_epoch / o.accum_steps)
    scheduler = build_scheduler(
        optimizer, o.schedule, total_steps=optim_steps * o.epochs, warmup_steps=round(o.warmup_epochs * optim_steps)
    )
    pos_weight = auto_pos_weight(train_ds.targets, train_ds.masks).to(device) if o.pos_weight == "auto" else None
    loss_fn = build_loss(
        o.loss,
        pos_weight=pos_weight,
        gamma=o.focal_gamma,
        gamma_pos=o.asl_gamma_pos,
        gamma_neg=o.asl_gamma_neg,
        clip=o.asl_clip,
    )
    scaler = torch.amp.GradScaler(device.type) if precision.use_scaler else None
    opts = StepOptions(precision, channels_last, o.accum_steps, o.clip_grad, scaler=scaler, pre=train_ds.pipeline.pre)
    mixer = None
    if o.mixup_alpha > 0 or o.cutmix_alpha > 0:
        mixer = Mixer(
            mixup_alpha=o.mixup_alpha,
            cutmix_alpha=o.cutmix_alpha,
            prob=o.mix_prob,
            generator=torch.Generator(device="cpu").manual_seed(cfg.seed),
        )
    ema = ModelEma(raw, o.ema_decay) if o.ema else None
    model = raw
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.runtime.compile:
        # Off by default: on CPU, inductor measured slower than eager for training (issue 5's table).
        model = torch.compile(model)
    log(
        f"precision {precision.name}, channels_last {channels_last}, optimizer {o.optimizer}, schedule {o.schedule}, "
        f"loss {o.loss}"
        + (", EMA" if ema else "")
        + (", MixUp/CutMix" if mixer else "")
        + (f", DDP x{info.world_size}" if info.enabled else "")
    )
    return Trainer(model, raw, optimizer, scheduler, loss_fn, opts, ema, mixer)


def _build_model(cfg: TrainConfig, num_classes: int, device: torch.device, info: DistInfo) -> torch.nn.Module:
    # Every rank builds the model from the same seed, so initial weights are identical (DDP also
    # broadcasts rank 0's at start-up); data order and augmentation differ per rank by sample index.
    torch.manual_seed(cfg.seed)
    try:
        model = build_model(cfg.model.name, num_classes, **model_kwargs(cfg))
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"--model {cfg.model.name}: {exc}") from None
    if cfg.model.pretrained:
        from mlic.models.pretrained import load_pretrained

        try:
            log(f"pretrained weights: {load_pretrained(model, cfg.model.pretrained).summary()}")
        except ValueError as exc:
            raise ConfigError(f"--pretrained: {exc}") from None
    if cfg.runtime.sync_bn and info.enabled:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def trainer_state(t: Trainer) -> dict[str, Any]:
    """Optimizer, schedule, scaler, EMA bookkeeping, mixing and every RNG, as tensors and plain values
    (so ``torch.load(weights_only=True)`` can read it back)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "rng": {
            "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }
    if t.opts.scaler is not None:
        state["scaler"] = t.opts.scaler.state_dict()
    if t.mixer is not None and t.mixer.generator is not None:
        state["mixer_rng"] = t.mixer.generator.get_state()
    if t.ema is not None:
        state["ema_updates"] = t.ema.updates
    return state


def load_trainer_state(t: Trainer, state: dict[str, Any]) -> None:
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    if t.opts.scaler is not None and "scaler" in state:
        t.opts.scaler.load_state_dict(state["scaler"])
    if t.mixer is not None and "mixer_rng" in state:
        t.mixer.generator.set_state(state["mixer_rng"])
    if t.ema is not None:
        t.ema.updates = int(state.get("ema_updates", 0))
    rng = state["rng"]
    random.setstate(_as_tuple(rng["python"]))
    kind, keys, *rest = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def set_freeze(model: torch.nn.Module, freeze_epochs: int, epoch: int) -> None:
    if freeze_epochs <= 0 or epoch not in (1, freeze_epochs + 1):
        return
    from mlic.models.pretrained import set_backbone_trainable

    set_backbone_trainable(model, epoch > freeze_epochs)
    log("backbone frozen: training the head only" if epoch == 1 else "backbone unfrozen")

"""The trainer: model, optimizer, schedule, loss, EMA, mixing, built once from the model, optim and runtime
settings; its state (everything an exact resume needs) saved and restored as plain tensors and numbers."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mlic.config import ConfigError, ModelConfig, OptimConfig, RuntimeConfig
from mlic.data.mixing import Mixer
from mlic.engine.data_setup import RunData
from mlic.engine.ema import ModelEma
from mlic.engine.optim import build_optimizer
from mlic.engine.schedule import LrSchedule
from mlic.evaluation.scoring import Forward
from mlic.losses import build_loss, pos_weight_from_counts
from mlic.models import build_model
from mlic.models.hub import InitialWeights
from mlic.runtime.console import log
from mlic.runtime.distributed import DistInfo
from mlic.runtime.precision import resolve_precision

# What a resumed run may find in train_state.pt; anything else means it was written by something else.
STATE_KEYS = {"optimizer", "schedule", "rng", "scaler", "mixer_rng", "ema_updates"}


@dataclass
class StepOptions:
    """How one optimisation step is done; plain values, resolved by ``build_trainer``."""

    forward: Forward  # device, memory layout, precision, normalisation of the uint8 batches
    accum_steps: int = 1  # optimizer step every N batches
    clip_grad: float = 0.0  # max global gradient norm; 0 = no clipping
    max_bad_steps: int = 5  # consecutive non-finite losses before giving up
    scaler: torch.amp.GradScaler | None = None  # fp16 on CUDA only
    freeze_bn: bool = False  # BatchNorm layers kept in eval mode while training (running statistics as loaded)
    sync_free: bool = False  # loss and non-finite checks stay on the device (``loop.LossTally``); CUDA, fused optimizer


@dataclass
class Trainer:
    """Everything ``fit`` builds once and the epoch loop uses."""

    model: torch.nn.Module  # what is trained: the bare model, or wrapped by DDP / torch.compile
    raw: torch.nn.Module  # the bare model: evaluated and saved
    optimizer: torch.optim.Optimizer
    schedule: LrSchedule
    loss_fn: torch.nn.Module
    opts: StepOptions
    ema: ModelEma | None = None
    mixer: Mixer | None = field(default=None)
    initial_weights: dict | None = None  # where the weights came from (``InitialWeights.source``), for checkpoints


def model_kwargs(model: ModelConfig) -> dict[str, Any]:
    """Constructor arguments, stored in checkpoints so the model can be rebuilt (plain JSON values)."""
    kwargs: dict[str, Any] = {"drop_rate": model.drop_rate}
    if model.name == "seed_cnn":
        kwargs |= {"widths": list(model.widths), "hidden": model.hidden}
    return kwargs


def build_trainer(
    model_cfg: ModelConfig,
    o: OptimConfig,
    runtime: RuntimeConfig,
    data: RunData,
    *,
    seed: int,
    device: torch.device,
    info: DistInfo,
    weights: InitialWeights | None = None,
) -> Trainer:
    """The trainer for ``data``'s training set and loader; ``weights``: the resolved ``--pretrained``
    (``resolve_weights``), loaded into the model."""
    train_ds, steps_per_epoch = data.train_ds, len(data.train_loader)
    raw = build_network(model_cfg, len(train_ds.class_names), seed=seed, sync_bn=runtime.sync_bn and info.enabled,
                        weights=weights)  # fmt: skip
    precision = resolve_precision(runtime.precision, device)
    channels_last = runtime.channels_last and device.type in ("cpu", "cuda")
    raw.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # On CUDA, Adam/AdamW run fused: one kernel per step, and it can skip a non-finite step on the device
    fused = device.type == "cuda" and o.optimizer in ("adam", "adamw")
    optimizer, schedule = _optimizer_and_schedule(raw, o, steps_per_epoch, fused=fused)
    loss_fn = _loss(o, train_ds.labels, device)
    scaler = torch.amp.GradScaler(device.type) if precision.use_scaler else None
    forward = Forward(device, train_ds.pipeline.pre, channels_last, precision)
    opts = StepOptions(forward, o.accum_steps, o.clip_grad, scaler=scaler, freeze_bn=model_cfg.freeze_bn,
                       sync_free=fused and scaler is None)  # fmt: skip
    mixer = None
    if o.mixup_alpha > 0 or o.cutmix_alpha > 0:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        mixer = Mixer(mixup_alpha=o.mixup_alpha, cutmix_alpha=o.cutmix_alpha, prob=o.mix_prob, generator=generator)
    ema = ModelEma(raw, o.ema_decay) if o.ema else None
    model = raw
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
    if runtime.compile:
        model = torch.compile(model)  # off by default: on CPU, inductor measured slower than eager for training
    extras = (
        (f", layer decay {o.layer_decay}" if o.layer_decay < 1 else "")
        + (", BatchNorm statistics frozen" if model_cfg.freeze_bn else "")
        + (", EMA" if ema else "")
        + (", MixUp/CutMix" if mixer else "")
        + (f", DDP x{info.world_size}" * info.enabled)
    )
    log(
        f"precision {precision.name}, channels_last {channels_last}, optimizer {o.optimizer}, schedule {o.schedule}, "
        f"loss {o.loss}{extras}"
    )
    return Trainer(model, raw, optimizer, schedule, loss_fn, opts, ema, mixer, weights.source if weights else None)


def _loss(o: OptimConfig, labels, device: torch.device) -> torch.nn.Module:
    pos_weight = None
    if o.pos_weight == "auto":
        pos_weight = pos_weight_from_counts(labels.positive_counts(), labels.known_counts()).to(device)
    return build_loss(o.loss, pos_weight=pos_weight, gamma=o.focal_gamma, gamma_pos=o.asl_gamma_pos,
                      gamma_neg=o.asl_gamma_neg, clip=o.asl_clip)  # fmt: skip


def _optimizer_and_schedule(raw: torch.nn.Module, o: OptimConfig, steps_per_epoch: int, *, fused: bool):
    try:
        optimizer = build_optimizer(raw, o.optimizer, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum,
                                    layer_decay=o.layer_decay, fused=fused)  # fmt: skip
    except ImportError as exc:
        raise ConfigError(f"--layer-decay: {exc}") from None
    optim_steps = math.ceil(steps_per_epoch / o.accum_steps)
    # Each group's own starting rate is its base: layer-wise decay survives every schedule's scaling.
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    schedule = LrSchedule(
        o.schedule, optim_steps * o.epochs, base_lrs, warmup_steps=round(o.warmup_epochs * optim_steps)
    )
    schedule.apply(optimizer)
    return optimizer, schedule


def build_network(
    model_cfg: ModelConfig, num_classes: int, *, seed: int, sync_bn: bool, weights: InitialWeights | None = None
) -> torch.nn.Module:
    """The bare model, from ``weights`` where given (a hub download or a local file, already resolved)."""
    # Every rank builds the model from the same seed, so initial weights are identical (DDP also
    # broadcasts rank 0's at start-up); data order and augmentation differ per rank by sample index.
    torch.manual_seed(seed)
    try:
        model = build_model(model_cfg.name, num_classes, **model_kwargs(model_cfg))
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"--model {model_cfg.name}: {exc}") from None
    if weights is not None and weights.path is not None:
        from mlic.models.pretrained import load_pretrained

        try:
            log(f"pretrained weights: {load_pretrained(model, weights.path).summary()}")
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"--pretrained: {exc}") from None
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def resolve_weights(model_cfg: ModelConfig, *, progress: bool, resumed: dict | None = None) -> InitialWeights | None:
    """``--pretrained`` resolved to a local file (hub weights downloaded into the Hugging Face cache if needed).

    ``resumed``: the last checkpoint's meta of a run being resumed, whose weights replace the initial ones anyway:
    nothing is downloaded or read then, and the normalisation and the weights' source come from the checkpoint.
    """
    if not model_cfg.pretrained:
        return None
    from mlic.models.hub import Normalization, resolve_initial_weights

    if resumed is not None:
        pre = resumed["preprocessing"]
        norm = Normalization(tuple(pre["mean"]), tuple(pre["std"]))
        return InitialWeights(None, resumed.get("initial_weights") or {}, norm)
    try:
        weights = resolve_initial_weights(model_cfg.name, model_cfg.pretrained, progress=progress)
    except FileNotFoundError as exc:
        raise ConfigError(f"--pretrained: {exc}") from None
    where = weights.source.get("repo") or weights.source["file"]
    log(f"initial weights: {where} ({weights.source.get('revision') or 'local file'}, "
        f"sha256 {weights.source['sha256'][:12]})")  # fmt: skip
    norm = weights.normalization
    if norm is not None:
        log(f"input normalisation of the pretrained backbone: mean {norm.mean}, std {norm.std}")
    return weights


def trainer_state(t: Trainer) -> dict[str, Any]:
    """Optimizer, schedule, scaler, EMA bookkeeping, mixing and every RNG, as tensors and plain values
    (so ``torch.load(weights_only=True)`` can read it back)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "optimizer": t.optimizer.state_dict(),
        "schedule": t.schedule.state_dict(),
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
    """Restore ``trainer_state``'s output; a state from another run or another mlic is a ValueError naming why."""
    unknown = set(state) - STATE_KEYS
    if unknown or not {"optimizer", "schedule", "rng"} <= set(state):
        raise ValueError(f"unexpected keys {sorted(unknown)} or missing optimizer/schedule/rng (keys: {sorted(state)})")
    t.optimizer.load_state_dict(state["optimizer"])
    t.schedule.load_state_dict(state["schedule"])
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


def freeze_norm_statistics(model: torch.nn.Module) -> None:
    """Put every BatchNorm layer in eval mode: it normalises with, and no longer updates, its running statistics.

    For fine-tuning with small batches, where a batch's own statistics are noisy estimates and would drift the
    pretrained ones. Called after each ``model.train()``; the layers' weights and biases still get gradients.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()

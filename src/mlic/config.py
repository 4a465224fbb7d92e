"""Typed run configuration: dataclasses at the edge, loaded from YAML or flags, saved with every run.

Library functions never take this object whole; ``engine.fit`` unpacks it into plain arguments.
Unknown keys are errors (a typo in a YAML file must not be silently ignored).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad config file or value; the message names the key."""


@dataclass
class DataConfig:
    train: str | None = None  # annotation file or folder
    val: str | None = None  # when absent, ``val_fraction`` of train is held out (deterministically)
    test: str | None = None
    format: str = "auto"
    image_root: str | None = None  # image paths are relative to this (default: the label file's folder)
    label_delimiter: str | None = None  # inside a CSV tag column; None: the reader's default (space)
    val_fraction: float = 0.1
    image_size: int = 224  # the seed's input size
    augment: str = "light"  # the seed's: horizontal flip only
    num_workers: int = -1  # -1: chosen from the CPU count
    skip_bad_images: bool = False  # bad files found by the header scan: stop (default) or leave them out
    cache: str = "auto"  # decoded-image cache: auto (used unless the disk lacks room) | off
    cache_dir: str | None = None  # default: $MLIC_CACHE_DIR, else ~/.cache/mlic


@dataclass
class ModelConfig:
    name: str = "seed_cnn"
    drop_rate: float = 0.5
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    hidden: int = 512
    pretrained: str | None = None  # local weights (.safetensors, or a torch file loaded with weights_only=True)
    freeze_backbone_epochs: int = 0  # train only the head for the first N epochs


@dataclass
class OptimConfig:
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0  # never applied to norms and biases
    momentum: float = 0.9  # sgd only
    epochs: int = 10
    batch_size: int = 32
    schedule: str = "constant"  # constant | cosine | onecycle
    warmup_epochs: float = 0.0  # linear warm-up (cosine)
    clip_grad: float = 0.0  # max gradient norm; 0 = off
    accum_steps: int = 1  # gradient accumulation: optimizer step every N batches
    ema: bool = False  # also keep and evaluate an EMA copy of the weights
    ema_decay: float = 0.999
    early_stopping: int = 0  # stop after N epochs without a better val mAP; 0 = off
    loss: str = "bce"  # bce | focal | asl
    pos_weight: str = "none"  # none | auto (bce only: negatives/positives per class, clipped)
    focal_gamma: float = 2.0
    asl_gamma_pos: float = 0.0
    asl_gamma_neg: float = 4.0
    asl_clip: float = 0.05
    mixup_alpha: float = 0.0  # multi-label MixUp (targets mixed, not argmaxed); 0 = off
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0


@dataclass
class ThresholdConfig:
    method: str = "per_class_f1"  # per_class_f1 | global_f1 | fixed
    min_positives: int = 5  # fewer validation positives: the class uses the global threshold
    fixed: float = 0.5


@dataclass
class RuntimeConfig:
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = False  # DDP: synchronise BatchNorm statistics across ranks
    deterministic: bool = False  # torch.use_deterministic_algorithms: bit-identical reruns, maybe slower


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    thresholds: ThresholdConfig = field(default_factory=ThresholdConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    name: str | None = None  # run folder name; default: a timestamp
    output_dir: str = "runs"
    seed: int = 0
    device: str = "auto"  # auto: cuda, then mps, then cpu
    progress: bool = True
    dry_run: bool = False  # one batch of train and val, end to end, then stop
    checkpoint_every: int = 0  # also write checkpoints/last every N optimizer steps; 0 = at epoch ends only
    report: bool = True  # write report.html at the end
    tensorboard: bool = False  # also write TensorBoard event files to runs/<name>/tensorboard
    max_minutes: float = 0.0  # training time budget; after epoch 1 the epochs (and schedule) are fitted to it

    def validate(self) -> None:
        checks = [
            (self.optim.epochs >= 1, "optim.epochs must be >= 1"),
            (self.optim.batch_size >= 1, "optim.batch_size must be >= 1"),
            (self.optim.lr > 0, "optim.lr must be > 0"),
            (self.optim.accum_steps >= 1, "optim.accum_steps must be >= 1"),
            (self.optim.pos_weight in ("none", "auto"), "optim.pos_weight must be none|auto"),
            (0.0 < self.thresholds.fixed <= 1.0, "thresholds.fixed must be in (0, 1]"),
            (0.0 <= self.data.val_fraction < 1.0, "data.val_fraction must be in [0, 1)"),
            (self.data.image_size >= 16, "data.image_size must be >= 16"),
            (self.data.cache in ("auto", "off"), "data.cache must be auto|off"),
            (0.0 <= self.model.drop_rate < 1.0, "model.drop_rate must be in [0, 1)"),
            (
                self.device in ("auto", "cpu", "mps") or self.device.startswith("cuda"),
                "device must be auto|cpu|cuda[:N]|mps",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.data.train is None:
            raise ConfigError("data.train is required (pass DATA on the command line or set it in the config)")


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any], cls: type = TrainConfig, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; known: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(value or {}, hint, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, hint, prefix + key)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a simple type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} is not a valid {hint}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, key) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "3e-4" (no dot) as a string; users write learning rates that way all the time.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected float, got {value!r}") from None
    if hint in (int, float, str, bool) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


def load_config(path: str | Path) -> TrainConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars) and re-validate types."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {item!r}: unknown section {part!r}")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"override {item!r}: unknown key {dotted!r}")
        node[leaf] = yaml.safe_load(raw)
    return from_dict(data)


# Flat names used by CLI flags and by ``mlic.train(**options)``, mapped to their config keys.
FLAT_KEYS = {
    **{
        k: f"data.{k}"
        for k in (
            "train",
            "val",
            "test",
            "format",
            "image_root",
            "label_delimiter",
            "val_fraction",
            "image_size",
            "augment",
            "num_workers",
            "cache",
            "cache_dir",
        )
    },
    "model": "model.name",
    **{k: f"model.{k}" for k in ("drop_rate", "widths", "hidden", "pretrained", "freeze_backbone_epochs")},
    **{f.name: f"optim.{f.name}" for f in dataclasses.fields(OptimConfig)},
    **{f"threshold_{f.name}": f"thresholds.{f.name}" for f in dataclasses.fields(ThresholdConfig)},
    **{f.name: f"runtime.{f.name}" for f in dataclasses.fields(RuntimeConfig)},
    **{
        k: k
        for k in (
            "name",
            "output_dir",
            "seed",
            "device",
            "progress",
            "dry_run",
            "max_minutes",
            "checkpoint_every",
            "report",
            "tensorboard",
        )
    },
}


def apply_flat(cfg: TrainConfig, **options: Any) -> TrainConfig:
    """Set config values by flat name (``epochs=3``, ``image_size=64``); ``None`` values are skipped."""
    data = to_dict(cfg)
    for flat, value in options.items():
        if value is None:
            continue
        if flat not in FLAT_KEYS:
            raise ConfigError(f"unknown option {flat!r}; known: {', '.join(sorted(FLAT_KEYS))}")
        node = data
        *parents, leaf = FLAT_KEYS[flat].split(".")
        for part in parents:
            node = node[part]
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return from_dict(data)

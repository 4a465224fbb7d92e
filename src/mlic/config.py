"""Typed run configuration: the one place a setting is defined.

Each leaf field is declared with ``setting(default, help, ...)``: its help text and, where it has them, its
allowed values and valid range. Every other view of a setting is derived from these fields: the flat names
that CLI flags and ``mlic.train(**options)`` use (``SETTINGS``), the ``--set section.key=value`` keys, the
YAML keys, and the ``--help`` texts with their defaults. A value is checked against its field whenever it is
set (from YAML, ``--set``, a flag or a keyword), so a typo fails at once, before any data is read.

The allowed values of choice settings are defined here too (``OPTIMIZERS``, ``LOSSES``...), and the builders
that dispatch on them import these very tuples: the checks and the builders cannot disagree. This module
imports nothing heavy, since ``mlic --help`` builds its flags from it.

Library functions never take this object whole; ``engine.fit`` unpacks it into plain values.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlic.errors import UserError

# Allowed values of the choice settings; the builders named beside them dispatch on these tuples.
LABEL_FORMATS = ("auto", "csv", "tsv", "jsonl", "coco", "voc", "openimages", "folder")  # data.readers
AUGMENTATIONS = ("none", "light", "standard", "strong")  # data.transforms.build_train_pipeline
CACHE_MODES = ("auto", "off")  # engine.data_setup
OPTIMIZERS = ("adam", "adamw", "sgd")  # engine.optim.build_optimizer
SCHEDULES = ("constant", "cosine", "onecycle")  # engine.schedule.LrSchedule
LOSSES = ("bce", "focal", "asl")  # losses.build_loss
POS_WEIGHTS = ("none", "auto")  # engine.trainer
THRESHOLD_METHODS = ("per_class", "global", "fixed")  # evaluation.thresholds.tune_thresholds
CALIBRATIONS = ("platt", "temperature", "none")  # evaluation.calibration.fit_calibration
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # runtime.precision.resolve_precision
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")  # runtime.device.select_device
# Pillow's own default limit (1024**3 // 4 // 3, about 9459 x 9459 pixels): larger images need over 256 MiB as
# RGB before any resizing, and a tiny file declaring one is the classic decompression bomb.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485


class ConfigError(UserError, ValueError):
    """A bad config file or value; the message names the key (and the flag that sets it)."""


@dataclass(frozen=True)
class Rule:
    """A range a value must lie in: ``check(value)`` is true inside it; ``text`` says it in words."""

    check: Callable[[Any], bool]
    text: str


def is_objective(text: object) -> bool:
    """Whether ``text`` names a threshold objective (``mlic.evaluation.thresholds.Objective``)."""
    if not isinstance(text, str):
        return False
    kind, _, value = text.partition(":")
    if kind == "f1":
        return not value
    try:
        number = float(value)
    except ValueError:
        return False
    if kind == "f_beta":
        return number > 0 and math.isfinite(number)
    return kind in ("precision_at_recall", "recall_at_precision") and 0 < number <= 1


def at_least(low: float) -> Rule:
    return Rule(lambda v: v >= low, f"must be >= {low}")


def above(low: float) -> Rule:
    return Rule(lambda v: v > low, f"must be > {low}")


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Rule:
    def check(v: float) -> bool:
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    text = f"must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return Rule(check, text)


DEVICE_RULE = Rule(lambda v: DEVICE_PATTERN.fullmatch(v) is not None, "must be auto, cpu, cuda, cuda:N or mps")


def setting(
    default: Any,
    help: str,
    *,
    choices: Sequence[str] = (),
    rule: Rule | None = None,
    flat: str | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    aliases: dict[str, str] | None = None,
) -> Any:
    """A config field and everything its other views are derived from.

    ``flat``: the name used by ``mlic.train(**options)`` and, dashed, by the CLI flag (default: the field name);
    ``flag``: a CLI flag other than ``--<flat>``. ``help`` says what the setting does, without its default, which
    ``--help`` appends from ``default``. ``aliases``: old names of choices, still read from configs (a run
    folder's config.yaml must resume after a rename).
    """
    metadata = {"help": help, "choices": tuple(choices), "rule": rule, "flat": flat, "flag": flag, "metavar": metavar,
                "aliases": dict(aliases or {}), "const": None}  # fmt: skip
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def optional_value(setting_field: Any, const: str) -> Any:
    """``setting_field`` whose flag may be given without a value, meaning ``const`` (``--pretrained`` alone is
    ``--pretrained hub``)."""
    return field(default=setting_field.default, metadata={**setting_field.metadata, "const": const})


@dataclass
class DataConfig:
    train: str | None = setting(None, "training labels: a label file or folder", metavar="DATA")
    val: str | None = setting(None, "validation labels (default: hold out --val-fraction of DATA)", metavar="FILE")
    test: str | None = setting(None, "test labels, evaluated with the best checkpoint at the end", metavar="FILE")
    format: str = setting("auto", "label format (auto: from the file's suffix and content)", choices=LABEL_FORMATS)
    shard_index: str | None = setting(
        None, "index.json of streamed shards (default: beside the shards; needed for pipe: URLs)", metavar="URL"
    )
    image_root: str | None = setting(
        None, "folder image paths are relative to (default: the label file's)", metavar="DIR"
    )
    label_delimiter: str | None = setting(None, "separator inside a tag column (default: space)", metavar="SEP")
    val_fraction: float = setting(
        0.1, "share of DATA held out when there is no --val", rule=between(0, 1, high_open=True)
    )
    image_size: int = setting(224, "model input size in pixels (square)", rule=at_least(16))
    augment: str = setting("light", "augmentation preset (light: horizontal flip, the seed's)", choices=AUGMENTATIONS)
    num_workers: int = setting(
        -1,
        "DataLoader worker processes (-1: chosen from the CPU count)",
        flag="--workers",
        rule=at_least(-1),
        metavar="N",
    )
    skip_bad_images: bool = setting(
        False,
        "leave out the images the pre-training scan finds missing, unreadable, truncated or too large, instead of "
        "stopping",
    )
    max_image_pixels: int = setting(
        DEFAULT_MAX_IMAGE_PIXELS,
        "largest image decoded, width x height; larger files are refused as decompression bombs are",
        rule=at_least(1),
        metavar="N",
    )
    cache: str = setting(
        "auto",
        "decoded-image cache: decode and resize each image once (auto: unless the disk lacks room)",
        choices=CACHE_MODES,
    )
    cache_dir: str | None = setting(
        None, "where caches live (default: $MLIC_CACHE_DIR, else ~/.cache/mlic)", metavar="DIR"
    )
    cache_max_gb: float = setting(
        100.0,
        "disk all decoded-image caches may use together; the least recently used are deleted to make room "
        "(0: no limit but the free space)",
        rule=at_least(0),
        metavar="GB",
    )


@dataclass
class ModelConfig:
    name: str = setting(
        "seed_cnn", "model: seed_cnn, or any timm model name (the zoo extra)", flat="model", metavar="NAME"
    )
    drop_rate: float = setting(0.5, "dropout before the classifier", rule=between(0, 1, high_open=True))
    widths: list[int] = setting([32, 64, 128, 256], "seed_cnn: channels of the four conv blocks", metavar="N")
    hidden: int = setting(512, "seed_cnn: width of the hidden layer of the head", rule=at_least(1))
    pretrained: str | None = optional_value(
        setting(
            None,
            "initial weights: the model's default hub weights (the flag alone, or 'hub'), hf-hub:ORG/NAME[@REV], "
            "or a local file (.safetensors, or .pth read weights-only)",
            metavar="hub|hf-hub:ORG/NAME|FILE",
        ),
        "hub",
    )
    freeze_backbone_epochs: int = setting(0, "train only the head for the first N epochs", rule=at_least(0))
    freeze_bn: bool = setting(
        False, "keep BatchNorm running statistics as loaded (for small batches when fine-tuning); scales still train"
    )


@dataclass
class OptimConfig:
    optimizer: str = setting("adam", "optimizer", choices=OPTIMIZERS)
    lr: float = setting(1e-3, "learning rate (the peak of a schedule)", rule=above(0))
    weight_decay: float = setting(0.0, "weight decay, never applied to norms and biases", rule=at_least(0))
    momentum: float = setting(0.9, "sgd momentum (Nesterov)", rule=between(0, 1, high_open=True))
    epochs: int = setting(10, "passes over the training data", rule=at_least(1))
    batch_size: int = setting(32, "images per batch", rule=at_least(1))
    schedule: str = setting("constant", "learning-rate schedule", choices=SCHEDULES)
    warmup_epochs: float = setting(0.0, "linear warm-up of the cosine schedule, in epochs", rule=at_least(0))
    layer_decay: float = setting(
        1.0,
        "layer-wise learning-rate decay: each layer group below the head trains at this times the lr of the one "
        "above (1: off; 0.7-0.9 when fine-tuning)",
        rule=between(0, 1, low_open=True),
    )
    clip_grad: float = setting(0.0, "max global gradient norm (0: no clipping)", rule=at_least(0))
    accum_steps: int = setting(1, "gradient accumulation: an optimizer step every N batches", rule=at_least(1))
    ema: bool = setting(False, "also keep and validate an EMA of the weights; the better copy becomes best")
    ema_decay: float = setting(0.999, "EMA decay per optimizer step", rule=between(0, 1, low_open=True, high_open=True))
    early_stopping: int = setting(0, "stop after N epochs without a better validation mAP (0: off)", rule=at_least(0))
    loss: str = setting("bce", "loss (asl: asymmetric loss, for heavily imbalanced labels)", choices=LOSSES)
    pos_weight: str = setting(
        "none", "bce: weight positives by label rarity (negatives/positives, clipped)", choices=POS_WEIGHTS
    )
    focal_gamma: float = setting(2.0, "focal loss: focusing parameter", rule=at_least(0))
    asl_gamma_pos: float = setting(0.0, "asymmetric loss: focusing on positives", rule=at_least(0))
    asl_gamma_neg: float = setting(4.0, "asymmetric loss: focusing on negatives", rule=at_least(0))
    asl_clip: float = setting(0.05, "asymmetric loss: probability margin for negatives", rule=between(0, 1))
    mixup_alpha: float = setting(0.0, "multi-label MixUp strength, targets mixed (0: off)", rule=at_least(0))
    cutmix_alpha: float = setting(0.0, "CutMix strength (0: off)", rule=at_least(0))
    mix_prob: float = setting(1.0, "share of batches MixUp/CutMix is applied to", rule=between(0, 1))


@dataclass
class ThresholdConfig:
    method: str = setting(
        "per_class",
        "how decision thresholds are tuned on validation: one per class, one for all, or fixed",
        flat="threshold_method",
        choices=THRESHOLD_METHODS,
        aliases={"per_class_f1": "per_class", "global_f1": "global"},
    )
    objective: str = setting(
        "f1",
        "what a threshold maximises: f1, f_beta:B, precision_at_recall:R or recall_at_precision:P",
        flat="threshold_objective",
        rule=Rule(is_objective, "must be f1, f_beta:B (B > 0), precision_at_recall:R or recall_at_precision:P "
                  "(R, P in (0, 1])"),
        metavar="OBJECTIVE",
    )  # fmt: skip
    min_positives: int = setting(
        5,
        "classes with fewer validation positives use the global threshold",
        flat="threshold_min_positives",
        rule=at_least(0),
    )
    shrinkage: float = setting(
        10.0,
        "pull each class's threshold toward a prior (its calibrated F1 optimum F*/2, else the global "
        "threshold), in logit space, with weight K / (K + positives)",
        flat="threshold_shrinkage",
        rule=at_least(0),
        metavar="K",
    )
    fixed: float = setting(
        0.5, "the threshold of method fixed", flat="threshold_fixed", rule=between(0, 1, low_open=True)
    )
    calibration: str = setting(
        "platt",
        "per-class calibration fitted on validation before the thresholds; predict, evaluate, serve and "
        "exports then give calibrated probabilities",
        flat="calibration",
        choices=CALIBRATIONS,
    )


@dataclass
class RuntimeConfig:
    precision: str = setting(
        "auto", "numeric precision (auto: bf16 where the hardware has it, else fp32)", choices=PRECISIONS
    )
    channels_last: bool = setting(True, "channels-last memory layout (faster on CPU and CUDA)")
    compile: bool = setting(False, "torch.compile the model")
    sync_bn: bool = setting(False, "DDP: synchronise BatchNorm statistics across ranks")
    deterministic: bool = setting(False, "deterministic algorithms only: bit-identical reruns, maybe slower")


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    thresholds: ThresholdConfig = field(default_factory=ThresholdConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    name: str | None = setting(None, "run folder name under --output-dir (default: a timestamp)")
    output_dir: str = setting("runs", "where run folders go", metavar="DIR")
    seed: int = setting(0, "random seed: data order, augmentation, initial weights, a held-out split")
    device: str = setting("auto", "device (auto: cuda, then mps, then cpu)", rule=DEVICE_RULE, metavar="DEVICE")
    progress: bool = setting(True, "progress bars")
    dry_run: bool = setting(False, "run one batch of train and validation end to end, then stop")
    checkpoint_every: int = setting(0, "also checkpoint every N steps (0: at epoch ends only)", rule=at_least(0))
    report: bool = setting(True, "write report.html at the end")
    tensorboard: bool = setting(False, "also write TensorBoard event files to runs/<name>/tensorboard")
    max_minutes: float = setting(
        0.0, "training time budget: epochs and schedule fitted to it (0: none)", rule=at_least(0)
    )

    def validate(self, *, resuming: bool = False) -> None:
        """What no single field can check: settings that depend on each other, and the required ones
        (``resuming``: the labels may come from the run folder's own config, checked when it is read)."""
        if self.optim.pos_weight == "auto" and self.optim.loss != "bce":
            raise ConfigError("optim.pos_weight=auto (--pos-weight) applies to --loss bce only")
        if self.data.train is None and not resuming:
            raise ConfigError("data.train is required (pass DATA on the command line or set it in the config)")


# ---- the table derived from the fields -------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One leaf of ``TrainConfig`` with every name it goes by."""

    key: str  # dotted config and --set key: "optim.lr"
    flat: str  # mlic.train(**options) keyword: "lr"
    flag: str  # CLI flag: "--lr"
    hint: Any  # the field's type: int, float, str, bool, str | None, list[int]
    default: Any
    help: str
    choices: tuple[str, ...]
    rule: Rule | None
    metavar: str | None
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    const: Any = None  # the value of the flag given alone (``--pretrained`` means ``--pretrained hub``)

    @property
    def section(self) -> str:
        return self.key.rsplit(".", 1)[0] if "." in self.key else ""

    def check(self, value: Any) -> Any:
        """``value`` converted to the field's type and checked against its choices and range."""
        value = _coerce(value, self.hint, self.where)
        if value is None:
            return value
        value = self.aliases.get(value, value) if isinstance(value, str) else value
        if self.choices and value not in self.choices:
            raise ConfigError(f"{self.where}: {value!r} is not allowed; choose one of: {', '.join(self.choices)}")
        if self.rule is not None and not self.rule.check(value):
            raise ConfigError(f"{self.where} {self.rule.text}, got {value!r}")
        return value

    @property
    def where(self) -> str:
        return f"{self.key} ({self.flag})"


def collect_settings(cls: type, prefix: str = "") -> list[Setting]:
    """The leaves of dataclass ``cls`` (nested dataclasses are walked), each with its names and checks.

    Used for ``TrainConfig`` here, and for the settings of other commands declared the same way
    (``mlic.inference.serve.ServeLimits``).
    """
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            found += collect_settings(hint, f"{prefix}{f.name}.")
            continue
        meta = f.metadata
        flat = meta["flat"] or f.name
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        found.append(
            Setting(
                f"{prefix}{f.name}",
                flat,
                meta["flag"] or "--" + flat.replace("_", "-"),
                hint,
                default,
                meta["help"],
                meta["choices"],
                meta["rule"],
                meta["metavar"],
                meta.get("aliases", {}),
                meta.get("const"),
            )
        )
    return found


def _table() -> dict[str, Setting]:
    table: dict[str, Setting] = {}
    for s in collect_settings(TrainConfig):
        if s.flat in table:
            raise AssertionError(f"two config keys share the flat name {s.flat!r}: {table[s.flat].key}, {s.key}")
        table[s.flat] = s
    return table


# flat name -> Setting, for every leaf of TrainConfig
SETTINGS: dict[str, Setting] = _table()
BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS.values()}


# ---- reading, writing and changing configs ----------------------------------------------------------------


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any], cls: type = TrainConfig, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict: unknown keys, wrong types, choices and ranges fail by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; known: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for key, value in data.items():
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = from_dict(value or {}, hints[key], f"{prefix}{key}.")
        else:
            kwargs[key] = BY_KEY[prefix + key].check(value)
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
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def apply_overrides(cfg: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars); each is checked like its field."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        if dotted not in BY_KEY:
            raise ConfigError(f"--set {item!r}: unknown key {dotted!r}; e.g. {', '.join(list(BY_KEY)[:4])}, ...")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return from_dict(data)


def apply_flat(cfg: TrainConfig, **options: Any) -> TrainConfig:
    """Set config values by flat name (``epochs=3``, ``image_size=64``); ``None`` values are skipped."""
    data = to_dict(cfg)
    for flat, value in options.items():
        if value is None:
            continue
        if flat not in SETTINGS:
            raise ConfigError(f"unknown option {flat!r}; known: {', '.join(sorted(SETTINGS))}")
        node = data
        *parents, leaf = SETTINGS[flat].key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return from_dict(data)


def resolve_config(
    base: TrainConfig | str | Path | None = None, overrides: Sequence[str] = (), **options: Any
) -> TrainConfig:
    """The config a run uses: ``base`` (a config, a YAML file, or the defaults), then ``overrides``
    (``section.key=value``), then ``options`` by flat name; the same order as ``--config``, ``--set`` and flags."""
    if base is None:
        cfg = TrainConfig()
    elif isinstance(base, TrainConfig):
        cfg = from_dict(to_dict(base))  # a copy, checked
    else:
        cfg = load_config(base)
    return apply_flat(apply_overrides(cfg, overrides), **options)

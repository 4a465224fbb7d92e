"""Command-line flags derived from the config fields, so a flag cannot differ from the setting it sets.

``add_setting`` turns one ``mlic.config.SETTINGS`` entry into an argparse option: its name, type, metavar,
allowed values and help text with the default, all from the field. Subcommands that build a ``TrainConfig``
(train, data cache) leave the argparse default at None, so an absent flag keeps what ``--config`` and
``--set`` chose; the others (evaluate, predict...) take the field's default as their own. Either way a
flag such as ``--device`` or ``--workers`` is the same on every subcommand that has it.

Choices are not given to argparse: ``mlic.config`` checks them, and its message names the config key and the
allowed values in one line, for a flag, a ``--set`` key and a YAML file alike.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable
from typing import Any

from mlic.config import SETTINGS, Setting, apply_flat, apply_overrides, at_least, load_config
from mlic.config import TrainConfig as _TrainConfig

# Flags of TrainConfig settings that are not settings themselves, with the help each subcommand shows.
CONFIG_HELP = "YAML config (e.g. configs/default.yaml); --set and flags given here override it"
SET_HELP = "override any config key, e.g. --set optim.lr=3e-4 (repeatable)"


def format_default(value: Any) -> str:
    """A default as a user would type it: lists space-separated, booleans as on/off."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def help_text(s: Setting) -> str:
    text = s.help + ("" if s.default is None else f" (default: {format_default(s.default)})")
    return text.replace("%", "%%")  # argparse %-formats help strings


def add_setting(
    parser: argparse._ActionsContainer, setting: str | Setting, *, own_default: bool = False
) -> argparse.Action:
    """Add the flag of ``setting`` (a ``SETTINGS`` flat name, or a ``Setting`` of another settings dataclass);
    ``own_default``: argparse's default is the field's (no config to merge into). The dest is the flat name."""
    s = SETTINGS[setting] if isinstance(setting, str) else setting
    kwargs: dict[str, Any] = {"dest": s.flat, "help": help_text(s), "default": s.default if own_default else None}
    if s.hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        base = _base_type(s.hint)
        plain = {int: "N", float: "X"}.get(base, s.flat.upper())
        kwargs["metavar"] = s.metavar or ("{" + ",".join(s.choices) + "}" if s.choices else plain)
        if typing.get_origin(base) is list:
            kwargs |= {"nargs": "+", "type": typing.get_args(base)[0]}
        elif s.const is not None:
            kwargs |= {"nargs": "?", "const": s.const}
        elif own_default:  # no config will check the value: argparse does, against the field's rules
            kwargs["type"] = _checked(s, base)
        elif base in (int, float):
            kwargs["type"] = base
    return parser.add_argument(s.flag, **kwargs)


def _checked(s: Setting, base: type):
    """An argparse type: the text parsed as ``base``, then held to the setting's choices and range."""

    def parse(text: str):
        try:
            value = base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {base.__name__}, got {text!r}") from None
        if s.choices and value not in s.choices:
            raise argparse.ArgumentTypeError(f"{value!r} is not allowed; choose one of: {', '.join(s.choices)}")
        if s.rule is not None and not s.rule.check(value):
            raise argparse.ArgumentTypeError(f"{s.rule.text}, got {value!r}")
        return value

    parse.__name__ = base.__name__  # what argparse names in its own messages
    return parse


def _base_type(hint: Any) -> Any:
    """``str | None`` -> ``str``; other hints as they are."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_settings(parser: argparse.ArgumentParser, flats: Iterable[str]) -> None:
    """Flags for ``flats``, grouped by config section as ``--help`` lists them."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    titles = {
        "data": "data",
        "model": "model",
        "optim": "optimisation",
        "thresholds": "thresholds",
        "runtime": "speed",
        "": "run",
    }
    for flat in flats:
        section = SETTINGS[flat].section
        if section not in groups:
            groups[section] = parser.add_argument_group(titles[section])
        add_setting(groups[section], flat)


def add_config_source(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and ``--set KEY=VALUE``, which every config-building subcommand takes."""
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)


def config_from_args(args: argparse.Namespace, flats: Iterable[str], base: str | None = None) -> _TrainConfig:
    """The config: ``base`` or ``--config`` (else the defaults), then ``--set``, then each of ``flats`` that was given.

    Each value is checked as it is set, so a bad one fails here, before any data is read.
    """
    source = args.config or base
    cfg = load_config(source) if source else _TrainConfig()
    cfg = apply_overrides(cfg, args.overrides)
    return apply_flat(cfg, **{flat: getattr(args, flat) for flat in flats})


# Not a training setting, but the same flag on evaluate, predict and serve.
THRESHOLD = Setting(
    key="threshold",
    flat="threshold",
    flag="--threshold",
    hint=float,
    default=None,
    help="one threshold for every class, instead of the model's tuned ones (0: every label, above 1: none)",
    choices=(),
    rule=at_least(0),
    metavar="T",
)


def add_threshold(parser: argparse._ActionsContainer) -> None:
    """``--threshold T``: the same override on evaluate, predict and serve."""
    add_setting(parser, THRESHOLD, own_default=True)


def add_label_reading(parser: argparse._ActionsContainer) -> None:
    """``--format``, ``--image-root``, ``--label-delimiter``: how a label file is read, as in ``mlic train``."""
    for flat in ("format", "image_root", "label_delimiter"):
        add_setting(parser, flat, own_default=True)


def add_compute(parser: argparse._ActionsContainer) -> None:
    """``--device``, ``--batch-size``, ``--workers``, ``--max-image-pixels``, ``--progress``: as ``mlic train``'s."""
    for flat in ("device", "batch_size", "num_workers", "max_image_pixels", "progress"):
        add_setting(parser, flat, own_default=True)


def add_bootstrap(parser: argparse._ActionsContainer, default: int) -> None:
    """``--bootstrap B`` (95% intervals from B resamples of the images; 0: none) and the ``--seed`` they draw from."""

    def replicates(text: str) -> int:
        value = int(text)
        if value != 0 and value < 2:
            raise argparse.ArgumentTypeError("must be 0 (none) or at least 2")
        return value

    parser.add_argument("--bootstrap", type=replicates, default=default, metavar="B",
                        help=f"95%% intervals of every metric from B bootstrap resamples of the images, 0: none "
                        f"(default: {default})")  # fmt: skip
    add_setting(parser, "seed", own_default=True)


def add_command(sub: argparse._SubParsersAction, name: str, help: str, description: str, epilog: str):
    """A subcommand's parser: its help line, its description, its worked examples, its name in errors."""
    p = sub.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.set_defaults(prog=p.prog)
    return p


def int_at_least(minimum: int):
    """An argparse type for a flag no setting backs: an int >= minimum, so a bad value is a usage error rather
    than a traceback."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse

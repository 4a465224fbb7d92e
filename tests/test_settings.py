"""Settings from one place: every flag of the real parser reaches the config key it names, every config key
can be set from a flag, ``--set`` and ``mlic.train(**kw)``, and ``--help`` states the dataclass defaults."""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
import types
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml

import mlic
from mlic.cli import build_parser, main
from mlic.cli.flags import format_default, help_text
from mlic.config import SETTINGS, TrainConfig, to_dict
from mlic.data.records import DataError
from mlic.engine import fit as fit_module

NOT_SETTINGS = {"help", "config", "overrides", "overwrite", "resume", "clear", "train"}


def other_value(s):
    """A valid value of setting ``s`` that differs from its default."""
    if s.choices:
        return next(c for c in s.choices if c != s.default)
    if s.hint is bool:
        return not s.default
    if s.key == "device":
        return "cpu"
    if s.key == "model.widths":
        return [8, 16, 24, 32]
    if s.key == "thresholds.objective":
        return "f_beta:2"
    if s.hint is int:
        return s.default + 1
    if s.hint is float:
        return s.default / 2 if s.default > 0 else 0.25
    return f"some/{s.flat}"  # str | None: paths and names


def argv_for(s, value) -> list[str]:
    if s.hint is bool:
        return [s.flag if value else "--no-" + s.flag[2:]]
    if isinstance(value, list):
        return [s.flag, *map(str, value)]
    return [s.flag, str(value)]


def leaf(cfg: TrainConfig, key: str):
    node = to_dict(cfg)
    for part in key.split("."):
        node = node[part]
    return node


@pytest.fixture
def captured(monkeypatch):
    """mlic train's config, caught where the library would start training."""
    seen = {}

    def fake_fit(cfg, **kwargs):
        seen["cfg"] = cfg
        return types.SimpleNamespace(run_dir="runs/x", best_checkpoint="runs/x/best", best_epoch=1, test_metrics=None)

    monkeypatch.setattr(fit_module, "fit", fake_fit)
    monkeypatch.setattr("mlic.engine.data_setup.cache_run_data", lambda d, **kw: seen.update(data=d, **kw))
    return seen


def _subparser(*names: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _setting_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.dest not in NOT_SETTINGS and a.option_strings]


def _train(captured, *argv: str) -> TrainConfig:
    assert main(["train", "data.csv", "--no-progress", *argv]) == 0
    return captured["cfg"]


def test_every_train_flag_changes_the_config_key_it_names(captured):
    actions = _setting_actions(_subparser("train"))
    assert {a.dest for a in actions} == set(SETTINGS) - {"train"}  # every setting has its flag, nothing else
    baseline = to_dict(_train(captured))
    for action in actions:
        s = SETTINGS[action.dest]
        value = other_value(s)
        cfg = _train(captured, *argv_for(s, value))
        assert leaf(cfg, s.key) == value, (action.option_strings, s.key)
        changed = [k for k in SETTINGS.values() if leaf(cfg, k.key) != _nested(baseline, k.key)]
        assert [k.key for k in changed] == [s.key] or (s.key == "progress" and not changed)


def _nested(data: dict, key: str):
    for part in key.split("."):
        data = data[part]
    return data


def test_positional_data_sets_data_train(captured):
    assert _train(captured).data.train == "data.csv"


def test_every_data_cache_flag_reaches_the_cache_build(captured):
    parser = _subparser("data", "cache")
    actions = _setting_actions(parser)
    assert {SETTINGS[a.dest].section for a in actions} == {"data", ""}
    assert {a.dest for a in actions} == {f for f, s in SETTINGS.items() if s.section == "data"} - {"train", "cache"} | {
        "seed",
        "progress",
    }
    for action in actions:
        s = SETTINGS[action.dest]
        value = other_value(s)
        assert main(["data", "cache", "data.csv", *argv_for(s, value)]) == 0
        got = getattr(captured["data"], s.key.split(".")[-1]) if s.section == "data" else captured[s.key]
        assert got == value, s.key
    assert captured["data"].train == "data.csv" and captured["data"].cache == "auto"


def test_every_config_leaf_can_be_set_from_a_flag_set_and_a_keyword(captured):
    for s in SETTINGS.values():
        if s.key == "data.train":
            continue
        value = other_value(s)
        from_flag = _train(captured, *argv_for(s, value))
        from_set = _train(captured, "--set", f"{s.key}={yaml.safe_dump(value, default_flow_style=True).strip()}")
        mlic.train("data.csv", **({"progress": False} | {s.flat: value}))
        from_keyword = captured["cfg"]
        assert leaf(from_flag, s.key) == leaf(from_set, s.key) == leaf(from_keyword, s.key) == value, s.key


def test_help_states_the_dataclass_defaults():
    """The default in every setting flag's help, on every subcommand, is the dataclass field's."""
    checked = 0
    commands = (
        ("train",),
        ("data", "cache"),
        ("evaluate",),
        ("predict",),
        ("embed",),
        ("report",),
        ("demo",),
        ("serve",),
    )
    for path in commands:
        for action in _setting_actions(_subparser(*path)):
            s = SETTINGS.get(action.dest)
            if s is None:
                continue
            expected = f"(default: {format_default(s.default)})"
            assert (expected in action.help) == (s.default is not None), (path, action.dest, action.help)
            if action.default is not None:  # subcommands without a config take the field's default as their own
                assert action.default == s.default, (path, action.dest)
            checked += 1
    assert checked > len(SETTINGS)
    text = " ".join(_subparser("train").format_help().split())
    assert "--lr X" in text and "(default: 0.001)" in text and "--no-channels-last" in text


def test_shared_flags_are_the_same_on_every_subcommand():
    compute = {
        "--device": "device",
        "--workers": "num_workers",
        "--batch-size": "batch_size",
        "--no-progress": "progress",
    }
    reading = {"--format": "format", "--image-root": "image_root", "--label-delimiter": "label_delimiter"}
    where = {
        "evaluate": compute | reading,
        "report": compute | reading,
        "predict": compute | {"--image-root": "image_root"},
        "embed": compute | {"--image-root": "image_root"},
        "explain": {"--device": "device"},
        "serve": {"--device": "device"},
    }
    for command, flags in where.items():
        parser = _subparser(command)
        options = {o: a for a in parser._actions for o in a.option_strings}
        for flag, dest in flags.items():
            assert flag in options and options[flag].dest == dest, (command, flag)
            assert options[flag].help == help_text(SETTINGS[dest]), (command, flag)
    for command in ("evaluate", "predict", "serve"):
        assert "--threshold" in {o for a in _subparser(command)._actions for o in a.option_strings}


def test_skip_bad_images_trains_without_the_bad_file(tiny_shapes, tmp_path, capsys):
    rows = tiny_shapes["train"].read_text().splitlines()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    labels = tmp_path / "train.csv"
    root = tiny_shapes["train"].parent
    body = [f"{root / r.split(',', 1)[0]},{r.split(',', 1)[1]}" for r in rows[1:]]
    labels.write_text("\n".join([rows[0], *body, f"{broken},circle"]) + "\n")
    args = ["train", str(labels), "--val", str(tiny_shapes["val"]), "--image-size", "32", "--epochs", "1",
            "--output-dir", str(tmp_path / "runs"), "--no-progress", "--no-report", "--device", "cpu"]  # fmt: skip
    assert main([*args, "--name", "strict"]) == 2
    assert "--skip-bad-images" in capsys.readouterr().err.splitlines()[-1]
    assert main([*args, "--name", "skip", "--skip-bad-images"]) == 0
    printed = capsys.readouterr()
    assert "broken.png" in printed.out + printed.err and "leaving them out" in printed.out + printed.err
    saved = yaml.safe_load((tmp_path / "runs" / "skip" / "config.yaml").read_text())
    assert saved["data"]["skip_bad_images"] is True


@pytest.fixture(scope="module")
def big_labels(tmp_path_factory) -> Path:
    """10,000 rows whose images do not exist: a config check that reads no data finishes before noticing."""
    path = tmp_path_factory.mktemp("big") / "labels.csv"
    path.write_text("image,labels\n" + "".join(f"img/{i:05d}.png,cat dog\n" for i in range(10_000)))
    return path


BAD_CHOICES = [
    (["--schedule", "cosin"], "optim.schedule (--schedule): 'cosin' is not allowed; choose one of: constant, cosine, "
     "onecycle"),
    (["--set", "optim.loss=foo"], "optim.loss (--loss): 'foo' is not allowed; choose one of: bce, focal, asl"),
    (["--precision", "fp8"], "runtime.precision (--precision): 'fp8' is not allowed; choose one of: auto, fp32, bf16"),
    (["--augment", "heavy"], "data.augment (--augment): 'heavy' is not allowed; choose one of: none, light"),
    (["--threshold-method", "f2"], "thresholds.method (--threshold-method): 'f2' is not allowed"),
    (["--device", "gpu"], "device (--device) must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), BAD_CHOICES, ids=[a[-1] for a, _ in BAD_CHOICES])
def test_a_bad_choice_fails_at_once_in_one_line(big_labels, argv, message):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mlic", "train", str(big_labels), *argv], capture_output=True,
                          text=True, env=os.environ | {"PYTHONWARNINGS": "ignore"})  # fmt: skip
    seconds = time.perf_counter() - start
    assert done.returncode == 2 and seconds < 2, (done.returncode, seconds, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlic train: error: "), done.stderr
    assert message in lines[0] and "Traceback" not in done.stderr


def test_a_yaml_with_an_unknown_key_fails_at_once_naming_it(big_labels, tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("optim:\n  learning_rate: 0.01\n")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mlic", "train", str(big_labels), "--config", str(config)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and time.perf_counter() - start < 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("mlic train: error: ") and "optim.learning_rate" in line and "known: " in line


def test_settings_table_matches_the_dataclasses():
    """Every leaf of TrainConfig is in SETTINGS once, under a unique flat name and flag."""
    leaves = []

    def walk(cls, prefix=""):
        for name, hint in typing.get_type_hints(cls).items():
            if dataclasses.is_dataclass(hint):
                walk(hint, f"{prefix}{name}.")
            else:
                leaves.append(prefix + name)

    walk(TrainConfig)
    assert sorted(s.key for s in SETTINGS.values()) == sorted(leaves) and len(leaves) > 50
    assert len({s.flag for s in SETTINGS.values()}) == len(SETTINGS)


def test_builders_take_exactly_the_config_choices():
    """Each choice setting's tuple is what its builder dispatches on: every value builds, anything else fails."""
    import torch

    from mlic.config import AUGMENTATIONS, LOSSES, OPTIMIZERS, PRECISIONS, SCHEDULES, THRESHOLD_METHODS
    from mlic.data.transforms import Preprocessing, build_train_pipeline
    from mlic.engine.optim import build_optimizer
    from mlic.engine.schedule import LrSchedule
    from mlic.evaluation.thresholds import tune_thresholds
    from mlic.losses import build_loss
    from mlic.runtime.precision import resolve_precision

    model = torch.nn.Linear(2, 2)
    probs, targets = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[1, 0], [0, 1]])
    builders = {
        OPTIMIZERS: lambda name: build_optimizer(model, name, lr=0.1),
        SCHEDULES: lambda name: LrSchedule(name, 10, [0.1]),
        LOSSES: lambda name: build_loss(name),
        AUGMENTATIONS: lambda name: build_train_pipeline(Preprocessing(image_size=32), name),
        PRECISIONS: lambda name: resolve_precision(name, torch.device("cpu")),
        THRESHOLD_METHODS: lambda name: tune_thresholds(probs, targets, None, method=name),
    }
    for choices, build in builders.items():
        for name in choices:
            assert build(name) is not None, name
        with pytest.raises(ValueError, match="choose one of"):
            build("no-such-choice")


def test_every_label_format_choice_has_a_reader(tmp_path):
    from mlic.config import LABEL_FORMATS
    from mlic.data.readers import FORMATS, read_records

    assert set(FORMATS) | {"auto"} == set(LABEL_FORMATS)
    for fmt in FORMATS:  # the dispatch knows the name: what fails is the (missing) data, never the format
        with pytest.raises(DataError) as info:
            read_records(tmp_path / "nothing-here", fmt, **({"image_root": tmp_path} if fmt == "openimages" else {}))
        assert "unknown format" not in str(info.value)

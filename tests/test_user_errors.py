"""Every mistake a user can make ends as one line, ``mlic <command>: error: ...``, exit code 2, no traceback.

Each case is run through the real CLI (in-process ``main``; a few through the installed entry point). An
exception escaping ``main`` fails the test: that is what a user would have seen as a traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlic.cli import main


@pytest.fixture(scope="module")
def files(tiny_shapes, tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("user-errors")
    (tmp / "bad.yaml").write_text("optim: [unclosed\n")
    (tmp / "empty").mkdir()
    (tmp / "run" / "taken").mkdir(parents=True)
    (tmp / "run" / "taken" / "checkpoints" / "best").mkdir(parents=True)
    (tmp / "run" / "taken" / "checkpoints" / "best" / "meta.json").write_text("{}")
    (tmp / "bad_row.csv").write_text(f"image,cat,dog\n{tiny_shapes['train'].parent}/images/train/00000.png,1,maybe\n")
    for split in ("train", "val", "test"):
        (tmp / "split" / f"{split}.csv").parent.mkdir(exist_ok=True)
        (tmp / "split" / f"{split}.csv").write_text("taken\n")
    image = sorted((tiny_shapes["test"].parent / "images" / "test").glob("*.png"))[0]
    (tmp / "exists.csv").write_text("keep me\n")
    (tmp / "exists.parquet").write_text("keep me\n")
    (tmp / "taken.paths.txt").write_text(f"{image}\n")
    (tmp / "quote.csv").write_text(f'image,labels\n{image},a\n"{image},b\n{image},c\n')
    three = sorted((tiny_shapes["test"].parent / "images" / "test").glob("*.png"))[:3]
    (tmp / "few.csv").write_text("image,labels\n" + "".join(f"{p},a\n" for p in three))
    (tmp / "gone.csv").write_text(f"image,labels\n{image},a\n{tmp / 'gone.png'},b\n")
    (tmp / "model.onnx").write_bytes(b"not a protobuf at all")
    tampered = tmp / "tampered"
    shutil.copytree(tiny_checkpoint, tampered)
    meta = json.loads((tampered / "meta.json").read_text())
    (tampered / "meta.json").write_text(json.dumps(meta | {"thresholds": [2.0] * len(meta["class_names"])}))
    return {"tmp": tmp, "labels": tiny_shapes["train"], "ckpt": tiny_checkpoint, "image": image}


def cases(f: dict[str, Path]) -> list[tuple[list[str], str]]:
    """(argv, a part of the one error line)"""
    t, labels, ckpt, image = f["tmp"], str(f["labels"]), str(f["ckpt"]), str(f["image"])
    quick = ["--epochs", "1", "--image-size", "32", "--no-progress", "--no-report", "--output-dir", str(t / "run")]
    return [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["train", "x.csv", "--bogus"], "unrecognized arguments: --bogus"),
        (["train"], "data.train is required"),
        (["train", str(t / "missing.csv")], "missing.csv: no such file or folder"),
        (["train", "x.csv", "--epochs", "zero"], "argument --epochs: invalid int value: 'zero'"),
        (["train", "x.csv", "--epochs", "0"], "optim.epochs (--epochs) must be >= 1, got 0"),
        (["train", "x.csv", "--val-fraction", "1.5"], "data.val_fraction (--val-fraction) must be in [0, 1)"),
        (["train", "x.csv", "--set", "optim.nope=1"], "unknown key 'optim.nope'"),
        (["train", "x.csv", "--set", "novalue"], "must look like section.key=value"),
        (["train", "x.csv", "--set", "optim.epochs=[1"], "not valid YAML"),
        (["train", "x.csv", "--config", str(t / "missing.yaml")], "config file not found"),
        (["train", "x.csv", "--config", str(t / "bad.yaml")], "invalid YAML"),
        (["train", "x.csv", "--pos-weight", "auto", "--loss", "asl"], "applies to --loss bce only"),
        (["train", "--resume", str(t / "nope")], "--resume: no complete checkpoint"),
        (["train", "--resume", "auto"], "--resume auto needs --name"),
        (["train", labels, *quick, "--model", "no_such_model"], "--model no_such_model"),
        (["train", labels, *quick, "--pretrained", str(t / "w.safetensors")], "--pretrained"),
        (["train", labels, *quick, "--device", "cuda:3"], "CUDA is not available"),
        (["train", labels, *quick, "--name", "taken"], "already exists"),
        (["train", str(t / "bad_row.csv"), *quick], "bad_row.csv:2"),
        (["evaluate", str(t / "nowhere"), "--data", labels], "checkpoint not found"),
        (["evaluate", ckpt, "--data", labels, "--threshold", "-1"], "argument --threshold: must be >= 0"),
        (["evaluate", ckpt, "--data", labels, "--batch-size", "0"], "argument --batch-size: must be >= 1"),
        (["evaluate", ckpt, "--data", labels, "--format", "xml"], "argument --format: 'xml' is not allowed"),
        (["predict", ckpt], "give image paths"),
        (["predict", str(t / "nowhere"), image], "checkpoint not found"),
        (["predict", ckpt, str(t / "empty")], "no images found"),
        (["predict", ckpt, image, "--resume"], "--resume needs --output"),
        (["predict", ckpt, image, "--top-k", "-1"], "--top-k must be >= 0"),
        (["embed", str(t / "nowhere"), image, "--output", str(t / "e.parquet")], "checkpoint not found"),
        (["embed", ckpt, image], "the following arguments are required: --output"),
        (["embed", ckpt, "--output", str(t / "e.npy")], "give image paths"),
        (["embed", ckpt, image, "--output", str(t / "e.csv")], "cannot tell the output format; name it .parquet"),
        (["embed", ckpt, image, "--output", str(t / "exists.parquet")], "exists; pass --overwrite to replace it"),
        (["embed", ckpt, str(t / "empty"), "--output", str(t / "e.npy")], "no images found"),
        (
            ["embed", ckpt, str(t / "exists.parquet"), "--output", str(t / "exists.parquet"), "--overwrite"],
            "is also an input",
        ),  # fmt: skip
        (
            ["embed", ckpt, "--list", str(t / "taken.paths.txt"), "--output", str(t / "taken.npy"), "--overwrite"],
            "(the list of row paths written beside",
        ),  # fmt: skip
        (["embed", ckpt, image, "--output", str(t / "no" / "e.npy")], "does not exist"),
        (["export", ckpt, str(t / "model.xyz")], "cannot tell the export format"),
        (["export", ckpt, str(t / "m.pt"), "--embedding"], "--embedding applies to ONNX export only"),
        (["export", str(t / "nowhere"), str(t / "m.onnx")], "checkpoint not found"),
        (["serve", str(t / "nowhere")], "checkpoint not found"),
        (["serve", ckpt, "--max-files", "0"], "argument --max-files: must be >= 1"),
        (["report", str(t / "empty")], "not an mlic run folder"),
        (["explain", ckpt, image, "--label", "unicorn"], "unknown label(s) unicorn"),
        (["explain", ckpt, str(t / "missing.png")], "missing.png"),
        (["data", "inspect", str(t / "missing.csv")], "no such file or folder"),
        (["data", "split", labels, "--output-dir", str(t / "split")], "already exist"),
        (["data", "convert", labels, str(t / "out.txt")], "cannot tell the output format"),
        (["data", "cache"], "DATA is required"),
        (["data", "cache", str(t / "missing.csv")], "no such file or folder"),
        (["data", "fashion-collage", str(t / "empty"), str(t / "fashion")], "empty"),
        # hostile and messy input
        (["predict", ckpt, image, "--output", str(t / "exists.csv")], "exists; pass --overwrite"),
        (["predict", ckpt, image, "--output", image, "--overwrite"], "is also an input"),
        (["predict", ckpt, image, "--output", str(t)], "is a folder"),
        (["predict", ckpt, image, "--output", str(t / "no" / "dir.csv")], "does not exist"),
        (["predict", str(t / "model.onnx"), image], "not a loadable ONNX model"),
        (["predict", str(t / "tampered"), image], "thresholds[0] must be a number in [0, 1]"),
        (["train", str(t / "quote.csv"), *quick], "quote.csv:3: a quoted field starts on this line"),
        (
            ["train", str(t / "gone.csv"), *quick],
            "1 unreadable image(s); fix or remove them, or pass --skip-bad-images",
        ),
        (["train", labels, *quick, "--max-image-pixels", "0"], "data.max_image_pixels (--max-image-pixels) must be"),
        (["serve", ckpt, "--max-request-pixels", "0"], "argument --max-request-pixels: must be >= 1"),
        (["serve", ckpt, "--body-timeout-s", "0"], "argument --body-timeout-s: must be >= 0.01"),
        (["serve", ckpt, "--threads", "0"], "argument --threads: must be >= 1"),
        # label audit
        (["data", "audit", str(t / "few.csv"), "--folds", "2"], "3 images are too few for 2 folds"),
        (["data", "audit", labels, "--folds", "1"], "argument --folds: must be at least 2"),
        (["data", "audit", labels, "--schedule", "cosin"], "'cosin' is not allowed"),
        (
            ["data", "apply-fixes", labels, str(t / "missing.csv"), str(t / "o.csv"), "--accept-above", "0.9"],
            "missing.csv: no such file",
        ),  # fmt: skip
        (["data", "apply-fixes", labels, labels, str(t / "o.csv"), "--accept-above", "0.9"], "missing column(s)"),
    ]


def test_each_user_error_is_one_line_with_exit_code_2(files, capsys):
    failures = []
    for argv, fragment in cases(files):
        code = _exit_code(argv)
        printed = capsys.readouterr()
        last = printed.err.strip().splitlines()[-1] if printed.err.strip() else ""
        prog = "mlic" if argv[0] == "frobnicate" else "mlic " + " ".join(a for a in argv[:2] if a in ("data", *_NAMES))
        ok = code == 2 and last.startswith(f"{prog}: error: ") and fragment in last
        if not ok or "Traceback" in printed.err + printed.out:
            failures.append(f"{argv}: exit {code}, last line {last!r}")
    assert not failures, "\n".join(failures)


_NAMES = ("train", "evaluate", "predict", "export", "serve", "report", "explain", "inspect", "split", "convert",
          "embed", "cache", "fashion-collage", "shard", "audit", "apply-fixes", "card")  # fmt: skip


def _exit_code(argv: list[str]) -> int:
    """main's return value, or the code argparse exits with on a usage error."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def test_the_installed_command_prints_no_traceback(files):
    for argv in (["train", "--set", "optim.loss=foo", "x.csv"], ["predict", str(files["tmp"] / "nowhere"), "a.png"]):
        done = subprocess.run([sys.executable, "-m", "mlic", *argv], capture_output=True, text=True)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith(f"mlic {argv[0]}: error: ")


def test_a_run_that_fails_on_its_data_leaves_no_run_folder(files, tmp_path, capsys):
    out = tmp_path / "runs"
    assert _exit_code(["train", str(files["tmp"] / "missing.csv"), "--output-dir", str(out), "--no-progress"]) == 2
    assert "missing.csv" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())

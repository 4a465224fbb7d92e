"""Batch prediction at scale: lazy inputs, list files, output formats, --top-k, unreadable files, --resume, memory."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from peak_memory import PEAK_KIB_SOURCE
from PIL import Image

from mlic.checkpoint import save_checkpoint
from mlic.cli import main
from mlic.inference.batch_predict import OutputOptions, write_predictions
from mlic.inference.destination import Destination
from mlic.inference.inputs import expand_inputs, iter_inputs
from mlic.inference.predictor import Predictor
from mlic.models import build_model

CLASSES = ["a", "b", "c", "d", "e"]


def make_checkpoint(path: Path, image_size: int = 32) -> Path:
    """A small seed CNN with random weights, trained BatchNorm statistics and tuned-looking thresholds."""
    torch.manual_seed(0)
    kwargs = {"widths": [8, 8, 16, 16], "hidden": 32}
    model = build_model("seed_cnn", len(CLASSES), **kwargs)
    model.train()
    model(torch.randn(8, 3, image_size, image_size))  # BatchNorm running stats away from their defaults
    meta = {
        "model": {"name": "seed_cnn", "kwargs": kwargs},
        "class_names": CLASSES,
        "thresholds": [0.3, 0.45, 0.5, 0.6, 0.4],
        "preprocessing": {"image_size": image_size, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    }
    return save_checkpoint(path, model.eval(), meta)


def make_images(folder: Path, n: int, seed: int = 0, size: int = 20) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size + i % 7, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    ckpt = make_checkpoint(root / "ckpt")
    images = make_images(root / "imgs" / "x", 14) + make_images(root / "imgs" / "y" / "deep", 8, seed=1)
    broken = root / "imgs" / "x" / "00003_broken.png"
    broken.write_text("not an image")
    (root / "imgs" / "notes.txt").write_text("not an image file name, skipped by folder expansion")
    return {"root": root, "ckpt": ckpt, "folder": root / "imgs", "images": images, "broken": broken}


def predict(setup, *args: str) -> int:
    return main(["predict", str(setup["ckpt"]), *args, "--device", "cpu", "--no-progress"])


def test_folder_expansion_is_lazy_sorted_and_matches_rglob(setup):
    lazy = iter_inputs([setup["folder"]])
    assert iter(lazy) is lazy  # a generator, not a list built up front
    expected = sorted(p for p in setup["folder"].rglob("*") if p.suffix == ".png")
    assert list(lazy) == expected == expand_inputs([setup["folder"]])
    assert setup["broken"] in expected and len(expected) == 23


def test_list_files_txt_and_csv_give_the_same_predictions(setup, tmp_path):
    paths = expand_inputs([setup["folder"]])
    rel = [str(p.relative_to(setup["root"])) for p in paths]
    (setup["root"] / "list.txt").write_text("# images\n" + "\n".join(rel) + "\n\n")
    (setup["root"] / "list.csv").write_text("id,image\n" + "".join(f"{i},{r}\n" for i, r in enumerate(rel)))
    (setup["root"] / "bare.csv").write_text("".join(f"{p},x\n" for p in paths))  # no header, absolute paths
    outs = {}
    for name, args in {
        "direct": [str(setup["folder"])],
        "txt": ["--list", str(setup["root"] / "list.txt")],
        "csv": ["--list", str(setup["root"] / "list.csv")],
        "bare": ["--list", str(setup["root"] / "bare.csv")],
    }.items():
        out = tmp_path / f"{name}.csv"
        assert predict(setup, *args, "--to", "csv", "--output", str(out)) == 0
        outs[name] = out.read_text()
    assert len(outs["direct"].splitlines()) == 1 + len(paths)
    assert outs["txt"] == outs["csv"] == outs["bare"] == outs["direct"]


def test_csv_jsonl_json_agree_with_the_predictor_and_report_unreadable_files(setup, tmp_path, capsys):
    paths = expand_inputs([setup["folder"]])
    reference = {p.path: p for p in Predictor.from_checkpoint(setup["ckpt"], device="cpu").predict_paths(paths)}
    capsys.readouterr()
    for fmt in ("csv", "jsonl", "json"):
        out = tmp_path / f"p.{fmt}"
        assert predict(setup, str(setup["folder"]), "--to", fmt, "--output", str(out), "--probabilities") == 0
        err = capsys.readouterr().err
        assert "23 image(s)" in err and "1 unreadable" in err
        if fmt == "csv":
            rows = list(csv.DictReader(out.open()))
            got = {r["path"]: (r["labels"].split(), r["error"] or None, float(r["p_a"] or 0)) for r in rows}
        else:
            text = out.read_text()
            records = json.loads(text) if fmt == "json" else [json.loads(line) for line in text.splitlines()]
            got = {r["path"]: (r["labels"], r["error"], (r.get("probabilities") or {}).get("a", 0)) for r in records}
        assert list(got) == [str(p) for p in paths]  # input order
        for path, (labels, error, p_a) in got.items():
            ref = reference[path]
            assert labels == ref.labels and (error is None) == (ref.error is None)
            assert p_a == pytest.approx(ref.probabilities.get("a", 0), abs=1e-6)
        assert got[str(setup["broken"])][1]  # the error field is filled


def test_summary_counts_unreadable_files(setup, tmp_path, capsys):
    missing = setup["root"] / "nope.png"
    out = tmp_path / "p.jsonl"
    assert predict(setup, str(setup["folder"]), str(missing), "--to", "jsonl", "--output", str(out)) == 0
    err = capsys.readouterr().err
    assert "24 image(s)" in err and "2 unreadable" in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    errors = {r["path"]: r["error"] for r in records if r["error"]}
    assert set(errors) == {str(setup["broken"]), str(missing)}
    assert "probabilities" not in records[0]  # off by default: files stay small


def test_top_k_lists_the_most_probable_classes_whatever_the_thresholds(setup, tmp_path):
    out = tmp_path / "p.jsonl"
    args = ("--to", "jsonl", "--output", str(out), "--top-k", "3", "--probabilities", "--threshold", "1.01")
    assert predict(setup, str(setup["folder"]), *args) == 0
    for record in map(json.loads, out.read_text().splitlines()):
        if record["error"]:
            assert record["top_k"] == []
            continue
        assert record["labels"] == []  # threshold 1.01: no labels, yet top-k is there
        probs = record["probabilities"]
        top = [t["label"] for t in record["top_k"]]
        assert top == sorted(probs, key=lambda n: -probs[n])[:3]
        assert [t["probability"] for t in record["top_k"]] == [probs[n] for n in top]
    csv_out = tmp_path / "p.csv"
    assert predict(setup, str(setup["images"][0]), "--to", "csv", "--output", str(csv_out), "--top-k", "2") == 0
    row = next(csv.DictReader(csv_out.open()))
    assert list(row) == ["path", "labels", "error", "top1", "top1_p", "top2", "top2_p"]
    assert row["top1"] in CLASSES and float(row["top1_p"]) >= float(row["top2_p"])


def test_workers_keep_input_order(setup, tmp_path):
    paths = expand_inputs([setup["folder"]])
    predictor = Predictor.from_checkpoint(setup["ckpt"], device="cpu")
    serial = [(p.path, p.labels) for p in predictor.predict_paths(paths, batch_size=3)]
    parallel = [(p.path, p.labels) for p in predictor.predict_paths(iter(paths), batch_size=3, num_workers=2)]
    assert parallel == serial and [p for p, _ in serial] == [str(p) for p in paths]


def test_cli_formats_match_the_library():
    from mlic.cli import predict as cli_predict
    from mlic.inference import batch_predict

    assert cli_predict.FORMATS == batch_predict.FORMATS


def test_empty_inputs_are_an_error(setup, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict(setup, str(empty)) == 2
    assert "no images found" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("complete_rows", [0, 5, 8, 23])
def test_resume_after_an_interrupt_equals_an_uninterrupted_run(setup, tmp_path, fmt, complete_rows):
    args = [str(setup["folder"]), "--to", fmt, "--batch-size", "4", "--probabilities", "--top-k", "2"]
    full = tmp_path / f"full.{fmt}"
    assert predict(setup, *args, "--output", str(full)) == 0
    lines = full.read_text().splitlines(keepends=True)
    header = 1 if fmt == "csv" else 0
    assert len(lines) == header + 23
    # Simulate a kill mid-write: the first rows complete, then half of the next line.
    partial = lines[header + complete_rows][:17] if complete_rows < 23 else ""
    interrupted = tmp_path / f"interrupted.{fmt}"
    interrupted.write_text("".join(lines[: header + complete_rows]) + partial)
    assert predict(setup, *args, "--output", str(interrupted), "--resume") == 0
    assert interrupted.read_bytes() == full.read_bytes()


def test_resume_of_a_half_written_csv_header_starts_afresh(setup, tmp_path):
    args = [str(setup["folder"]), "--to", "csv"]
    full, cut = tmp_path / "full.csv", tmp_path / "cut.csv"
    assert predict(setup, *args, "--output", str(full)) == 0
    cut.write_text(full.read_text()[:10])
    assert predict(setup, *args, "--output", str(cut), "--resume") == 0
    assert cut.read_bytes() == full.read_bytes()


def test_resume_refuses_other_columns_and_skips_by_path_when_inputs_changed(setup, tmp_path, capsys):
    out = tmp_path / "p.csv"
    images = setup["images"]
    assert predict(setup, *map(str, images[:5]), "--to", "csv", "--output", str(out)) == 0
    assert predict(setup, *map(str, images[:5]), "--to", "csv", "--output", str(out), "--resume", "--top-k", "1") == 2
    assert "columns differ" in capsys.readouterr().err
    # Inputs now start with a new image: the 5 rows already written are kept and not redone.
    reordered = [images[7], *images[:7], images[8]]
    assert predict(setup, *map(str, reordered), "--to", "csv", "--output", str(out), "--resume") == 0
    err = capsys.readouterr().err
    assert "5 already in the output" in err and "4 image(s) in" in err
    rows = [r["path"] for r in csv.DictReader(out.open())]
    assert sorted(rows) == sorted(str(p) for p in images[:9]) and len(rows) == 9


def test_write_predictions_streams_a_generator_to_stdout(setup, capsys):
    predictor = Predictor.from_checkpoint(setup["ckpt"], device="cpu")
    summary = write_predictions(predictor, iter(setup["images"][:3]), OutputOptions("json"), batch_size=2)
    data = json.loads(capsys.readouterr().out)
    assert [d["path"] for d in data] == [str(p) for p in setup["images"][:3]] and summary.predicted == 3


MEMORY_SCRIPT = PEAK_KIB_SOURCE + textwrap.dedent(
    """
    import sys, time
    from mlic.cli import main
    t = time.perf_counter()
    code = main(["predict", sys.argv[1], sys.argv[2], "--to", "csv", "--output", sys.argv[3], "--probabilities",
                 "--batch-size", "64", "--device", "cpu", "--no-progress"])
    print(peak_kib(), time.perf_counter() - t, code)
    """
)


@pytest.mark.slow
def test_peak_memory_stays_flat_over_10000_images(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", image_size=32)  # 12 KB per model input: hoarding them would show
    rng = np.random.default_rng(0)
    small, big = tmp_path / "small", tmp_path / "big"
    for folder, n in ((small, 1_000), (big, 10_000)):
        folder.mkdir()
        for i in range(n):  # 16x16 PNGs, 100 per subfolder
            sub = folder / f"{i // 100:03d}"
            sub.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(sub / f"{i:05d}.png")
    figures = {}
    for folder, n in ((small, 1_000), (big, 10_000)):
        out = tmp_path / f"{folder.name}.csv"
        result = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, str(ckpt), str(folder), str(out)],
            capture_output=True,
            text=True,
            check=True,
        )
        peak_kib, seconds, code = result.stdout.split()
        assert code == "0" and len(out.read_text().splitlines()) == n + 1
        figures[n] = int(peak_kib) / 1024
        print(f"{n} images: peak RSS {figures[n]:.1f} MB, {float(seconds):.1f} s")
    growth = figures[10_000] - figures[1_000]
    print(f"peak RSS growth from 1,000 to 10,000 images: {growth:+.1f} MB")
    assert growth < 50


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resume_from_any_cut_point_even_with_awkward_file_names(setup, tmp_path, fmt):
    folder = tmp_path / "weird"
    folder.mkdir()
    for i, name in enumerate(["a,b.png", 'q"uote.png', "new\nline.png", "plain.png", "é.png", "z1.png", "z2.png"]):
        Image.fromarray(np.full((20, 20, 3), i * 30, np.uint8)).save(folder / name)
    predictor = Predictor.from_checkpoint(setup["ckpt"], device="cpu")
    options = OutputOptions(fmt, probabilities=True)
    full, cut = tmp_path / f"full.{fmt}", tmp_path / f"cut.{fmt}"
    write_predictions(predictor, iter_inputs([folder]), options, dest=Destination(full), batch_size=2)
    data = full.read_bytes()
    assert data.count(b"\n") >= 7
    step = len(data) // 24 | 1  # odd, so the cuts land inside paths, quotes, numbers and on newlines
    for at in [*range(0, len(data), step), len(data)]:
        cut.write_bytes(data[:at])
        write_predictions(predictor, iter_inputs([folder]), options, dest=Destination(cut, resume=True), batch_size=2)
        assert cut.read_bytes() == data, at

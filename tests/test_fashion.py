"""Fashion-MNIST collages: IDX reading, file discovery, and a tiny collage dataset built from fake IDX files."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlic.cli import Parser
from mlic.cli.data_fashion import register
from mlic.data.builders.fashion import (
    FASHION_CLASSES,
    find_fashion_mnist,
    load_fashion_mnist,
    make_fashion_collages,
    read_idx,
)
from mlic.data.readers import read_records
from mlic.data.records import DataError

REAL_DIR = Path("/usr/share/datasets/fashion-mnist")
SIZE = 64  # collage side in the tests; cells are 32 px
COUNTS = {"train": 20, "val": 5, "test": 10}


def _idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0C: ">i4"}[code]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def _write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    data = _idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _fake_split(per_class: int, block: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) images and (N,) labels: image j of class c is a block of intensity 60 + 19c, pixel (0, 0) = j."""
    labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
    images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    for j, c in enumerate(labels):
        images[j][block] = 60 + 19 * int(c)
        images[j, 0, 0] = j
    return images, labels


def _write_fake_fashion(folder: Path, train_per_class: int = 6, test_per_class: int = 3) -> dict[str, np.ndarray]:
    """Train files plain with full names, test files gzipped: both kinds in one folder."""
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = _fake_split(train_per_class, (slice(4, 24), slice(6, 22)))
    test_images, test_labels = _fake_split(test_per_class, (slice(8, 20), slice(8, 20)))
    _write_idx(folder / "train-images-idx3-ubyte", train_images, gz=False)
    _write_idx(folder / "train-labels-idx1-ubyte", train_labels, gz=False)
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", test_images, gz=True)
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", test_labels, gz=True)
    return {"train_labels": train_labels, "test_labels": test_labels}


@pytest.fixture(scope="module")
def fake_idx(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("fashion-idx")
    return folder, _write_fake_fashion(folder)


@pytest.fixture(scope="module")
def collages(fake_idx, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("collages")
    make_fashion_collages(
        fake_idx[0],
        out,
        num_train=COUNTS["train"],
        num_val=COUNTS["val"],
        num_test=COUNTS["test"],
        image_size=SIZE,
        seed=3,
        progress=False,
    )
    return out


def _sources(root: Path) -> dict[str, list[dict]]:
    by_split: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for line in (root / "sources.jsonl").read_text().splitlines():
        record = json.loads(line)
        by_split[record["image"].split("/")[1]].append(record)
    return by_split


def _csv_rows(path: Path) -> list[tuple[str, list[str]]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "image,labels"
    return [(image, labels.split()) for image, labels in (line.split(",") for line in lines[1:])]


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


# --- IDX files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips_plain_and_gzipped(tmp_path, gz):
    images, _ = _fake_split(2, (slice(4, 24), slice(6, 22)))
    back = read_idx(_write_idx(tmp_path / "imgs", images, gz=gz))
    assert back.dtype == np.uint8 and back.shape == (20, 28, 28)
    assert np.array_equal(back, images) and back[7, 0, 0] == 7 and back[7, 10, 10] == 60 + 19 * 3


def test_read_idx_reads_big_endian_int32(tmp_path):
    (tmp_path / "ints").write_bytes(_idx_bytes(np.array([1, -2, 70000]), code=0x0C))
    assert read_idx(tmp_path / "ints").tolist() == [1, -2, 70000]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x01\x02\x08\x01" + struct.pack(">I", 3) + b"abc", "not an IDX file"),
        (b"\x00\x00\x42\x01" + struct.pack(">I", 3) + b"abc", "not an IDX file"),  # unknown type code
        (b"\x00\x00", "not an IDX file"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 5), "truncated IDX header"),
        (_idx_bytes(np.zeros((4, 28, 28)))[:-10], "truncated"),
        (_idx_bytes(np.zeros((4,))) + b"xx", "trailing bytes"),
        (gzip.compress(_idx_bytes(np.zeros((4, 28, 28))))[:-30], "gzip"),
    ],
)
def test_read_idx_names_the_file_of_a_bad_idx(tmp_path, content, message):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "nope.gz")


@pytest.mark.parametrize("suffix", ["", ".gz", "-idx{n}-ubyte", "-idx{n}-ubyte.gz"])
def test_find_fashion_mnist_takes_standard_names_with_or_without_suffixes(tmp_path, suffix):
    for stem, n in (("train-images", 3), ("train-labels", 1), ("t10k-images", 3), ("t10k-labels", 1)):
        (tmp_path / f"{stem}{suffix.format(n=n)}").write_bytes(b"")
    files = find_fashion_mnist(tmp_path)
    assert set(files) == {"train_images", "train_labels", "test_images", "test_labels"}
    assert files["test_labels"].name == "t10k-labels" + suffix.format(n=1)
    assert files["train_images"].name == "train-images" + suffix.format(n=3)


def test_find_fashion_mnist_torchvision_layout_and_missing_files(tmp_path, fake_idx):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in fake_idx[0].iterdir():
        (raw / path.name).write_bytes(path.read_bytes())
    assert find_fashion_mnist(tmp_path)["train_images"] == raw / "train-images-idx3-ubyte"
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "t10k-images.gz").write_bytes(b"")
    with pytest.raises(DataError, match="missing Fashion-MNIST file.*train-images, train-labels, t10k-labels"):
        find_fashion_mnist(partial)
    with pytest.raises(DataError, match="not a folder"):
        find_fashion_mnist(tmp_path / "absent")


def test_load_fashion_mnist_rejects_mismatched_labels(tmp_path):
    _write_fake_fashion(tmp_path)
    assert load_fashion_mnist(tmp_path)["train_images"].shape == (60, 28, 28)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(7, dtype=np.uint8), gz=True)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: \(7,\) labels for 30 images"):
        load_fashion_mnist(tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(30, 10, dtype=np.uint8), gz=True)
    with pytest.raises(DataError, match="label 10 outside 0..9"):
        load_fashion_mnist(tmp_path)


# --- collages ----------------------------------------------------------------------------------------------


def test_collage_csvs_hold_one_to_four_known_labels_per_image(collages):
    assert json.loads((collages / "manifest.json").read_text())["counts"] == COUNTS
    for split, count in COUNTS.items():
        rows = _csv_rows(collages / f"{split}.csv")
        assert [image for image, _ in rows] == [f"images/{split}/{i:05d}.png" for i in range(count)]
        for image, labels in rows:
            assert 1 <= len(labels) <= 4 and labels == sorted(set(labels))
            assert set(labels) <= set(FASHION_CLASSES)
            with Image.open(collages / image) as im:
                assert im.mode == "RGB" and im.size == (SIZE, SIZE)
    records = read_records(collages / "val.csv")  # mlic's own reader takes the layout as is
    assert [sorted(r.positives) for r in records] == [labels for _, labels in _csv_rows(collages / "val.csv")]
    assert all(r.path.is_file() for r in records)


def test_collage_labels_come_from_the_recorded_garments_of_the_right_split(collages, fake_idx):
    split_labels = fake_idx[1]
    sources = _sources(collages)
    counts_seen, deduped = set(), 0
    for split, count in COUNTS.items():
        rows = dict(_csv_rows(collages / f"{split}.csv"))
        assert len(sources[split]) == count
        for record in sources[split]:
            source = "test" if split == "test" else "train"
            assert record["source_split"] == source
            indices = [g["index"] for g in record["garments"]]
            assert len(set(indices)) == len(indices)
            assert all(0 <= i < len(split_labels[f"{source}_labels"]) for i in indices)
            classes = [FASHION_CLASSES[split_labels[f"{source}_labels"][i]] for i in indices]
            assert [g["label"] for g in record["garments"]] == classes
            assert rows[record["image"]] == sorted(set(classes))
            counts_seen.add(len(indices))
            deduped += len(set(classes)) < len(classes)
    assert counts_seen == {1, 2, 3, 4}
    assert deduped > 0  # some collage shows one class twice and still lists it once


def test_train_and_val_collages_use_disjoint_garments(collages):
    sources = _sources(collages)
    used = {split: {g["index"] for r in sources[split] for g in r["garments"]} for split in ("train", "val")}
    assert used["train"] and used["val"] and not used["train"] & used["val"]


def test_garments_sit_in_distinct_cells_and_are_drawn_where_recorded(collages):
    cell = SIZE // 2
    for record in [r for split in _sources(collages).values() for r in split]:
        pixels = np.asarray(Image.open(collages / record["image"]))
        outside = np.ones((SIZE, SIZE), dtype=bool)
        cells = []
        for g in record["garments"]:
            x0, y0, x1, y1 = g["box"]
            assert 0.6 * cell - 1 <= x1 - x0 == y1 - y0 <= cell
            assert x0 // cell == (x1 - 1) // cell and y0 // cell == (y1 - 1) // cell  # inside one cell
            cells.append((x0 // cell, y0 // cell))
            assert len(np.unique(pixels[y0:y1, x0:x1].reshape(-1, 3), axis=0)) > 1  # something drawn
            outside[y0:y1, x0:x1] = False
        assert len(set(cells)) == len(cells)
        assert len(np.unique(pixels[outside], axis=0)) == 1  # everything else is the plain background


def test_collages_are_deterministic_and_prefix_stable(collages, fake_idx, tmp_path):
    again = tmp_path / "again"
    make_fashion_collages(fake_idx[0], again, **_kwargs(seed=3))
    assert _digests(again) == _digests(collages)
    other = tmp_path / "other"
    make_fashion_collages(fake_idx[0], other, **_kwargs(seed=4))
    assert (other / "train.csv").read_text() != (collages / "train.csv").read_text()
    fewer = tmp_path / "fewer"
    make_fashion_collages(fake_idx[0], fewer, **_kwargs(seed=3, num_train=7))
    assert _csv_rows(fewer / "train.csv") == _csv_rows(collages / "train.csv")[:7]
    assert (fewer / "images/train/00006.png").read_bytes() == (collages / "images/train/00006.png").read_bytes()


def _kwargs(**overrides) -> dict:
    base = {"num_train": 20, "num_val": 5, "num_test": 10, "image_size": SIZE, "seed": 3, "progress": False}
    return base | overrides


def test_a_complete_dataset_is_reused_and_an_incomplete_or_different_one_rebuilt(fake_idx, tmp_path):
    out = tmp_path / "out"
    make_fashion_collages(fake_idx[0], out, **_kwargs())
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    make_fashion_collages(fake_idx[0], out, **_kwargs())
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamp

    (out / "images/test/00004.png").unlink()
    make_fashion_collages(fake_idx[0], out, **_kwargs())
    assert (out / "images/test/00004.png").is_file()
    assert (out / "manifest.json").stat().st_mtime_ns != stamp[out / "manifest.json"]

    make_fashion_collages(fake_idx[0], out, **_kwargs(num_train=12))
    assert not (out / "images/train/00012.png").exists()  # the larger run's extra images are gone
    assert len(_csv_rows(out / "train.csv")) == 12


def test_different_source_files_are_not_reused(fake_idx, tmp_path):
    out = tmp_path / "out"
    make_fashion_collages(fake_idx[0], out, **_kwargs())
    before = json.loads((out / "manifest.json").read_text())["source"]["labels_sha256"]
    other = _write_fake_fashion(tmp_path / "idx", train_per_class=7)
    make_fashion_collages(tmp_path / "idx", out, **_kwargs())
    after = json.loads((out / "manifest.json").read_text())["source"]
    assert after["labels_sha256"] != before and after["train_images"] == len(other["train_labels"]) == 70


def test_bad_parameters_and_too_few_garments(fake_idx, tmp_path):
    with pytest.raises(ValueError, match="num_val must be >= 0"):
        make_fashion_collages(fake_idx[0], tmp_path / "a", **_kwargs(num_val=-1))
    with pytest.raises(ValueError, match="image_size must be >= 32"):
        make_fashion_collages(fake_idx[0], tmp_path / "a", **_kwargs(image_size=16))
    _write_fake_fashion(tmp_path / "one", train_per_class=1)  # nothing left to hold out for val
    with pytest.raises(DataError, match="no garments for val collages"):
        make_fashion_collages(tmp_path / "one", tmp_path / "b", **_kwargs())
    assert not (tmp_path / "b" / "manifest.json").exists()


# --- CLI ---------------------------------------------------------------------------------------------------


def _data_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mlic data")
    register(parser.add_subparsers(dest="data_command", required=True))
    return parser


def test_cli_builds_a_dataset(fake_idx, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["fashion-collage", str(fake_idx[0]), str(out), "--train", "4", "--val", "2", "--test", "3"]
    args = _data_parser().parse_args([*argv, "--image-size", "32", "--seed", "1", "--no-progress"])
    assert args.run(args) == 0
    assert [len(_csv_rows(out / f"{s}.csv")) for s in ("train", "val", "test")] == [4, 2, 3]
    assert json.loads((out / "manifest.json").read_text())["image_size"] == 32
    assert str(out / "sources.jsonl") in capsys.readouterr().out


def test_long_tail_gives_zipf_like_class_frequencies_in_every_split(fake_idx, tmp_path):
    out = tmp_path / "tail"
    make_fashion_collages(fake_idx[0], out, **_kwargs(num_train=300, num_val=300, num_test=300, long_tail=1.5))
    assert json.loads((out / "manifest.json").read_text())["long_tail"] == 1.5
    counts = {}
    for split in ("train", "val", "test"):
        garments = Counter(g["label"] for row in _sources(out)[split] for g in row["garments"])
        counts[split] = [garments[name] for name in FASHION_CLASSES]
    ranking = np.argsort(counts["train"])[::-1]
    shares = np.array(counts["train"])[ranking] / sum(counts["train"])
    expected = np.arange(1, 11) ** -1.5 / (np.arange(1, 11) ** -1.5).sum()
    assert np.abs(shares - expected).max() < 0.05, (shares, expected)
    assert shares[0] > 8 * shares[-1]  # a long tail, not equal frequencies
    for split in ("val", "test"):  # the same classes are frequent and rare in every split
        top, bottom = np.array(counts[split])[ranking[:3]].sum(), np.array(counts[split])[ranking[-3:]].sum()
        assert top > 5 * bottom, (split, counts[split])
    plain = tmp_path / "plain"
    make_fashion_collages(fake_idx[0], plain, **_kwargs())
    assert "long_tail" not in json.loads((plain / "manifest.json").read_text())  # earlier builds stay reusable


@pytest.mark.parametrize("flags", [["--train", "-1"], ["--image-size", "8"], ["--seed", "x"], ["--long-tail", "-1"]])
def test_cli_rejects_bad_flags(fake_idx, tmp_path, flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _data_parser().parse_args(["fashion-collage", str(fake_idx[0]), str(tmp_path), *flags])
    assert exit_info.value.code == 2 and "fashion-collage: error" in capsys.readouterr().err


def test_cli_help_starts_with_examples():
    parser = _data_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    epilog = action.choices["fashion-collage"].epilog
    assert epilog.startswith("examples:") and "mlic data fashion-collage" in epilog


# --- the real dataset, where installed ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not REAL_DIR.is_dir(), reason="apt install dataset-fashion-mnist")
def test_real_fashion_mnist_files():
    files = find_fashion_mnist(REAL_DIR)
    assert all(path.parent == REAL_DIR for path in files.values())
    data = load_fashion_mnist(REAL_DIR)
    assert data["train_images"].shape == (60000, 28, 28) and data["test_images"].shape == (10000, 28, 28)
    assert np.bincount(data["train_labels"]).tolist() == [6000] * 10
    assert np.bincount(data["test_labels"]).tolist() == [1000] * 10

"""`mlic data inspect|convert|split` and the library calls behind them, on tiny files made per test."""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlic.cli import main
from mlic.data.convert import write_records
from mlic.data.inspect import inspect_dataset
from mlic.data.labels import build_vocabulary, encode
from mlic.data.readers import read_records
from mlic.data.records import DataError, Record


def _png(path: Path, color: tuple[int, int, int], size: int = 8) -> Path:
    Image.new("RGB", (size, size), color).save(path)
    return path


def _huge_png_header() -> bytes:
    """A valid PNG header declaring 50000x50000 pixels (2.5 billion) over a few bytes of data: a bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _broken_png() -> bytes:
    """A real PNG whose compressed pixel data is overwritten: the header reads, the decode fails."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    start = data.index(b"IDAT") + 8
    data[start : start + 8] = b"\xff" * 8
    return bytes(data)


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    return data[: len(data) // 2]


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("image,labels\n" + "".join(f"{image},{labels}\n" for image, labels in rows))
    return path


@pytest.fixture
def clean_data(tmp_path) -> Path:
    img = tmp_path / "data" / "img"
    img.mkdir(parents=True)
    for name, color in (("a", (255, 0, 0)), ("b", (0, 255, 0)), ("c", (0, 0, 255)), ("d", (9, 9, 9))):
        _png(img / f"{name}.png", color)
    rows = [("img/a.png", "cat dog"), ("img/b.png", "dog grass"), ("img/c.png", "cat dog grass"), ("img/d.png", "cat")]
    return _write_csv(tmp_path / "data" / "labels.csv", rows)


@pytest.fixture
def broken_data(tmp_path) -> Path:
    img = tmp_path / "data" / "img"
    img.mkdir(parents=True)
    _png(img / "a.png", (255, 0, 0))
    _png(img / "b.png", (0, 255, 0))
    _png(img / "empty.png", (0, 0, 255))
    (img / "copy.png").write_bytes((img / "a.png").read_bytes())
    (img / "broken.png").write_bytes(_broken_png())
    (img / "cut.jpg").write_bytes(_truncated_jpeg())
    (img / "huge.png").write_bytes(_huge_png_header())
    rows = [
        ("img/a.png", "cat dog"),  # line 2
        ("img/b.png", "dog"),
        ("img/empty.png", ""),  # line 4: no labels
        ("img/a.png", "cat"),  # line 5: a.png again, different labels
        ("img/copy.png", "cat"),  # same bytes as a.png
        ("img/broken.png", "cat"),
        ("img/cut.jpg", "dog"),
        ("img/huge.png", "cat"),
        ("img/missing.png", "dog"),  # line 10
    ]
    return _write_csv(tmp_path / "data" / "labels.csv", rows)


def test_inspect_finds_each_problem_with_its_file(broken_data, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["data", "inspect", str(broken_data), "--output-dir", str(out), "--no-progress"]) == 1
    report = json.loads((out / "report.json").read_text())
    found = {(p["kind"], Path(p["path"]).name, p["severity"]) for p in report["problems"]}
    assert found == {
        ("missing_file", "missing.png", "error"),
        ("unreadable_image", "broken.png", "error"),
        ("truncated_image", "cut.jpg", "error"),
        ("huge_image", "huge.png", "error"),
        ("duplicate_row", "a.png", "error"),
        ("duplicate_file", "copy.png", "warning"),
        ("empty_labels", "empty.png", "warning"),
    }
    by_kind = {p["kind"]: p for p in report["problems"]}
    assert by_kind["duplicate_row"]["source"] == "labels.csv:5"
    assert by_kind["duplicate_row"]["detail"] == "also listed at labels.csv:2 (different labels)"
    assert by_kind["duplicate_file"]["detail"].endswith("a.png")
    assert by_kind["missing_file"]["source"] == "labels.csv:10"
    assert "2,500,000,000" in by_kind["huge_image"]["detail"] or "2500000000" in by_kind["huge_image"]["detail"]
    assert report["num_records"] == 9 and report["num_images"] == 8
    assert report["num_errors"] == 5 and report["num_warnings"] == 2
    for name in ("label_frequency.png", "cooccurrence.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 200
    printed = capsys.readouterr().out
    assert "truncated_image" in printed and "cut.jpg" in printed and "5 error(s), 2 warning(s)" in printed


def test_inspect_clean_data_exits_zero_into_a_default_folder(clean_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "inspect", str(clean_data), "--no-progress"]) == 0
    report = json.loads((tmp_path / "inspect-labels" / "report.json").read_text())
    assert report["problems"] == [] and report["num_errors"] == 0
    assert report["class_names"] == ["cat", "dog", "grass"]
    assert [c["positives"] for c in report["per_class"]] == [3, 3, 2]
    assert [c["negatives"] for c in report["per_class"]] == [1, 1, 2]
    assert report["labels_per_image"] == {"min": 1, "mean": 2.0, "max": 3, "histogram": [0, 1, 2, 1]}
    assert report["top_pairs"][0] == {"labels": ["cat", "dog"], "count": 2}
    assert report["cooccurrence"][1][2] == 2 and report["cooccurrence"][0][0] == 3
    assert (tmp_path / "inspect-labels" / "cooccurrence.png").stat().st_size > 1000
    assert not (clean_data.parent / "inspect").exists()  # nothing written into the data folder


def test_inspect_dataset_counts_unknowns_and_checks_the_vocabulary(tmp_path):
    a, b = _png(tmp_path / "a.png", (1, 2, 3), size=20), _png(tmp_path / "b.png", (4, 5, 6))
    records = [
        Record(a, ("cat",), negatives=("dog",), source="x:1"),  # grass unknown
        Record(b, ("dog", "cow"), unknown=("grass",), source="x:2"),  # cow not in the class list
        Record(tmp_path / "gone.png", (), source="x:3"),
    ]
    report = inspect_dataset(records, class_names=["cat", "dog", "grass"], max_pixels=399)
    counts = {c["name"]: (c["positives"], c["negatives"], c["unknown"]) for c in report.per_class}
    assert counts == {"cat": (1, 2, 0), "dog": (1, 2, 0), "grass": (0, 1, 2)}  # grass: unknown on a and b
    kinds = {p.kind: (Path(p.path).name, p.source) for p in report.problems}
    assert kinds["huge_image"] == ("a.png", "x:1")  # 20x20 = 400 pixels > 399
    assert kinds["unknown_label"] == ("b.png", "x:2")
    assert [p.detail for p in report.problems if p.kind == "unknown_label"] == ["not in the class list: cow"]
    assert kinds["missing_file"] == ("gone.png", "x:3")
    assert "b.png" not in {Path(p.path).name for p in report.problems if p.kind != "unknown_label"}
    json.dumps(report.to_dict())  # JSON-serialisable as is
    quick = inspect_dataset(records, max_pixels=399, check_images=False)
    assert {p.kind for p in quick.problems} == {"missing_file", "empty_labels"}  # no decoding, no vocabulary


def _encoded(records: list[Record], names: list[str]) -> list[tuple[str, list[float], list[float]]]:
    """What training sees of each record: resolved path, target and known-mask."""
    index = {name: idx for idx, name in enumerate(names)}
    return [(str(r.path.resolve()), *(part.tolist() for part in encode(r, index))) for r in records]


def test_convert_round_trips_csv_to_jsonl_to_csv(clean_data, tmp_path):
    out = tmp_path / "out"
    assert main(["data", "convert", str(clean_data), "--to", "jsonl", str(out / "all.jsonl")]) == 0
    assert main(["data", "convert", str(out / "all.jsonl"), "--to", "csv", str(tmp_path / "data" / "back.csv")]) == 0
    original = read_records(clean_data)
    names = build_vocabulary(original)
    assert _encoded(read_records(out / "all.jsonl"), names) == _encoded(original, names)
    assert _encoded(read_records(tmp_path / "data" / "back.csv"), names) == _encoded(original, names)
    first = json.loads((out / "all.jsonl").read_text().splitlines()[0])
    assert Path(first["image"]).is_absolute()  # out/ is not above the images: relative would need "../"
    rows = list(csv.reader((tmp_path / "data" / "back.csv").read_text().splitlines()))
    assert rows[0] == ["image", "labels"] and rows[1] == ["img/a.png", "cat dog"]  # relative below OUT's folder


def test_convert_keeps_unknowns_and_negatives_through_csv(tmp_path):
    for name in ("a", "b", "c"):
        _png(tmp_path / f"{name}.png", (0, 0, 0))
    lines = [
        {"image": "a.png", "labels": ["cat"], "negatives": ["dog"]},  # everything else unknown
        {"image": "b.png", "labels": ["dog", "hot dog"], "unknown": ["cat"]},
        {"image": "c.png", "labels": [], "negatives": []},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    original = read_records(source)
    names = build_vocabulary(original)
    assert main(["data", "convert", str(source), str(tmp_path / "mid.csv")]) == 0  # format from the suffix
    assert main(["data", "convert", str(tmp_path / "mid.csv"), "--to", "jsonl", str(tmp_path / "back.jsonl")]) == 0
    header = (tmp_path / "mid.csv").read_text().splitlines()[0]
    assert header == "image,cat,dog,hot dog"  # one column per class: a tag list cannot hold unknowns
    assert _encoded(read_records(tmp_path / "mid.csv"), names) == _encoded(original, names)
    assert _encoded(read_records(tmp_path / "back.jsonl"), names) == _encoded(original, names)
    assert _encoded(original, names)[0][2] == [1.0, 1.0, 0.0]  # the check above compares masks that differ


def test_convert_refuses_to_overwrite(clean_data, tmp_path, capsys):
    out = tmp_path / "taken.jsonl"
    out.write_text("keep me\n")
    assert main(["data", "convert", str(clean_data), "--to", "jsonl", str(out)]) == 2
    assert out.read_text() == "keep me\n"
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "convert", str(clean_data), "--to", "jsonl", str(out), "--overwrite"]) == 0
    assert len(read_records(out)) == 4


def test_write_records_refuses_reserved_class_columns(tmp_path):
    records = [Record(tmp_path / "a.png", ("labels",), unknown=("cat",))]
    with pytest.raises(DataError, match="'labels'"):
        write_records(records, tmp_path / "x.csv", "csv")
    assert not (tmp_path / "x.csv").exists()


def test_split_writes_three_csvs_covering_the_data(tmp_path):
    img = tmp_path / "data" / "img"
    img.mkdir(parents=True)
    tags = ["cat", "dog", "cat dog", "grass", "cat grass", "dog grass"]
    rows = []
    for idx in range(30):
        _png(img / f"{idx}.png", (idx, 0, 0), size=4)
        rows.append((f"img/{idx}.png", tags[idx % len(tags)]))
    data = _write_csv(tmp_path / "data" / "all.csv", rows)
    out = tmp_path / "splits"
    assert main(["data", "split", str(data), "--val", "0.2", "--test", "0.2", "--output-dir", str(out)]) == 0
    parts = {name: read_records(out / f"{name}.csv") for name in ("train", "val", "test")}
    paths = {name: {r.path.resolve() for r in part} for name, part in parts.items()}
    assert sum(map(len, paths.values())) == 30  # disjoint...
    assert set.union(*paths.values()) == {r.path.resolve() for r in read_records(data)}  # ...and complete
    assert 0 < len(paths["val"]) < len(paths["train"]) and 0 < len(paths["test"]) < len(paths["train"])
    names = build_vocabulary(read_records(data))
    merged = sorted(_encoded([r for part in parts.values() for r in part], names))
    assert merged == sorted(_encoded(read_records(data), names))  # labels survive the split
    assert main(["data", "split", str(data), "--output-dir", str(out)]) == 2  # refuses to overwrite

"""The shapes demo dataset: deterministic files, sane labels and boxes, reuse and regeneration."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlic.data.builders.generated import MANIFEST_NAME
from mlic.data.builders.synthetic import CLASSES, draw_scene, make_shapes_dataset

TINY = {"num_train": 24, "num_val": 6, "num_test": 6, "image_size": 32, "seed": 3}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["image", "labels"]
        return list(reader)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("shapes")
    return root, make_shapes_dataset(root, **TINY)


def test_same_call_writes_identical_bytes(tiny, tmp_path: Path) -> None:
    root, _ = tiny
    other = tmp_path / "again"
    make_shapes_dataset(other, **TINY)
    first, second = _tree_bytes(root), _tree_bytes(other)
    assert len(first) == 24 + 6 + 6 + 5  # images, 3 CSVs, boxes.jsonl, manifest
    assert first == second


def test_other_seed_gives_other_images(tiny, tmp_path: Path) -> None:
    root, _ = tiny
    make_shapes_dataset(tmp_path, **{**TINY, "seed": 4})
    image = "images/train/00000.png"
    assert (root / image).read_bytes() != (tmp_path / image).read_bytes()


def test_csv_format_and_images(tiny) -> None:
    root, paths = tiny
    assert set(paths) == {"train", "val", "test", "boxes"}
    for split, count in (("train", 24), ("val", 6), ("test", 6)):
        assert paths[split] == root / f"{split}.csv"
        rows = _read_csv(paths[split])
        assert [r["image"] for r in rows] == [f"images/{split}/{i:05d}.png" for i in range(count)]
        for row in rows:
            labels = row["labels"].split(" ")
            assert labels == sorted(set(labels)), row  # sorted, distinct, single spaces
            assert set(labels) <= set(CLASSES)
            with Image.open(paths[split].parent / row["image"]) as im:
                assert im.format == "PNG" and im.mode == "RGB" and im.size == (32, 32)


def test_label_counts_and_class_coverage(tmp_path: Path) -> None:
    paths = make_shapes_dataset(tmp_path, num_train=120, num_val=0, num_test=0, image_size=40)
    rows = _read_csv(paths["train"])
    counts = [len(r["labels"].split()) for r in rows]
    assert min(counts) >= 1 and max(counts) <= 4
    assert set(counts) == {1, 2, 3, 4}  # crowded scenes must not collapse the count distribution
    seen = {label for r in rows for label in r["labels"].split()}
    assert seen == set(CLASSES)


def test_boxes_inside_image_and_match_labels(tiny) -> None:
    root, paths = tiny
    lines = paths["boxes"].read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    csv_rows = {r["image"]: r["labels"] for split in ("train", "val", "test") for r in _read_csv(paths[split])}
    assert [r["image"] for r in records] == list(csv_rows)
    for record in records:
        labels = [obj["label"] for obj in record["objects"]]
        assert " ".join(sorted(labels)) == csv_rows[record["image"]]
        for obj in record["objects"]:
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32, record
            assert x1 - x0 >= 4 and y1 - y0 >= 4  # a visible shape, not a stray pixel


def test_box_covers_the_drawn_object() -> None:
    # A lone object on its background: pixels that differ from the background lie in its box.
    for seed in range(20):
        image, objects = draw_scene(np.random.default_rng(seed), 48)
        if len(objects) != 1:
            continue
        pixels = np.asarray(image, dtype=np.float32)
        x0, y0, x1, y1 = objects[0][1]
        inside = pixels[y0:y1, x0:x1].reshape(-1, 3)
        mask = np.ones(pixels.shape[:2], dtype=bool)
        mask[y0:y1, x0:x1] = False
        outside = pixels[mask]
        # The object contrasts with the background, so the box's colour spread exceeds the rest's.
        assert inside.std(axis=0).max() > outside.std(axis=0).max() + 5.0
        return
    pytest.fail("no single-object scene among 20 seeds")


def test_draw_scene_is_deterministic_and_objects_distinct() -> None:
    a_img, a_obj = draw_scene(np.random.default_rng(7), 40)
    b_img, b_obj = draw_scene(np.random.default_rng(7), 40)
    assert a_obj == b_obj
    assert np.array_equal(np.asarray(a_img), np.asarray(b_img))
    assert a_img.size == (40, 40) and a_img.mode == "RGB"
    labels = [label for label, _ in a_obj]
    assert len(labels) == len(set(labels))


def test_reuses_complete_dataset(tiny) -> None:
    root, _ = tiny
    watched = [root / "train.csv", root / "boxes.jsonl", root / MANIFEST_NAME, root / "images/val/00003.png"]
    before = [p.stat().st_mtime_ns for p in watched]
    make_shapes_dataset(root, **TINY)
    assert [p.stat().st_mtime_ns for p in watched] == before


def test_regenerates_when_parameters_change(tmp_path: Path) -> None:
    make_shapes_dataset(tmp_path, **TINY)
    make_shapes_dataset(tmp_path, **{**TINY, "num_train": 10, "image_size": 40})
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert manifest["counts"]["train"] == 10 and manifest["image_size"] == 40
    assert len(_read_csv(tmp_path / "train.csv")) == 10
    # Stale scenes from the larger run are removed, and new images have the new size.
    assert sorted(p.name for p in (tmp_path / "images/train").iterdir()) == [f"{i:05d}.png" for i in range(10)]
    with Image.open(tmp_path / "images/train/00000.png") as im:
        assert im.size == (40, 40)


def test_regenerates_incomplete_dataset(tmp_path: Path) -> None:
    make_shapes_dataset(tmp_path, **TINY)
    missing = tmp_path / "images/test/00002.png"
    missing.unlink()
    make_shapes_dataset(tmp_path, **TINY)
    assert missing.is_file()


def test_leaves_foreign_files_alone(tmp_path: Path) -> None:
    mine = tmp_path / "images/train/notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("keep me", encoding="utf-8")
    make_shapes_dataset(tmp_path, **TINY)
    assert mine.read_text(encoding="utf-8") == "keep me"


@pytest.mark.parametrize("bad", [{"num_train": -1}, {"image_size": 8}, {"seed": -2}])
def test_rejects_bad_parameters(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ValueError):
        make_shapes_dataset(tmp_path, **{**TINY, **bad})

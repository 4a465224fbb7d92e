"""Readers: tiny fixtures of every format written to tmp_path; exact labels, sources and error messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlic.data.readers import (
    FORMATS,
    detect_format,
    read_coco,
    read_csv,
    read_folder,
    read_jsonl,
    read_openimages,
    read_records,
    read_voc,
)
from mlic.data.records import DataError, Record


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def by_name(records: list[Record]) -> dict[str, Record]:
    return {record.path.name: record for record in records}


# --- CSV / TSV ------------------------------------------------------------------------------------


def test_csv_tag_layout_paths_sources_and_empty_cell(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "labels.csv", "image,labels\na.jpg,cat dog\nsub/b.jpg,\n\n/abs/c.jpg,dog  dog\n")
    records = read_csv(csv_path)
    assert [r.path for r in records] == [tmp_path / "a.jpg", tmp_path / "sub" / "b.jpg", Path("/abs/c.jpg")]
    assert [r.positives for r in records] == [("cat", "dog"), (), ("dog",)]
    assert [r.source for r in records] == ["labels.csv:2", "labels.csv:3", "labels.csv:5"]
    assert all(r.negatives is None and r.unknown == () for r in records)


def test_csv_tag_layout_custom_delimiter_semicolon_separator_and_image_root(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "labels.csv", "file;tags;split\nx.png;cat|big dog;train\n")
    (record,) = read_csv(csv_path, label_delimiter="|", image_root=tmp_path / "imgs")
    assert record.path == tmp_path / "imgs" / "x.png"
    assert record.positives == ("cat", "big dog")


def test_csv_explicit_columns(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "labels.csv", 'id,where,what\n1,x.jpg,"a,b"\n')
    (record,) = read_csv(csv_path, image_column="where", labels_column="what", label_delimiter=",")
    assert record.path == tmp_path / "x.jpg"
    assert record.positives == ("a", "b")


def test_tsv_class_column_layout_with_unknowns(tmp_path: Path) -> None:
    tsv = write(tmp_path / "labels.tsv", "path\tcat\tdog\tbird\nA.jpg\t1\t0\t-1\nB.jpg\t0\t\t1\n")
    first, second = read_csv(tsv)
    assert (first.positives, first.unknown, first.negatives) == (("cat",), ("bird",), None)
    assert (second.positives, second.unknown) == (("bird",), ("dog",))
    assert second.source == "labels.tsv:3"


def test_csv_explicit_class_columns_ignore_the_rest(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "labels.csv", "img,cat,dog,note\na.jpg,1,1,hello\n")
    (record,) = read_csv(csv_path, class_columns="cat, dog")
    assert record.positives == ("cat", "dog")
    (record,) = read_csv(csv_path, class_columns=["dog"])
    assert record.positives == ("dog",)


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("", {}, "labels.csv:1: no rows"),
        ("image,labels\n", {}, "labels.csv:1: no rows below the header"),
        ("image,labels\na.jpg,cat\n", {"image_column": "x"}, "labels.csv:1: unknown column 'x'; columns are: image"),
        ("image,labels\na.jpg,cat\n", {"labels_column": "tags"}, "labels.csv:1: unknown column 'tags'"),
        ("image,cat\na.jpg,1\n", {"class_columns": ["dog"]}, "labels.csv:1: unknown column 'dog'"),
        ("name,labels\na.jpg,cat\n", {}, "labels.csv:1: no image column"),
        ("image,labels\na.jpg,cat\nb.jpg,cat,dog\n", {}, "labels.csv:3: expected 2 fields like the header, got 3"),
        ("image,labels\n  ,cat\n", {}, "labels.csv:2: empty image path"),
        ("image,cat,dog\na.jpg,1,0\nb.jpg,1,yes\n", {}, "labels.csv:3: column 'dog': value 'yes'"),
        ("image\na.jpg\n", {}, "labels.csv:1: no label columns"),
        ("image,cat,cat\na.jpg,1,0\n", {}, "labels.csv:1: duplicate column"),
    ],
)
def test_csv_errors_name_file_and_line(tmp_path: Path, text: str, kwargs: dict, message: str) -> None:
    csv_path = write(tmp_path / "labels.csv", text)
    with pytest.raises(DataError) as info:
        read_csv(csv_path, **kwargs)
    assert message in str(info.value)


def test_csv_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.csv: no such file"):
        read_csv(tmp_path / "nope.csv")


# --- JSON Lines -----------------------------------------------------------------------------------


def test_jsonl_records(tmp_path: Path) -> None:
    lines = [
        {"image": "a.jpg", "labels": ["cat", "dog"]},
        {"image": "b.jpg", "labels": [], "unknown": ["cat"]},
        {"image": "c.jpg", "labels": ["dog"], "negatives": ["cat"]},
    ]
    path = write(tmp_path / "data.jsonl", json.dumps(lines[0]) + "\n\n" + "\n".join(map(json.dumps, lines[1:])))
    a, b, c = read_jsonl(path, image_root=tmp_path / "img")
    assert a.path == tmp_path / "img" / "a.jpg"
    assert (a.positives, a.negatives, a.unknown, a.source) == (("cat", "dog"), None, (), "data.jsonl:1")
    assert (b.positives, b.unknown, b.source) == ((), ("cat",), "data.jsonl:3")
    assert (c.positives, c.negatives) == (("dog",), ("cat",))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"image": "a.jpg", "labels": []}\n{"image": "b.jpg", "labels": [}\n', "data.jsonl:2: invalid JSON"),
        ('{"image": "a.jpg"}\n', "data.jsonl:1: missing key 'labels'"),
        ('\n{"labels": ["x"]}\n', "data.jsonl:2: missing key 'image'"),
        ('{"image": "a.jpg", "labels": "cat"}\n', "data.jsonl:1: 'labels' must be a list"),
        ('{"image": "a.jpg", "labels": ["cat"], "negatives": ["cat"]}\n', "data.jsonl:1: 'cat' in both"),
        ("[1, 2]\n", "data.jsonl:1: expected a JSON object"),
        ("\n\n", "data.jsonl:1: no records"),
    ],
)
def test_jsonl_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "data.jsonl", text)
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    assert message in str(info.value)


# --- COCO -----------------------------------------------------------------------------------------


def coco_file(tmp_path: Path, annotations: list[dict] | None = None) -> Path:
    data = {
        "images": [
            {"id": 1, "file_name": "one.jpg"},
            {"id": 2, "file_name": "two.jpg"},
            {"id": 3, "file_name": "empty.jpg"},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 5, "name": "cat"}],
        "annotations": annotations
        if annotations is not None
        else [
            {"id": 10, "image_id": 1, "category_id": 5, "area": 500.0},
            {"id": 11, "image_id": 1, "category_id": 1, "area": 20.0},
            {"id": 12, "image_id": 1, "category_id": 5, "area": 30.0},
            {"id": 13, "image_id": 2, "category_id": 1, "bbox": [0, 0, 2, 3]},
        ],
    }
    return write(tmp_path / "instances.json", json.dumps(data, indent=1))


def test_coco_labels_and_image_without_annotations(tmp_path: Path) -> None:
    records = read_coco(coco_file(tmp_path))
    assert [r.path for r in records] == [tmp_path / "one.jpg", tmp_path / "two.jpg", tmp_path / "empty.jpg"]
    assert [r.positives for r in records] == [("person", "cat"), ("person",), ()]
    assert [r.source for r in records] == [
        "instances.json:image_id=1",
        "instances.json:image_id=2",
        "instances.json:image_id=3",
    ]
    assert all(r.negatives is None and r.unknown == () for r in records)


def test_coco_min_area_drops_small_objects(tmp_path: Path) -> None:
    one, two, empty = read_coco(coco_file(tmp_path), min_area=25.0, image_root=tmp_path / "val")
    assert one.positives == ("cat",)  # person (area 20) dropped, cat kept through its 500 px² box
    assert two.positives == ()  # the only box is 2x3 = 6 px², so the image becomes an empty set
    assert empty.positives == ()
    assert one.path == tmp_path / "val" / "one.jpg"


def test_coco_unknown_category_and_image(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"instances.json:image_id=2: annotation 7 has unknown category id 9"):
        read_coco(coco_file(tmp_path, [{"id": 7, "image_id": 2, "category_id": 9, "area": 1}]))
    with pytest.raises(DataError, match=r"instances.json:annotations\[0\]: unknown image id 99"):
        read_coco(coco_file(tmp_path, [{"id": 7, "image_id": 99, "category_id": 1, "area": 1}]))


def test_coco_bad_files(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.json", '{\n  "images": [\n  oops\n}')
    with pytest.raises(DataError, match="bad.json:3: invalid JSON"):
        read_coco(bad)
    no_ann = write(tmp_path / "noann.json", json.dumps({"images": [], "categories": []}))
    with pytest.raises(DataError, match="noann.json: missing list 'annotations'"):
        read_coco(no_ann)


# --- Pascal VOC -----------------------------------------------------------------------------------


def voc_xml(*objects: tuple[str, int]) -> str:
    body = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in objects)
    return f"<annotation><filename>ignored.jpg</filename>{body}</annotation>"


def voc_tree(root: Path) -> Path:
    write(root / "Annotations" / "001.xml", voc_xml(("dog", 0), ("cat", 1)))
    write(root / "Annotations" / "002.xml", voc_xml(("cat", 1), ("cat", 0), ("person", 0)))
    write(root / "Annotations" / "003.xml", voc_xml())
    write(root / "ImageSets" / "Main" / "train.txt", "001\n\n002\n003\n")
    (root / "JPEGImages").mkdir()
    return root


@pytest.mark.parametrize(
    ("difficult", "first", "second"),
    [
        ("ignore", (("dog",), ("cat",)), (("cat", "person"), ())),
        ("positive", (("dog", "cat"), ()), (("cat", "person"), ())),
        ("negative", (("dog",), ()), (("cat", "person"), ())),
    ],
)
def test_voc_difficult_choices(tmp_path: Path, difficult: str, first: tuple, second: tuple) -> None:
    a, b, c = read_voc(voc_tree(tmp_path / "VOC"), difficult=difficult)
    assert (a.positives, a.unknown) == first
    assert (b.positives, b.unknown) == second
    assert (c.positives, c.unknown) == ((), ())
    assert a.path == tmp_path / "VOC" / "JPEGImages" / "001.jpg"
    assert [r.source for r in (a, b, c)] == [f"ImageSets/Main/train.txt:{n}" for n in (1, 3, 4)]


def test_voc_errors(tmp_path: Path) -> None:
    root = voc_tree(tmp_path / "VOC")
    write(root / "ImageSets" / "Main" / "val.txt", "001\n404\n")
    with pytest.raises(DataError, match=r"ImageSets/Main/val.txt:2: no annotation file Annotations/404.xml"):
        read_voc(root, split="val")
    with pytest.raises(DataError, match=r"test.txt: no such split file; splits here: train, val"):
        read_voc(root, split="test")
    with pytest.raises(DataError, match="difficult must be one of"):
        read_voc(root, difficult="maybe")
    write(root / "Annotations" / "001.xml", "<annotation>\n<object>\n</annotation>")
    with pytest.raises(DataError, match=r"Annotations/001.xml:3: invalid XML"):
        read_voc(root)


# --- Open Images ----------------------------------------------------------------------------------


def openimages_files(tmp_path: Path, rows: str, header: bool = False) -> tuple[Path, Path]:
    labels = write(tmp_path / "train-annotations-human-imagelabels.csv", "ImageID,Source,LabelName,Confidence\n" + rows)
    descriptions = ("LabelName,DisplayName\n" if header else "") + "/m/01,Cat\n/m/02,Dog\n/m/03,Tree\n"
    return labels, write(tmp_path / "oidv7-class-descriptions.csv", descriptions)


@pytest.mark.parametrize("header", [False, True])
def test_openimages_negatives_and_unknowns(tmp_path: Path, header: bool) -> None:
    rows = "img1,verification,/m/01,1\nimg1,verification,/m/02,0\nimg2,crowdsource,/m/99,1\nimg1,human,/m/03,1\n"
    labels, descriptions = openimages_files(tmp_path, rows, header)
    one, two = read_openimages(labels, class_descriptions=descriptions, image_root=tmp_path / "train")
    assert one.path == tmp_path / "train" / "img1.jpg"
    assert (one.positives, one.negatives, one.unknown) == (("Cat", "Tree"), ("Dog",), ())
    assert (two.positives, two.negatives) == (("/m/99",), ())  # unknown MID keeps its MID; negatives not None
    assert (one.source, two.source) == (f"{labels.name}:2", f"{labels.name}:4")


def test_openimages_errors(tmp_path: Path) -> None:
    labels, descriptions = openimages_files(tmp_path, "img1,x,/m/01,1\nimg1,x,/m/02,0.7\n")
    with pytest.raises(DataError, match=r"imagelabels.csv:3: Confidence '0.7' is not 0 or 1"):
        read_openimages(labels, class_descriptions=descriptions, image_root=tmp_path)
    labels, descriptions = openimages_files(tmp_path, "img1,x,/m/01,1\nimg1,y,/m/01,0\n")
    with pytest.raises(DataError, match=r"imagelabels.csv:3: 'Cat' \(/m/01\) is both present and absent"):
        read_openimages(labels, class_descriptions=descriptions, image_root=tmp_path)
    write(labels, "ImageID,LabelName\nimg1,/m/01\n")
    with pytest.raises(DataError, match=r"imagelabels.csv:1: missing column 'Confidence'"):
        read_openimages(labels, class_descriptions=descriptions, image_root=tmp_path)
    write(descriptions, "/m/01,Cat\n/m/02\n")
    with pytest.raises(DataError, match=r"class-descriptions.csv:2: expected LabelName,DisplayName"):
        read_openimages(labels, class_descriptions=descriptions, image_root=tmp_path)


def test_openimages_read_in_small_blocks_gives_the_same_records(tmp_path: Path, monkeypatch) -> None:
    """The label file is read block by block: images spanning blocks, errors in a late block, one result."""
    import mlic.data.readers.openimages as oi

    rng = np.random.default_rng(0)
    lines = [f"img{rng.integers(0, 300)},x,/m/0{rng.integers(1, 4)},{rng.integers(0, 2)}" for _ in range(4000)]
    seen: dict[tuple[str, str], str] = {}
    lines = [ln for ln in lines if seen.setdefault(tuple(ln.split(",")[0:3:2]), ln) == ln]  # no clashes
    labels, descriptions = openimages_files(tmp_path, "\n".join(lines) + "\n")
    whole = read_openimages(labels, class_descriptions=descriptions, image_root=tmp_path)
    monkeypatch.setattr(oi, "BLOCK_BYTES", 256)  # about 12 rows a block
    blocks = read_openimages(labels, class_descriptions=descriptions, image_root=tmp_path)
    assert [tuple(r.__dict__.values()) for r in whole] == [tuple(r.__dict__.values()) for r in blocks]
    assert len(whole) == len({ln.split(",")[0] for ln in lines})
    assert len(lines) > 2000
    bad = lines[:2000] + ["img1,x,/m/01,0.5"] + lines[2000:]
    write(labels, "ImageID,Source,LabelName,Confidence\n" + "\n".join(bad) + "\n")
    with pytest.raises(DataError, match=rf"imagelabels.csv:{2000 + 2}: Confidence '0.5'"):
        read_openimages(labels, class_descriptions=descriptions, image_root=tmp_path)


# --- Folder layout --------------------------------------------------------------------------------


def folder_tree(root: Path) -> Path:
    files = {
        "cat/a.jpg": b"AAA",
        "cat/nested/deep/b.PNG": b"BBB",
        "dog/a.jpg": b"AAA",  # same name and bytes as cat/a.jpg
        "dog/copy_of_b.png": b"BBB",  # other name, same bytes as cat/.../b.PNG
        "dog/c.webp": b"CCC",
        "dog/notes.txt": b"not an image",
        "dog/.hidden.jpg": b"HHH",
        "loose.jpg": b"LLL",  # directly in root: ignored
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_folder_match_by_name(tmp_path: Path) -> None:
    root = folder_tree(tmp_path / "photos")
    records = read_folder(root)
    assert [(r.source, r.positives) for r in records] == [
        ("cat/a.jpg", ("cat", "dog")),
        ("cat/nested/deep/b.PNG", ("cat",)),
        ("dog/c.webp", ("dog",)),
        ("dog/copy_of_b.png", ("dog",)),
    ]
    assert records[0].path == root / "cat" / "a.jpg"
    assert all(r.negatives is None for r in records)


def test_folder_match_by_hash(tmp_path: Path) -> None:
    root = folder_tree(tmp_path / "photos")
    records = by_name(read_folder(root, match="hash"))
    assert set(records) == {"a.jpg", "b.PNG", "c.webp"}
    assert records["a.jpg"].positives == ("cat", "dog")
    assert records["b.PNG"].positives == ("cat", "dog")  # content match across different names
    assert records["b.PNG"].path == root / "cat" / "nested" / "deep" / "b.PNG"
    assert records["c.webp"].positives == ("dog",)


def test_folder_errors(tmp_path: Path) -> None:
    write(tmp_path / "empty" / "loose.jpg", "x")
    with pytest.raises(DataError, match="no images found"):
        read_folder(tmp_path / "empty")
    with pytest.raises(DataError, match="match must be one of"):
        read_folder(tmp_path, match="size")
    with pytest.raises(DataError, match="not a folder"):
        read_folder(tmp_path / "missing")


# --- Factory --------------------------------------------------------------------------------------


def test_detect_format_each(tmp_path: Path) -> None:
    labels, _ = openimages_files(tmp_path / "oi", "img1,x,/m/01,1\n")
    cases = {
        "csv": write(tmp_path / "labels.csv", "image,labels\na.jpg,cat\n"),
        "tsv": write(tmp_path / "labels.tsv", "image\tlabels\na.jpg\tcat\n"),
        "jsonl": write(tmp_path / "labels.jsonl", '{"image": "a.jpg", "labels": []}\n'),
        "coco": coco_file(tmp_path),
        "voc": voc_tree(tmp_path / "VOC"),
        "openimages": labels,
        "folder": folder_tree(tmp_path / "photos"),
    }
    assert set(cases) == set(FORMATS)
    assert {fmt: detect_format(path) for fmt, path in cases.items()} == {fmt: fmt for fmt in cases}


def test_detect_format_failures(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="pass --format"):
        detect_format(write(tmp_path / "labels.txt", "a.jpg cat\n"))
    with pytest.raises(DataError, match="pass --format"):
        detect_format(write(tmp_path / "other.json", '{"images": []}'))
    with pytest.raises(DataError, match="no such file or folder"):
        detect_format(tmp_path / "missing.csv")


def test_read_records_dispatches_with_options(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "labels.csv", "image;labels\na.jpg;x,y\n")
    (record,) = read_records(csv_path, label_delimiter=",", image_root=None, min_area=None)
    assert record.positives == ("x", "y")
    as_tsv = write(tmp_path / "tab.txt", "image\tcat\na.jpg\t1\n")
    assert read_records(as_tsv, "tsv")[0].positives == ("cat",)
    records = read_records(coco_file(tmp_path), "auto", min_area=25.0)
    assert [r.positives for r in records] == [("cat",), (), ()]
    assert read_records(voc_tree(tmp_path / "VOC"), difficult="positive")[0].positives == ("dog", "cat")
    assert len(read_records(folder_tree(tmp_path / "photos"), match="hash")) == 3


def test_read_records_openimages_finds_class_descriptions(tmp_path: Path) -> None:
    labels, _ = openimages_files(tmp_path, "img1,x,/m/02,1\n")
    (record,) = read_records(labels, image_root=tmp_path / "images")
    assert (record.positives, record.path) == (("Dog",), tmp_path / "images" / "img1.jpg")
    with pytest.raises(DataError, match="needs --image-root"):
        read_records(labels)
    write(tmp_path / "v6-class-descriptions.csv", "/m/02,Hound\n")
    with pytest.raises(DataError, match="needs --class-descriptions"):
        read_records(labels, image_root=tmp_path)


def test_read_records_rejects_options_for_other_formats(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "labels.csv", "image,labels\na.jpg,cat\n")
    with pytest.raises(DataError, match="--coco-min-area does not apply to format 'csv'"):
        read_records(csv_path, min_area=10.0)
    with pytest.raises(DataError, match="--folder-match does not apply to format 'voc'"):
        read_records(voc_tree(tmp_path / "VOC"), match="hash")
    with pytest.raises(DataError, match="unknown reader option 'colour'"):
        read_records(csv_path, colour="red")
    with pytest.raises(DataError, match="unknown format 'xml'"):
        read_records(csv_path, "xml")

"""Label-file hygiene (duplicates, paths leaving the image root, XML bombs, unseen labels) and the image scan."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pngs import png_declaring
from timeouts import hard_timeout

from mlic.data import scan
from mlic.data.labels import encode
from mlic.data.readers import read_coco, read_jsonl, read_openimages, read_voc
from mlic.data.records import DataError, Record
from mlic.data.scan import BadImage, format_bad_images, scan_images
from mlic.data.sources import load_records, merge_duplicates, unknown_labels


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def image_bytes(fmt: str, size: tuple[int, int] = (64, 48), **params) -> bytes:
    """Noise, so compressed data is long enough to cut in half well after the header."""
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(pixels)
    if fmt == "GIF":
        im = im.convert("P", palette=Image.Palette.ADAPTIVE)
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes("PNG", (8, 6)))
    return path


# ---- duplicate rows ----------------------------------------------------------------------------------------


def test_duplicate_rows_are_merged_with_a_warning_naming_both_lines(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    png(tmp_path / "b.png")
    labels = write(tmp_path / "labels.csv", "image,labels\na.png,cat\nb.png,dog\n./a.png,dog cat\n")
    messages: list[str] = []
    records = load_records(labels, on_warning=messages.append)
    assert [(r.path.name, r.positives, r.source) for r in records] == [
        ("a.png", ("cat", "dog"), "labels.csv:2"),
        ("b.png", ("dog",), "labels.csv:3"),
    ]
    assert len(messages) == 1
    assert "1 image(s) listed more than once" in messages[0]
    assert f"{tmp_path / 'a.png'}: labels.csv:2, labels.csv:4" in messages[0]


def test_duplicate_warning_goes_to_stderr_by_default(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    png(tmp_path / "a.png")
    labels = write(tmp_path / "labels.csv", "image,labels\na.png,cat\na.png,cat\n")
    assert len(load_records(labels)) == 1
    assert "warning:" in capsys.readouterr().err


def test_no_warning_without_duplicates(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    load_records(write(tmp_path / "labels.csv", "image,labels\na.png,cat\n"), on_warning=pytest.fail)


def test_merge_positive_wins_then_unknown_wins_over_negative(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    labels = write(tmp_path / "labels.csv", "image,cat,dog,bird\na.png,1,-1,0\na.png,0,0,-1\n")
    (record,) = load_records(labels, on_warning=lambda message: None)
    assert (record.positives, record.negatives, set(record.unknown)) == (("cat",), None, {"dog", "bird"})
    target, mask = encode(record, {"bird": 0, "cat": 1, "dog": 2})
    assert target.tolist() == [0, 1, 0] and mask.tolist() == [0, 1, 0]


def test_merge_partial_labels_keeps_only_negatives_every_row_verified() -> None:
    path = Path("/data/a.jpg")
    both_partial = [
        Record(path, ("cat",), negatives=("dog", "bird"), source="x:1"),
        Record(path, (), negatives=("dog",), source="x:2"),
    ]
    (merged,), duplicates = merge_duplicates(both_partial)
    assert (merged.positives, merged.negatives, merged.unknown, merged.source) == (("cat",), ("dog",), ("bird",), "x:1")
    assert duplicates == [(str(path), ["x:1", "x:2"])]
    full_and_partial = [
        Record(path, ("cat",), unknown=("dog",)),
        Record(path, (), negatives=("dog", "cat", "emu")),
    ]
    (merged,), _ = merge_duplicates(full_and_partial)
    assert (merged.positives, merged.negatives, set(merged.unknown)) == (("cat",), ("emu",), {"dog"})


# ---- image paths leaving the image root --------------------------------------------------------------------


@pytest.mark.parametrize("image", ["../outside.png", "sub/../../outside.png", "sub/../../../etc/passwd"])
def test_csv_path_escaping_the_image_root_names_file_and_line(tmp_path: Path, image: str) -> None:
    labels = write(tmp_path / "data" / "labels.csv", f"image,labels\nok.png,cat\n{image},dog\n")
    with pytest.raises(DataError, match=r"^labels\.csv:3: image path .* escapes the image root"):
        load_records(labels, check_files=False)


def test_dotdot_staying_inside_and_absolute_paths_are_allowed(tmp_path: Path) -> None:
    elsewhere = png(tmp_path / "elsewhere" / "x.png")
    png(tmp_path / "data" / "ok.png")
    labels = write(tmp_path / "data" / "labels.csv", f"image,labels\nsub/../ok.png,cat\n{elsewhere},dog\n")
    records = load_records(labels)
    assert [r.path for r in records] == [tmp_path / "data" / "ok.png", elsewhere]


def test_image_root_option_is_the_boundary(tmp_path: Path) -> None:
    labels = write(tmp_path / "labels.csv", "image,labels\n../labels.csv,cat\n")
    with pytest.raises(DataError, match=r"labels\.csv:2: image path '\.\./labels\.csv' escapes"):
        load_records(labels, image_root=tmp_path / "images", check_files=False)


def test_other_readers_reject_escaping_paths(tmp_path: Path) -> None:
    jsonl = write(tmp_path / "data.jsonl", '{"image": "../x.png", "labels": []}\n')
    with pytest.raises(DataError, match=r"data\.jsonl:1: image path '\.\./x\.png' escapes"):
        read_jsonl(jsonl)
    coco = {"images": [{"id": 7, "file_name": "../../x.jpg"}], "annotations": [], "categories": []}
    with pytest.raises(DataError, match=r"instances\.json:image_id=7: image path .* escapes"):
        read_coco(write(tmp_path / "instances.json", json.dumps(coco)))
    voc = tmp_path / "VOC"
    write(voc / "Annotations" / "001.xml", "<annotation></annotation>")
    for image_id, message in (("../../secret", "escapes"), ("/etc/passwd", "absolute path")):
        write(voc / "ImageSets" / "Main" / "train.txt", f"001\n{image_id}\n")
        with pytest.raises(DataError, match=rf"ImageSets/Main/train\.txt:2: image .*{message}"):
            read_voc(voc)
    labels = write(tmp_path / "oi" / "labels.csv", "ImageID,LabelName,Confidence\nabc,/m/01,1\n../up,/m/01,1\n")
    descriptions = write(tmp_path / "oi" / "class-descriptions.csv", "/m/01,Cat\n")
    with pytest.raises(DataError, match=r"labels\.csv:3: image path '\.\./up\.jpg' escapes"):
        read_openimages(labels, class_descriptions=descriptions, image_root=tmp_path / "oi")


# ---- XML entity attacks ------------------------------------------------------------------------------------

BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE annotation [\n  <!ENTITY lol0 "lol">\n'
    + "".join(f'  <!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">\n' for i in range(1, 10))
    + "]>\n<annotation><object><name>&lol9;</name></object></annotation>\n"
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY xxe SYSTEM "file:///etc/hostname">]>\n'
    "<annotation><object><name>&xxe;</name></object></annotation>\n"
)


@pytest.mark.parametrize("xml", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "external-entity"])
def test_voc_xml_with_entities_is_rejected_quickly(tmp_path: Path, xml: str) -> None:
    voc = tmp_path / "VOC"
    write(voc / "Annotations" / "001.xml", xml)
    write(voc / "ImageSets" / "Main" / "train.txt", "001\n")
    start = time.perf_counter()
    with hard_timeout(20), pytest.raises(DataError, match=r"^Annotations/001\.xml: refused"):
        load_records(voc, check_files=False)
    assert time.perf_counter() - start < 2


# ---- labels outside the training vocabulary ----------------------------------------------------------------


def test_unknown_labels_lists_every_mentioned_label_missing_from_the_vocabulary() -> None:
    records = [
        Record(Path("a.jpg"), ("cat", "zebra"), unknown=("yak",)),
        Record(Path("b.jpg"), (), negatives=("emu", "dog")),
        Record(Path("c.jpg"), ("dog",)),
    ]
    assert unknown_labels(records, ["cat", "dog"]) == ["emu", "yak", "zebra"]
    assert unknown_labels(records[2:], ["cat", "dog"]) == []


# ---- scan_images -------------------------------------------------------------------------------------------


GOOD = {
    "good.jpg": image_bytes("JPEG"),
    "good.png": image_bytes("PNG"),
    "good.gif": image_bytes("GIF"),
    "good.bmp": image_bytes("BMP"),
    "good.webp": image_bytes("WEBP"),
    "good.tif": image_bytes("TIFF"),
    "trailer_after_eoi.jpg": image_bytes("JPEG") + b"SEFT" * 500,  # phone trailers after the JPEG's end
    "padded.png": image_bytes("PNG") + b"\x00" * 100,
    "no_iend.png": image_bytes("PNG")[:-12],  # pixel data complete, so the decoder reads it
}
BAD = {  # name -> (bytes, the start of the reason)
    "empty.jpg": (b"", "empty file (0 bytes)"),
    "garbage.jpg": (bytes(range(256)) * 4, "not a recognised image"),
    "notes.png": (b"not an image, just text\n", "not a recognised image"),
    "phone.jpg": (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64, "unsupported format (HEIC)"),
    "bomb.png": (png_declaring(30000, 30000), "refused as a decompression bomb"),
    "big.png": (png_declaring(3000, 2000), "image declares 3000x2000 = 6,000,000 pixels, above the limit"),
    "cut.jpg": (GOOD["good.jpg"][: len(GOOD["good.jpg"]) // 2], "truncated: no JPEG end marker"),
    "cut.png": (GOOD["good.png"][: len(GOOD["good.png"]) // 2], "truncated: no PNG IEND chunk"),
    "cut.gif": (GOOD["good.gif"][: len(GOOD["good.gif"]) // 2], "truncated: no GIF trailer"),
    "cut.bmp": (GOOD["good.bmp"][: len(GOOD["good.bmp"]) // 2], "truncated: BMP header declares"),
    "cut.tif": (GOOD["good.tif"][: len(GOOD["good.tif"]) // 2], "truncated: TIFF pixel data ends"),
    "cut.webp": (GOOD["good.webp"][: len(GOOD["good.webp"]) // 2], "cannot read image"),
}


@pytest.mark.parametrize("processes", [False, True], ids=["in-process", "process-pool"])
def test_scan_finds_each_kind_of_bad_file_with_path_source_and_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: bool
) -> None:
    if processes:  # the path a large set takes: blocks of files checked by forked processes
        monkeypatch.setattr(scan, "PARALLEL_FROM", 1)
        monkeypatch.setattr(scan, "SCAN_BLOCK", 3)
        monkeypatch.setattr(scan, "cpu_count", lambda: 2)
    records = []
    for line, (name, data) in enumerate([*((n, d) for n, d in GOOD.items()), *((n, d) for n, (d, _) in BAD.items())]):
        (tmp_path / name).write_bytes(data)
        records.append(Record(tmp_path / name, ("cat",), source=f"labels.csv:{line + 2}"))
    (tmp_path / "folder.jpg").mkdir()
    records += [
        Record(tmp_path / "missing.jpg", ("cat",), source="labels.csv:90"),
        Record(tmp_path / "folder.jpg", ("cat",), source="labels.csv:91"),
        Record(tmp_path / "empty.jpg", ("dog",), source="other.csv:5"),  # listed twice: reported twice
    ]
    bad = scan_images(records, max_pixels=1_000_000)
    found = {(Path(item.path).name, item.source): item.reason for item in bad}
    expected = {name: reason for name, (_, reason) in BAD.items()}
    expected |= {"missing.jpg": "file not found", "folder.jpg": "not a regular file"}
    assert {name for name, _ in found} == set(expected)
    for (name, _), reason in found.items():
        assert reason.startswith(expected[name]), (name, reason)
        assert str(tmp_path / name) in {item.path for item in bad}
    assert found[("empty.jpg", "other.csv:5")] == "empty file (0 bytes)"
    assert found[("missing.jpg", "labels.csv:90")] == "file not found"
    assert "decoding fails: truncated or corrupt file" in found[("cut.jpg", f"labels.csv:{len(GOOD) + 8}")]


def test_scan_limit_matches_the_decoder_default(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(png_declaring(3000, 2000))
    assert scan_images([Record(tmp_path / "big.png", ())]) == []


def test_format_bad_images_names_each_path_source_and_reason() -> None:
    bad = [BadImage(f"/data/{i}.jpg", f"labels.csv:{i + 2}", f"reason {i}") for i in range(25)]
    text = format_bad_images(bad, limit=20)
    assert text.splitlines()[0] == "25 unreadable image(s):"
    assert "  labels.csv:2: /data/0.jpg: reason 0" in text.splitlines()
    assert "/data/19.jpg" in text and "/data/20.jpg" not in text
    assert text.splitlines()[-1] == "  ... and 5 more"
    assert format_bad_images([]) == "no unreadable images"


@pytest.mark.slow
def test_scan_handles_ten_thousand_images_in_seconds(tmp_path: Path) -> None:
    data = image_bytes("JPEG", (320, 240))
    records = []
    for i in range(10_000):
        (tmp_path / f"{i}.jpg").write_bytes(data)
        records.append(Record(tmp_path / f"{i}.jpg", ("cat",)))
    start = time.perf_counter()
    assert scan_images(records) == []
    assert time.perf_counter() - start < 10

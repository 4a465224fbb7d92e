"""Hostile and messy input, item by item as the audit found them: nothing silently wrong, nothing destroyed,
nothing a client can starve. Each test drives the path a user (or an attacker) would take, mostly the real CLI."""

from __future__ import annotations

import csv
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pngs import png_declaring

from mlic.cli import main
from mlic.data.records import DataError

QUICK = ["--image-size", "32", "--epochs", "1", "--batch-size", "16", "--no-progress", "--no-report", "--device", "cpu"]


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


def _png(path: Path, size=(32, 32), colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


# ---- 1. predict --output never destroys anything -----------------------------------------------------------


def test_predict_refuses_to_write_over_its_input_image(tiny_checkpoint, tmp_path, capsys):
    photo = _png(tmp_path / "photo.png")
    before = photo.read_bytes()
    assert main(["predict", str(tiny_checkpoint), str(photo), "--output", str(photo), "--overwrite"]) == 2
    assert "is also an input" in _err_line(capsys) and photo.read_bytes() == before
    listed = tmp_path / "list.txt"
    listed.write_text("photo.png\n")
    assert main(["predict", str(tiny_checkpoint), "--list", str(listed), "--output", str(listed), "--overwrite"]) == 2
    assert listed.read_text() == "photo.png\n"
    # an image file inside an input folder
    assert main(["predict", str(tiny_checkpoint), str(tmp_path), "--output", str(tmp_path / "new.png")]) == 2
    # a list that names the output itself: stopped before anything is written there
    sneaky = tmp_path / "sneaky.txt"
    sneaky.write_text(f"photo.png\n{tmp_path / 'out.csv'}\n")
    assert main(["predict", str(tiny_checkpoint), "--list", str(sneaky), "--output", str(tmp_path / "out.csv")]) == 2
    assert "is also an input" in _err_line(capsys) and not (tmp_path / "out.csv").exists()


def test_predict_output_that_exists_or_is_a_folder(tiny_checkpoint, tmp_path, capsys):
    photo = _png(tmp_path / "in" / "photo.png")
    out = tmp_path / "preds.csv"
    out.write_text("precious\n")
    assert main(["predict", str(tiny_checkpoint), str(photo), "--output", str(out)]) == 2
    assert "exists; pass --overwrite" in _err_line(capsys) and out.read_text() == "precious\n"
    assert (
        main(["predict", str(tiny_checkpoint), str(photo), "--output", str(out), "--overwrite", "--no-progress"]) == 0
    )
    assert out.read_text().startswith("path,labels,error")
    assert main(["predict", str(tiny_checkpoint), str(photo), "--output", str(tmp_path)]) == 2
    assert "is a folder" in _err_line(capsys)


def test_an_interrupted_predict_leaves_no_half_file_and_resumes(tiny_checkpoint, tiny_shapes, tmp_path, monkeypatch):
    from mlic.inference.predictor import Predictor

    folder = tiny_shapes["test"].parent / "images" / "test"
    full, out = tmp_path / "full.csv", tmp_path / "out.csv"
    args = [str(tiny_checkpoint), str(folder), "--batch-size", "4", "--no-progress", "--device", "cpu"]
    assert main(["predict", *args, "--output", str(full)]) == 0
    real, calls = Predictor.predict_probabilities, []

    def dies_on_the_third_batch(self, images):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt  # a kill mid-run
        return real(self, images)

    monkeypatch.setattr(Predictor, "predict_probabilities", dies_on_the_third_batch)
    assert main(["predict", *args, "--output", str(out)]) == 130
    assert not out.exists()  # nothing half-written under the final name
    partial = out.with_name("out.csv.partial")
    assert len(partial.read_text().splitlines()) == 1 + 8  # the header and two batches
    monkeypatch.undo()
    assert main(["predict", *args, "--output", str(out), "--resume"]) == 0
    assert out.read_bytes() == full.read_bytes() and not partial.exists()


# ---- 2. messy label files fail by file and line ----------------------------------------------------------


def _labels(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    for i in range(3):
        _png(tmp_path / f"img{i}.png")
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_stray_quote_is_an_error_naming_the_line_where_the_field_began(tmp_path, capsys):
    labels = _labels(tmp_path, 'image,labels\nimg0.png,a\n"img1.png,b\nimg2.png,c\n')
    assert main(["data", "inspect", str(labels), "--output-dir", str(tmp_path / "r")]) == 2
    assert "labels.csv:3: a quoted field starts on this line" in _err_line(capsys)
    assert main(["train", str(labels), *QUICK, "--output-dir", str(tmp_path / "runs")]) == 2
    assert "labels.csv:3: a quoted field" in _err_line(capsys)


@pytest.mark.parametrize(
    ("text", "name", "message"),
    [
        ("image,,cat\nimg0.png,1,0\n", "labels.csv", "labels.csv:1: column 2: empty class name"),
        ('image,labels\nimg0.png,a\nimg1.png,"b\x00c"\n', "labels.csv", "labels.csv:3: class name 'b\\x00c'"),
        ('image,labels\nimg0.png,a\nimg1.png,"b\x1bc"\n', "labels.csv", "holds the control character '\\x1b'"),
        ("image,Labels,labels\nimg0.png,a,b\n", "labels.csv", "columns 'Labels', 'labels' differ only by case"),
        ('{"image": "img0.png", "labels": ["a", " "]}\n', "l.jsonl", "l.jsonl:1: 'labels': empty class name"),
        ("[" * 100_000 + "]" * 100_000, "deep.json", "deep.json: JSON nested too deep"),
    ],
    ids=["empty-class-column", "nul", "escape", "case-twins", "blank-tag-jsonl", "deep-json"],
)
def test_bad_label_names_and_structures_name_file_and_line(tmp_path, capsys, text, name, message):
    labels = _labels(tmp_path, text, name)
    assert main(["data", "inspect", str(labels), "--output-dir", str(tmp_path / "r"), "--format", "auto"]) in (1, 2)
    printed = capsys.readouterr()
    assert message in printed.err + printed.out
    assert "Traceback" not in printed.err


def test_coco_category_names_must_be_present_and_distinct(tmp_path, capsys):
    _png(tmp_path / "a.png")
    for categories, message in (
        ([{"id": 1, "name": ""}], "instances.json:categories[0]: empty class name"),
        ([{"id": 1, "name": "cat"}, {"id": 2, "name": "cat"}], "category name 'cat' is also id 1's"),
    ):
        data = {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [], "categories": categories}
        (tmp_path / "instances.json").write_text(json.dumps(data))
        assert main(["train", str(tmp_path / "instances.json"), *QUICK, "--output-dir", str(tmp_path / "r")]) == 2
        assert message in _err_line(capsys)


def test_inspect_reports_every_bad_row_not_just_the_first(tmp_path, capsys):
    labels = _labels(tmp_path, "image,labels\nimg0.png,a\n../up.png,b\nimg1.png,a\n../../etc/passwd,c\nimg2.png,b\n")
    assert main(["data", "inspect", str(labels), "--output-dir", str(tmp_path / "r"), "--no-progress"]) == 1
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    bad = [p for p in report["problems"] if p["kind"] == "bad_row"]
    assert [p["source"] for p in bad] == ["labels.csv:3", "labels.csv:5"] and report["num_records"] == 3
    assert "escapes the image root" in bad[0]["detail"]


# ---- 3. one scan of every kind of bad file; --skip-bad-images leaves all out -----------------------------


def test_missing_truncated_non_image_and_oversized_files_are_reported_together(tiny_shapes, tmp_path, capsys):
    root = tiny_shapes["train"].parent
    rows = [row for row in csv.reader(tiny_shapes["train"].read_text().splitlines())][1:]
    good = [(str(root / image), labels) for image, labels in rows]
    (tmp_path / "cut.png").write_bytes(_png(tmp_path / "whole.png", (64, 64)).read_bytes()[:60])
    (tmp_path / "text.png").write_text("no image here")
    _png(tmp_path / "huge.png", (80, 80))
    bad = [str(tmp_path / n) for n in ("gone.png", "cut.png", "text.png", "huge.png")]
    labels = tmp_path / "train.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([["image", "labels"], *good, *[(b, "circle") for b in bad]])
    args = ["train", str(labels), "--val", str(tiny_shapes["val"]), *QUICK, "--max-image-pixels", "4000"]
    assert main([*args, "--output-dir", str(tmp_path / "runs"), "--name", "strict"]) == 2
    err = capsys.readouterr().err
    assert "4 unreadable image(s)" in err.splitlines()[-1] and "--skip-bad-images" in err.splitlines()[-1]
    for reason in ("file not found", "truncated", "not a recognised image", "--max-image-pixels raises it"):
        assert reason in err, reason
    assert main([*args, "--output-dir", str(tmp_path / "runs"), "--name", "lenient", "--skip-bad-images"]) == 0
    printed = capsys.readouterr()
    assert "leaving them out (--skip-bad-images)" in printed.out + printed.err
    assert "64 train" in printed.out + printed.err


# ---- 4. huge legitimate images: a setting raises the limit, decoding stays bounded ----------------------


def test_a_huge_image_is_refused_by_default_and_read_when_the_limit_allows(tiny_checkpoint, tmp_path, capsys):
    big = tmp_path / "poster.png"
    Image.new("L", (10_000, 9_500), 128).save(big, optimize=False)  # 95 MP, above Pillow's own 89 MP default
    out = tmp_path / "p.csv"
    base = ["predict", str(tiny_checkpoint), str(big), "--no-progress", "--device", "cpu", "--output", str(out)]
    assert main(base) == 0
    row = next(csv.DictReader(out.open()))
    assert "--max-image-pixels raises it" in row["error"]
    assert main([*base, "--overwrite", "--max-image-pixels", "100000000"]) == 0
    row = next(csv.DictReader(out.open()))
    assert row["error"] == ""


def test_huge_images_are_reduced_before_colour_conversion():
    """A 6000x6000 RGBA image staged for 64 px is box-reduced, premultiplied strip by strip (no full-size copy),
    composited on white with no dark halo; benchmarks/huge_image.py measures the memory this saves."""
    import io

    from mlic.data.images import _reduce_premultiplied, decode_image

    rgba = Image.new("RGBA", (6000, 6000), (10, 20, 30, 0))
    rgba.paste((200, 100, 50, 255), (0, 0, 3000, 6000))
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG", compress_level=1)
    small = decode_image(buffer.getvalue(), draft_size=(128, 128))
    assert 128 <= small.size[0] < 6000 / 20 and small.mode == "RGB"
    # the left half is opaque orange, the right transparent: composited on white, with no dark halo
    assert small.getpixel((0, 0)) == (200, 100, 50) and small.getpixel((small.width - 1, 0)) == (255, 255, 255)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (301, 467, 4), dtype=np.uint8), "RGBA")
    whole = np.asarray(noise.convert("RGBa").reduce(7))
    assert np.array_equal(np.asarray(_reduce_premultiplied(noise, 7, rows=3)), whole)  # strips = whole image


# ---- 5. --overwrite leaves nothing of the old run; a failed run is no run --------------------------------


def test_overwrite_removes_the_old_runs_results_and_a_failed_run_does_not_block_a_retry(tiny_shapes, tmp_path):
    runs = tmp_path / "runs"
    base = ["train", str(tiny_shapes["train"]), "--val", str(tiny_shapes["val"]), *QUICK, "--output-dir", str(runs)]
    assert main([*base, "--name", "r", "--test", str(tiny_shapes["test"])]) == 0
    assert (runs / "r" / "predictions" / "test.npz").is_file() and (runs / "r" / "test_metrics.json").is_file()
    assert main([*base, "--name", "r"]) == 2  # a run is there
    assert main([*base, "--name", "r", "--overwrite"]) == 0
    assert not (runs / "r" / "predictions" / "test.npz").exists() and not (runs / "r" / "test_metrics.json").exists()
    failed = ["train", str(tmp_path / "missing.csv"), *QUICK, "--output-dir", str(runs), "--name", "f"]
    assert main(failed) == 2
    assert main([*base, "--name", "f"]) == 0  # the failed attempt's folder is no run: the retry just works


# ---- 6. the decoded-image cache never serves stale or foreign pixels -------------------------------------


def test_a_replaced_image_with_its_mtime_restored_is_decoded_again(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLIC_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "img").mkdir()
    a, b = tmp_path / "img" / "a.bmp", tmp_path / "img" / "b.bmp"  # uncompressed: equal sizes, other pixels
    Image.new("RGB", (32, 32), (255, 0, 0)).save(a)
    Image.new("RGB", (32, 32), (0, 0, 255)).save(b)
    assert a.stat().st_size == b.stat().st_size
    labels = tmp_path / "labels.csv"
    labels.write_text("image,labels\nimg/a.bmp,red\nimg/b.bmp,blue\n")
    args = ["data", "cache", str(labels), "--val-fraction", "0", "--image-size", "16", "--no-progress"]
    assert main(args) == 0 and "built" in capsys.readouterr().out
    assert main(args) == 0 and "reused" in capsys.readouterr().out
    stamp = a.stat()
    shutil.copyfile(b, a)  # same size, other pixels
    os.utime(a, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # what cp -p, tar x and rsync -t do
    assert a.stat().st_mtime_ns == stamp.st_mtime_ns
    assert main(args) == 0 and "built" in capsys.readouterr().out


def test_a_cache_folder_others_may_write_is_not_used(tmp_path, capsys, monkeypatch):
    shared = tmp_path / "shared-cache"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("MLIC_CACHE_DIR", str(shared))
    _png(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("image,labels\na.png,red\n")
    args = ["data", "cache", str(tmp_path / "labels.csv"), "--val-fraction", "0", "--image-size", "16"]
    assert main([*args, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"not using the image cache in {shared}: {shared} is writable by other users" in printed
    assert not (shared / "decoded").exists()


# ---- 7. checkpoints and exports are validated on load, field by field ------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(class_names=[1, 2, 3, 4, 5, 6]), "class_names must be a non-empty list"),
        (lambda m: m["class_names"].__setitem__(1, m["class_names"][0]), "more than once"),
        (lambda m: m.update(thresholds=[0.5]), "thresholds must be a list of 6 numbers"),
        (lambda m: m.update(thresholds=[0.5] * 5 + [7.0]), "thresholds[5] must be a number in [0, 1]"),
        (lambda m: m["preprocessing"].update(image_size=100_000), "preprocessing.image_size must be"),
        (lambda m: m["preprocessing"].update(std=[0, 1, 1]), "preprocessing.std must be positive"),
        (lambda m: m.update(surprise=1), "unknown key(s) surprise"),
    ],
    ids=["names", "duplicate", "thresholds-length", "threshold-range", "image-size", "std", "unknown-key"],
)
def test_tampered_checkpoint_metadata_is_refused_naming_the_field(tiny_checkpoint, tmp_path, capsys, change, message):
    ckpt = tmp_path / "best"
    shutil.copytree(tiny_checkpoint, ckpt)
    meta = json.loads((ckpt / "meta.json").read_text())
    change(meta)
    (ckpt / "meta.json").write_text(json.dumps(meta))
    assert main(["predict", str(ckpt), str(_png(tmp_path / "x.png"))]) == 2
    line = _err_line(capsys)
    assert line.startswith("mlic predict: error: ") and "meta.json" in line and message in line


def test_a_damaged_onnx_file_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07this is no protobuf" * 10)
    assert main(["predict", str(bad), str(_png(tmp_path / "x.png"))]) == 2
    assert "not a loadable ONNX model" in _err_line(capsys)


def test_resume_with_damaged_weights_or_a_foreign_state_is_refused(tiny_shapes, tmp_path, capsys):
    runs = tmp_path / "runs"
    base = ["train", str(tiny_shapes["train"]), "--val", str(tiny_shapes["val"]), *QUICK, "--output-dir", str(runs)]
    assert main([*base, "--name", "r", "--epochs", "1"]) == 0
    last = runs / "r" / "checkpoints" / "last"
    weights = (last / "model.safetensors").read_bytes()
    (last / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    assert main(["train", "--resume", str(runs / "r"), "--epochs", "2"]) == 2
    assert "model.safetensors: not a valid safetensors file" in _err_line(capsys)
    (last / "model.safetensors").write_bytes(weights)
    import torch

    state = torch.load(last / "train_state.pt", weights_only=True)
    state["injected"] = 1
    torch.save(state, last / "train_state.pt")
    assert main(["train", "--resume", str(runs / "r"), "--epochs", "2"]) == 2
    line = _err_line(capsys)
    assert "cannot resume from this training state" in line and "injected" in line


# ---- 8. readers never race a save ------------------------------------------------------------------------


def test_readers_never_rename_and_never_break_a_concurrent_save(tmp_path, monkeypatch):
    from mlic.checkpoint import load_checkpoint, read_meta, save_checkpoint
    from mlic.models import build_model

    meta = {"model": {"name": "seed_cnn", "kwargs": {"widths": [4, 4, 8, 8], "hidden": 8}}, "class_names": ["a"],
            "preprocessing": {"image_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3}}  # fmt: skip
    model = build_model("seed_cnn", 1, widths=[4, 4, 8, 8], hidden=8)
    ckpt = tmp_path / "last"
    save_checkpoint(ckpt, model, meta | {"epoch": 0})
    errors, stop = [], threading.Event()

    def read_forever():
        while not stop.is_set():
            try:
                read_meta(ckpt)
                load_checkpoint(ckpt)
            except Exception as exc:  # a reader may miss a folder mid-swap, and must say so cleanly
                if "not found" not in str(exc):
                    errors.append(exc)

    readers = [threading.Thread(target=read_forever) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for epoch in range(1, 40):
            save_checkpoint(ckpt, model, meta | {"epoch": epoch})  # must never fail ("Directory not empty")
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert not errors and read_meta(ckpt)["epoch"] == 39
    # durability order: weights on disk, then meta.json, then the folder
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))[1])
    save_checkpoint(ckpt, model, meta | {"epoch": 40})
    names = [Path(p).name for p in synced]
    assert names.index("model.safetensors") < names.index("meta.json") < names.index(".last.tmp")


# ---- 9. mlic serve: slow clients, memory bombs, Host header ---------------------------------------------


@pytest.fixture(scope="module")
def live_server(tiny_checkpoint):
    """A real uvicorn server on loopback, in a thread, with short deadlines and one work slot."""
    import socket

    import uvicorn

    from mlic.inference.serve import ServeLimits, create_app

    limits = ServeLimits(body_timeout_s=1.0, max_in_flight=1, max_uploading=8, max_request_pixels=60_000_000)
    app = create_app(tiny_checkpoint, limits, device="cpu", allowed_hosts=("localhost", "127.0.0.1"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", port
    server.should_exit = True
    thread.join(timeout=10)


def test_slow_uploads_are_cut_off_and_do_not_starve_normal_clients(live_server, tiny_shapes):
    import socket

    import httpx

    url, port = live_server
    image = sorted((tiny_shapes["test"].parent / "images" / "test").glob("*.png"))[0].read_bytes()
    slow = []
    for _ in range(4):  # headers, then a trickle: more of them than work slots
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                  b"Content-Length: 100000\r\n\r\n--x")  # fmt: skip
        slow.append(s)
    start = time.monotonic()
    r = httpx.post(f"{url}/predict", files=[("files", ("a.png", image, "image/png"))], timeout=10)
    assert r.status_code == 200 and time.monotonic() - start < 1.0  # served while the slow ones hold on
    for s in slow:
        s.settimeout(5)
        answer = b""
        while chunk := s.recv(4096):  # read until the server closes the connection
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"--body-timeout-s" in answer
        s.close()
    assert time.monotonic() - start < 4


def test_many_declared_megapixels_are_refused_before_any_decoding(live_server):
    import httpx

    url, _ = live_server
    bomb = png_declaring(7000, 7000)
    files = [("files", (f"b{i}.png", bomb, "image/png")) for i in range(16)]
    start = time.monotonic()
    r = httpx.post(f"{url}/predict", files=files, timeout=30)
    assert r.status_code == 413 and "--max-request-pixels" in r.json()["detail"]
    assert time.monotonic() - start < 2


def test_a_foreign_host_header_is_refused(live_server):
    import httpx

    url, _ = live_server
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200  # Host: 127.0.0.1:<port>
    assert httpx.get(f"{url}/health", headers={"Host": "localhost:1234"}, timeout=5).status_code == 200
    r = httpx.get(f"{url}/health", headers={"Host": "attacker.example"}, timeout=5)
    assert r.status_code == 400 and "not allowed" in r.json()["detail"]


def test_the_pixel_budget_lets_images_decode_side_by_side_only_while_they_fit():
    from mlic.inference.serve_guards import PixelBudget

    budget, inside, peak, lock = PixelBudget(100), [0], [0], threading.Lock()

    def decode(pixels):
        taken = budget.acquire(pixels)
        with lock:
            inside[0] += taken
            peak[0] = max(peak[0], inside[0])
        time.sleep(0.02)
        with lock:
            inside[0] -= taken
        budget.release(taken)

    threads = [threading.Thread(target=decode, args=(p,)) for p in (60, 60, 30, 30, 500)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] <= 100 and budget.used == 0  # the 500-pixel image ran alone, counted as the whole budget


def test_serve_defaults_answer_loopback_names_only_on_loopback():
    from mlic.inference.serve_guards import default_allowed_hosts, host_name

    assert "localhost" in default_allowed_hosts("127.0.0.1") and default_allowed_hosts("0.0.0.0") == ("*",)
    assert host_name(b"localhost:8000") == "localhost" and host_name(b"[::1]:80") == "::1"


# ---- 10. smaller things -----------------------------------------------------------------------------------


def test_class_names_with_dollar_signs_plot_and_report(tmp_path, capsys):
    labels = _labels(tmp_path, "image,labels\nimg0.png,$5\nimg1.png,a$b\nimg2.png,$x$ $5\n")
    assert main(["data", "inspect", str(labels), "--output-dir", str(tmp_path / "r"), "--no-progress"]) == 0
    assert (tmp_path / "r" / "label_frequency.png").stat().st_size > 1000


def test_evaluate_names_the_unreadable_images(tiny_checkpoint, tiny_shapes, tmp_path, capsys):
    root = tiny_shapes["test"].parent
    rows = list(csv.reader(tiny_shapes["test"].read_text().splitlines()))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with open(tmp_path / "test.csv", "w", newline="") as f:
        csv.writer(f).writerows([rows[0], *[(root / i, lab) for i, lab in rows[1:]], (tmp_path / "broken.png", "star")])
    out = tmp_path / "e.json"
    assert main(["evaluate", str(tiny_checkpoint), "--data", str(tmp_path / "test.csv"), "--output", str(out),
                 "--no-progress", "--device", "cpu"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "unreadable images skipped: 1" in printed and f"{tmp_path / 'broken.png'}:" in printed


def test_records_reject_control_characters_directly():
    from mlic.data.records import check_label

    assert check_label("  cat ", "x") == "cat"
    with pytest.raises(DataError, match="x: class name 'a\\\\nb' holds the control character"):
        check_label("a\nb", "x")

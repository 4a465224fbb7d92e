"""mlic serve: the HTTP API against a tiny trained checkpoint, through FastAPI's TestClient (no sockets)."""

import asyncio
import contextlib
import os
import re
import resource
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

if os.environ.get("CI") == "true":  # in CI a missing extra is a failure, never a skip
    import fastapi  # noqa: F401
    import httpx  # noqa: F401
else:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from mlic.cli import build_parser  # noqa: E402
from mlic.inference.predictor import Predictor  # noqa: E402
from mlic.inference.serve import ServeLimits, create_app  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def predictor(checkpoint) -> Predictor:
    return Predictor.from_checkpoint(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def images(tiny_shapes) -> list[Path]:
    return sorted((tiny_shapes["test"].parent / "images" / "test").glob("*.png"))


@pytest.fixture(scope="module")
def client(predictor):
    # exact: one image per model call, so answers are bit-for-bit the predictor's (batching is tested below)
    with TestClient(create_app(predictor, ServeLimits(max_upload_mb=0.25, exact=True))) as c:
        yield c


def _upload(path: Path, field: str = "files", name: str | None = None):
    return (field, (name or path.name, path.read_bytes(), "image/png"))


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring width x height RGB pixels, a tiny IDAT and IEND: a bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _assert_matches(result: dict, expected) -> None:
    assert result["error"] is None
    assert result["labels"] == expected.labels
    assert result["probabilities"].keys() == expected.probabilities.keys()
    for name, p in expected.probabilities.items():
        assert abs(result["probabilities"][name] - p) <= 1e-6, name
    # one image per forward pass (max_batch=1): bit-for-bit the predictor's answer, through JSON and back
    assert result["probabilities"] == expected.probabilities


def test_one_upload_matches_the_predictor(client, predictor, images):
    r = client.post("/predict", files=[_upload(images[0])])
    assert r.status_code == 200, r.text
    body = r.json()
    assert [res["filename"] for res in body["results"]] == [images[0].name]
    _assert_matches(body["results"][0], predictor.predict_image(images[0]))
    assert body["thresholds"] == dict(zip(predictor.class_names, predictor.thresholds.tolist(), strict=True))
    assert body["threshold_source"] == predictor.threshold_source


def test_several_files_in_one_request_keep_their_order(client, predictor, images):
    files = [_upload(p) for p in images[1:4]] + [_upload(images[4], field="file")]
    r = client.post("/predict", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["filename"] for res in results] == [p.name for p in images[1:5]]
    for result, path in zip(results, images[1:5], strict=True):
        _assert_matches(result, predictor.predict_image(path))


def test_a_bad_file_among_good_ones_is_reported_in_its_result(client, predictor, images):
    r = client.post("/predict", files=[_upload(images[0]), ("files", ("notes.jpg", b"just text", "image/jpeg"))])
    assert r.status_code == 200
    good, bad = r.json()["results"]
    _assert_matches(good, predictor.predict_image(images[0]))
    assert bad["filename"] == "notes.jpg" and bad["labels"] == [] and "not a recognised image" in bad["error"]


def test_text_renamed_jpg_is_415(client):
    r = client.post("/predict", files={"files": ("notes.jpg", b"shopping list: eggs, milk\n" * 20, "image/jpeg")})
    assert r.status_code == 415
    assert "notes.jpg" in r.json()["detail"] and "not a recognised image" in r.json()["detail"]


def test_every_file_refused_for_one_reason_gives_that_status(client, images):
    text = ("files", ("a.jpg", b"plain text", "image/jpeg"))
    assert client.post("/predict", files=[text, text]).status_code == 415
    data = images[0].read_bytes()
    cut = ("files", ("cut.png", data[: len(data) // 2], "image/png"))
    r = client.post("/predict", files=[text, cut])  # two different reasons
    assert r.status_code == 422 and r.json()["detail"].startswith("a.jpg: ")
    assert [res["error"] is not None for res in r.json()["results"]] == [True, True]


def test_truncated_image_is_422(client, images):
    data = images[0].read_bytes()
    r = client.post("/predict", files={"files": ("cut.png", data[: len(data) // 2], "image/png")})
    assert r.status_code == 422
    assert r.json()["results"][0]["error"]


def test_no_file_is_422(client):
    r = client.post("/predict", data={"comment": "no image here"})
    assert r.status_code == 422
    assert "files" in r.json()["detail"]


def test_too_many_files_is_413(predictor, images):
    with TestClient(create_app(predictor, ServeLimits(max_files=2))) as c:
        r = c.post("/predict", files=[_upload(images[0])] * 3)
    assert r.status_code == 413 and "3 files" in r.json()["detail"]


def _reset_peak_rss() -> None:
    """Reset this process's peak RSS (Linux >= 4.0), so a later peak measures this test and not training's."""
    with contextlib.suppress(OSError):  # elsewhere the check only catches peaks above the earlier ones
        Path("/proc/self/clear_refs").write_text("5")


@pytest.mark.parametrize("size", [(50_000, 50_000), (12_000, 12_000)])
def test_png_bomb_is_refused_fast_without_decoding(client, size):
    bomb = _png_header_only(*size)
    assert len(bomb) < 200
    _reset_peak_rss()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # peak RSS in KiB on Linux
    start = time.perf_counter()
    r = client.post("/predict", files={"files": ("bomb.png", bomb, "image/png")})
    elapsed = time.perf_counter() - start
    rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert r.status_code == 413, r.text
    assert re.search(r"pixels|decompression bomb", r.json()["detail"])
    assert elapsed < 1.0  # the acceptance bound: refused from the header, not after decoding 7.5 GB of pixels
    assert rss_growth_mb < 100


def test_max_pixels_is_the_servers_own_limit(predictor, images):
    with TestClient(create_app(predictor, ServeLimits(max_pixels=31 * 31))) as c:  # the test images are 32 x 32
        r = c.post("/predict", files=[_upload(images[0])])
    assert r.status_code == 413 and "--max-pixels" in r.json()["detail"]


def test_oversize_body_with_content_length_is_413(client):
    r = client.post("/predict", files={"files": ("big.png", b"\0" * 300_000, "image/png")})
    assert r.status_code == 413
    assert "--max-upload-mb" in r.json()["detail"]


# The start of a well-formed multipart body, so the form parser keeps reading until the limit stops it.
_PART_HEAD = b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'


def test_oversize_chunked_body_is_413(client):
    def chunks():  # a generator body goes out chunked, with no Content-Length
        yield _PART_HEAD
        for _ in range(20):
            yield b"x" * 32_768

    r = client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413
    assert "--max-upload-mb" in r.json()["detail"]


def _raw_post(app, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, int]:
    """Drive the ASGI app directly: (response status, number of body chunks the app pulled)."""
    pulled, statuses = 0, []

    async def receive():
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < len(chunks)}
        await asyncio.sleep(3600)  # the client went quiet; a well-behaved app never gets here

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}  # fmt: skip
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=30))
    assert len(statuses) == 1
    return statuses[0], pulled


def test_body_limit_reads_no_more_than_it_must(predictor):
    app = create_app(predictor, ServeLimits(max_upload_mb=100_000 / 2**20))
    multipart = [(b"content-type", b"multipart/form-data; boundary=b")]
    chunks = [_PART_HEAD] + [b"x" * 10_000] * 100  # 1 MB in all
    # declared too large: refused before a single byte is read
    assert _raw_post(app, [*multipart, (b"content-length", b"1000000")], chunks) == (413, 0)
    # chunked, or a Content-Length that lies: refused as soon as the count passes the limit
    for headers in (multipart, [*multipart, (b"content-length", b"500")]):
        status, pulled = _raw_post(app, headers, chunks)
        assert status == 413 and pulled == 11  # the part head and 9 chunks fit; the 10th crosses the limit


def test_health_and_labels(client, predictor):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["num_classes"] == len(predictor.class_names)
    assert health["limits"]["max_upload_bytes"] == 256 * 1024 and health["in_flight"] == 0
    labels = client.get("/labels").json()
    assert labels["class_names"] == predictor.class_names
    assert list(labels["thresholds"].values()) == predictor.thresholds.tolist()
    assert labels["threshold_source"] == predictor.threshold_source


def test_docs_and_openapi(client):
    assert client.get("/docs").status_code == 200 and "swagger" in client.get("/docs").text.lower()
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/labels", "/health"} <= spec["paths"].keys()
    assert "multipart/form-data" in spec["paths"]["/predict"]["post"]["requestBody"]["content"]


def test_web_page_loads_only_local_assets(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    local = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/static/app.js" in local and "/static/style.css" in local
    for url in local:
        assert url.startswith("/"), url  # no CDN, no external font
        assert client.get(url).status_code == 200, url
    for asset in ("/static/app.js", "/static/style.css"):
        assert not re.search(r"https?://", client.get(asset).text), asset


class _SlowPredictor:
    """A predictor whose model call blocks until released, to hold a request in flight."""

    def __init__(self, real: Predictor) -> None:
        self.class_names, self.thresholds = real.class_names, real.thresholds
        self.threshold_source, self.loader, self.real = real.threshold_source, real.loader, real
        self.preprocessing = real.preprocessing
        self.entered, self.release = threading.Event(), threading.Event()

    def predict_probabilities(self, images):
        self.entered.set()
        assert self.release.wait(timeout=30)
        return self.real.predict_probabilities(images)


def test_requests_beyond_max_in_flight_get_503_with_retry_after(predictor, images):
    slow = _SlowPredictor(predictor)
    with (
        TestClient(create_app(slow, ServeLimits(max_in_flight=1, retry_after_s=2))) as c,
        ThreadPoolExecutor(1) as pool,
    ):
        held = pool.submit(c.post, "/predict", files=[_upload(images[0])])
        assert slow.entered.wait(timeout=30)
        busy = c.post("/predict", files=[_upload(images[1])])
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "2" and "--max-in-flight" in busy.json()["detail"]
        assert c.get("/health").json()["in_flight"] == 1  # other endpoints stay available
        slow.release.set()
        assert held.result(timeout=30).status_code == 200
        assert c.post("/predict", files=[_upload(images[1])]).status_code == 200  # the slot is free again


@pytest.mark.parametrize("max_batch", [1, 8])
def test_concurrent_requests_equal_sequential_ones(predictor, images, max_batch):
    work = images[:16] * 2
    with TestClient(create_app(predictor, ServeLimits(max_batch=max_batch))) as c:
        sequential = [c.post("/predict", files=[_upload(p)]).json()["results"][0] for p in images[:16]]
        with ThreadPoolExecutor(16) as pool:
            concurrent = list(pool.map(lambda p: c.post("/predict", files=[_upload(p)]), work))
    assert all(r.status_code == 200 for r in concurrent)
    for r, expected in zip(concurrent, sequential * 2, strict=True):
        got = r.json()["results"][0]
        assert got["filename"] == expected["filename"] and got["labels"] == expected["labels"]
        if max_batch == 1:
            assert got["probabilities"] == expected["probabilities"]  # bit-for-bit
        else:  # images from concurrent requests share a batch, which moves float rounding only
            assert max(abs(got["probabilities"][k] - v) for k, v in expected["probabilities"].items()) <= 1e-6


def test_a_failing_model_answers_500_and_the_service_recovers(predictor, images):
    class Flaky(_SlowPredictor):
        def predict_probabilities(self, images):
            if not self.entered.is_set():
                self.entered.set()
                raise RuntimeError("out of memory, say")
            return self.real.predict_probabilities(images)

    with TestClient(create_app(Flaky(predictor)), raise_server_exceptions=False) as c:
        assert c.post("/predict", files=[_upload(images[0])]).status_code == 500
        assert c.post("/predict", files=[_upload(images[0])]).status_code == 200


def test_cli_defaults_to_loopback(checkpoint):
    args = build_parser().parse_args(["serve", str(checkpoint)])
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    defaults = (args.engine, args.max_batch, args.batch_wait_ms, args.exact, args.decode_threads)
    assert defaults == ("auto", 32, 2.0, False, 0)
    assert callable(args.run)
    assert build_parser().parse_args(["serve", str(checkpoint), "--exact"]).exact is True


def test_create_app_rejects_nonsense_limits(predictor):
    with pytest.raises(ValueError, match=r"max_upload_mb \(--max-upload-mb\) must be >= 0.001"):
        create_app(predictor, ServeLimits(max_upload_mb=0))
    with pytest.raises(ValueError, match=r"max_in_flight \(--max-in-flight\) must be >= 1"):
        create_app(predictor, ServeLimits(max_in_flight=0))


def test_exact_with_engine_onnx_is_refused():
    with pytest.raises(ValueError, match=r"exact \(--exact\) runs the torch engine"):
        ServeLimits(exact=True, engine="onnx")


def _concurrently(client, images: list[Path], rounds: int = 2) -> list[dict]:
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda p: client.post("/predict", files=[_upload(p)]), images * rounds))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200][:1]
    return [r.json()["results"][0] for r in answers]


def test_default_mode_batches_on_the_fastest_engine_within_1e4(checkpoint, predictor, images):
    """A checkpoint path served with the defaults: ONNX Runtime on the CPU, batched; /health says so."""
    pytest.importorskip("onnxruntime")
    with TestClient(create_app(checkpoint, device="cpu")) as c:
        health = c.get("/health").json()
        results = _concurrently(c, images[:16])
    model = (health["engine"], health["max_batch"], health["batch_wait_ms"], health["exact"])
    assert model == ("onnx", 32, 2.0, False) and health["decode_threads"] >= 1
    for got, path in zip(results, images[:16] * 2, strict=True):
        want = predictor.predict_image(path)
        assert got["filename"] == path.name
        assert max(abs(got["probabilities"][n] - p) for n, p in want.probabilities.items()) <= 1e-4
        near = any(abs(p - t) <= 1e-4 for p, t in zip(want.probabilities.values(), predictor.thresholds, strict=True))
        assert near or got["labels"] == want.labels


def test_exact_mode_is_bit_for_bit_under_load(checkpoint, predictor, images):
    with TestClient(create_app(checkpoint, ServeLimits(exact=True), device="cpu")) as c:
        health = c.get("/health").json()
        results = _concurrently(c, images[:16])
    assert (health["engine"], health["max_batch"], health["batch_wait_ms"], health["exact"]) == ("torch", 1, 0, True)
    for got, path in zip(results, images[:16] * 2, strict=True):
        want = predictor.predict_image(path)
        assert got["labels"] == want.labels and got["probabilities"] == want.probabilities  # every float bit-equal


class _CountingPredictor(_SlowPredictor):
    """Records the batch size of every model call; the first call blocks until released."""

    def __init__(self, real: Predictor) -> None:
        super().__init__(real)
        self.sizes: list[int] = []

    def predict_probabilities(self, images):
        self.sizes.append(len(images))
        held = len(self.sizes) == 1
        return super().predict_probabilities(images) if held else self.real.predict_probabilities(images)


def test_requests_queued_behind_a_model_call_share_the_next_one(predictor, images):
    counting = _CountingPredictor(predictor)
    with TestClient(create_app(counting, ServeLimits(max_batch=8))) as c, ThreadPoolExecutor(9) as pool:
        first = pool.submit(c.post, "/predict", files=[_upload(images[0])])
        assert counting.entered.wait(timeout=30)
        rest = [pool.submit(c.post, "/predict", files=[_upload(p)]) for p in images[1:9]]
        deadline = time.monotonic() + 30
        while c.get("/health").json()["in_flight"] < 9 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # their images decoded and queued behind the held call
        counting.release.set()
        assert all(f.result(timeout=30).status_code == 200 for f in [first, *rest])
    assert counting.sizes[0] == 1 and sum(counting.sizes) == 9 and max(counting.sizes[1:]) == 8, counting.sizes


def test_a_lone_client_never_waits_for_the_batch_window(predictor, images):
    """The window is for images still being decoded; with none, a call starts at once (here 5 s would show)."""
    with TestClient(create_app(predictor, ServeLimits(max_batch=32, batch_wait_ms=5000))) as c:
        c.post("/predict", files=[_upload(images[0])])  # warm-up
        start = time.perf_counter()
        for path in images[:3]:
            assert c.post("/predict", files=[_upload(path)]).status_code == 200
        assert time.perf_counter() - start < 3.0
        # several files of one request are decoded together: they share one call, without waiting 5 s either
        start = time.perf_counter()
        assert c.post("/predict", files=[_upload(p) for p in images[:4]]).status_code == 200
        assert time.perf_counter() - start < 3.0
        # an image that fails to decode is not waited for
        start = time.perf_counter()
        text = ("files", ("notes.jpg", b"just text", "image/jpeg"))
        assert c.post("/predict", files=[text, _upload(images[0]), text]).status_code == 200
        assert time.perf_counter() - start < 3.0


def test_the_model_worker_skips_images_whose_request_went_away():
    """A cancelled future (its client disconnected) is dropped from the batch, and the thread lives on."""
    import numpy as np
    import torch

    from mlic.inference.model_worker import ModelWorker

    entered, release, sizes = threading.Event(), threading.Event(), []

    def predict(images):
        sizes.append(len(images))
        entered.set()
        assert release.wait(timeout=30)
        return np.zeros((len(images), 1), np.float32)

    worker = ModelWorker(predict, max_batch=8)
    first = worker.submit(torch.zeros(3, 2, 2))
    assert entered.wait(timeout=30)
    gone, kept = worker.submit(torch.zeros(3, 2, 2)), worker.submit(torch.zeros(3, 2, 2))
    assert gone.cancel()
    release.set()
    assert first.result(timeout=30).shape == (1,) and kept.result(timeout=30).shape == (1,)
    worker.close()
    assert sizes == [1, 1]

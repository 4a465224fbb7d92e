"""HTTP service for a checkpoint: ``POST /predict``, ``GET /labels``, ``GET /health``, a web page at ``/``.

Each gate answers with a JSON ``detail`` before the expensive step behind it:
  body size     413 from the Content-Length header before any byte is read, and again while the body streams
                in, for chunked uploads and headers that lie (`_BodyLimit`, a pure ASGI middleware);
  in flight     503 + ``Retry-After`` once ``max_in_flight`` predict requests are being served (`_InFlightLimit`);
  image files   413 when a header declares more than ``max_pixels`` (decompression bombs), 415 for bytes that are
                no image, 422 for a broken one; per file, and the request fails only if every file does.
Bytes become pixels through `mlic.data.images.decode_image` and the checkpoint's eval transform, the very code
that training, evaluation and ``mlic predict`` run. One thread owns the model (`_ModelWorker`).

The OpenAPI page at ``/docs`` is FastAPI's Swagger UI, which loads its JavaScript and CSS from the jsDelivr CDN
(FastAPI ships no copy); ``/openapi.json`` and the web page at ``/`` need nothing from outside the server.
"""

# Only the standard library at import time: `mlic --help` imports this module for the serve defaults, and
# torch alone takes seconds to import.
import asyncio
import dataclasses
import json
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from mlic.config import at_least, setting
from mlic.errors import MissingExtraError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from fastapi import FastAPI

    from mlic.data.images import ImageDecodeError

STATIC_DIR = Path(__file__).parent / "static"


@dataclass(frozen=True)
class ServeLimits:
    """What one server accepts; the ``mlic serve`` flags are derived from these fields."""

    max_upload_mb: float = setting(32.0, "largest request body in MiB", rule=at_least(0.001))
    # 48 MP phone photos (8000 x 6000) pass. Such an image is 144 MB as RGB and peaks at several times that while
    # decoding and resizing (measured: ~850 MB for 64 MP), so decoding runs at most min(8, CPUs) images at once.
    # Lower than training's limit on purpose: a server decodes what strangers send.
    max_pixels: int = setting(50_000_000, "largest image a request may hold, width x height", rule=at_least(1))
    max_files: int = setting(16, "images per request", rule=at_least(1))
    max_in_flight: int = setting(32, "predict requests served at once; more get 503", rule=at_least(1))
    max_batch: int = setting(
        1,
        "images per model call, batched across requests; above 1 is faster on a GPU but "
        "moves probabilities by float rounding with the load (1: bit-exact)",
        rule=at_least(1),
    )
    retry_after_s: int = setting(1, "Retry-After of a 503, in seconds", rule=at_least(1))

    def __post_init__(self) -> None:
        from mlic.config import collect_settings

        for s in collect_settings(ServeLimits):
            s.check(getattr(self, s.key))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


MISSING_EXTRA = "mlic serve needs FastAPI, uvicorn and python-multipart: pip install 'mlic[serve]'"

# The web page may only load what this server sends: no CDN, no external fonts, no inline script.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


def _status_for(exc: "ImageDecodeError") -> int:
    """HTTP status for a file `decode_image` refused, from the error's kind."""
    if exc.kind == "too_large":
        return 413  # more pixels than max_pixels, or than Pillow's own hard limit
    if exc.kind == "not_image":
        return 415  # not an image format we decode, whatever the file name or part Content-Type claims
    return 422  # an image format, but truncated or corrupt


class _ModelWorker:
    """The one thread that calls the model: requests queue (image, future) jobs, the thread runs them in batches.

    One caller keeps the model away from concurrent use and keeps PyTorch's intra-op threads from fighting each
    other for the cores. With ``max_batch=1`` every image gets its own forward pass, so its answer is bit-for-bit
    ``Predictor.predict_image``'s whatever else is in flight. A larger ``max_batch`` runs images queued by
    concurrent requests together (much faster on a GPU); batch composition then moves probabilities by float
    rounding (about 1e-7), so they are no longer independent of the load.
    """

    def __init__(self, predict: Callable[["torch.Tensor"], "np.ndarray"], max_batch: int) -> None:
        self._predict, self._max_batch = predict, max_batch
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, image: "torch.Tensor") -> Future:
        """Queue one preprocessed (3, S, S) image; the future gets its (C,) probabilities."""
        with self._lock:  # started lazily: an app that is never called (or a TestClient without lifespan) works too
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mlic-model", daemon=True)
                self._thread.start()
        future: Future = Future()
        self._jobs.put((image, future))
        return future

    def close(self) -> None:
        """Finish the queued jobs and stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()

    def _run(self) -> None:
        import torch

        while (job := self._jobs.get()) is not None:
            batch = [job]
            while len(batch) < self._max_batch:  # take what is already waiting; never wait for more
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._jobs.put(None)  # stop after this batch
                    break
                batch.append(job)
            try:
                probs = self._predict(torch.stack([image for image, _ in batch]))
            except Exception as exc:  # the requests get the error; the thread lives on for the next ones
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), row in zip(batch, probs, strict=True):
                future.set_result(row)


class _Gate:
    """Count of predict requests being served, shared by the middleware and ``/health``."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count, self._lock = limit, 0, threading.Lock()

    def enter(self) -> bool:
        with self._lock:  # a lock, not just the event loop, because a TestClient may run several loops
            if self.count >= self.limit:
                return False
            self.count += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.count -= 1


async def _send_json(send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class _BodyTooLarge(Exception):
    pass


class _BodyLimit:
    """413 for request bodies over ``max_bytes``: from Content-Length before reading anything, else while reading.

    Counting the bytes of each ``http.request`` message catches chunked uploads and a Content-Length that lies.
    Once over the limit, the app's own reaction (a body-parsing error) is dropped and replaced by the 413.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        received, over, started = 0, False, False

        async def counting_receive():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message) -> None:
            nonlocal started
            if not over:
                started = True
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._reject(send)

    async def _reject(self, send) -> None:
        detail = f"request body is larger than the limit of {self.max_bytes:,} bytes (--max-upload-mb)"
        await _send_json(send, 413, {"detail": detail}, {"connection": "close"})


class _InFlightLimit:
    """503 with ``Retry-After`` for predict requests beyond ``gate.limit``, before their body is read."""

    def __init__(self, app, gate: _Gate, retry_after_s: int, paths: tuple[str, ...] = ("/predict",)) -> None:
        self.app, self.gate, self.retry_after_s, self.paths = app, gate, retry_after_s, paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        if not self.gate.enter():
            detail = f"busy: {self.gate.limit} requests in flight (max_in_flight); retry in {self.retry_after_s} s"
            await _send_json(send, 503, {"detail": detail}, {"retry-after": str(self.retry_after_s)})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.leave()


class _Service:
    """What the routes do, kept apart from FastAPI wiring: decode, queue for the model, format the answer."""

    def __init__(self, predictor, limits: ServeLimits, decode_threads: int) -> None:
        self.predictor, self.max_files = predictor, limits.max_files
        # the predictor's own pixels (decoder, reduced-size decoding, eval transform) under the server's pixel limit
        self.loader = dataclasses.replace(predictor.loader, max_pixels=limits.max_pixels)
        self.class_names: list[str] = list(predictor.class_names)
        self.thresholds = [float(t) for t in predictor.thresholds]
        self.worker = _ModelWorker(predictor.predict_probabilities, limits.max_batch)
        # Bounds decoded-pixel memory to decode_threads images at a time, however many requests are in flight.
        self._decoding = threading.BoundedSemaphore(decode_threads)

    def labels(self) -> dict[str, Any]:
        return {
            "class_names": self.class_names,
            "thresholds": dict(zip(self.class_names, self.thresholds, strict=True)),
            "threshold_source": self.predictor.threshold_source,
        }

    def _decode(self, data: bytes) -> "torch.Tensor":
        with self._decoding:
            return self.loader(data)

    async def _predict_one(self, name: str, data: bytes) -> tuple[int, dict[str, Any]]:
        from starlette.concurrency import run_in_threadpool

        from mlic.data.images import ImageDecodeError

        try:
            image = await run_in_threadpool(self._decode, data)
        except ImageDecodeError as exc:
            return _status_for(exc), {"filename": name, "labels": [], "probabilities": {}, "error": exc.reason}
        from mlic.inference.predictor import labels_at

        probs = await asyncio.wrap_future(self.worker.submit(image))
        return 200, {
            "filename": name,
            "labels": labels_at(probs, self.predictor.thresholds, self.class_names),  # predict's very rule
            "probabilities": {n: float(p) for n, p in zip(self.class_names, probs, strict=True)},
            "error": None,
        }

    async def predict(self, uploads: list) -> tuple[int, dict[str, Any]]:
        """(status, body) for uploaded files: 200 if any file was labelled, else the failures' status."""
        if not uploads:
            return 422, {"detail": "no image in the request: send multipart/form-data with one or more 'files' parts"}
        if len(uploads) > self.max_files:
            return 413, {"detail": f"{len(uploads)} files in one request, above the limit of {self.max_files}"}
        files = [(u.filename or f"file{i}", await u.read()) for i, u in enumerate(uploads)]
        outcomes = await asyncio.gather(*(self._predict_one(name, data) for name, data in files))
        labels = self.labels()
        body = {"results": [r for _, r in outcomes], "thresholds": labels["thresholds"]}
        body["threshold_source"] = labels["threshold_source"]
        failed = {status for status, _ in outcomes if status != 200}
        if any(status == 200 for status, _ in outcomes):
            return 200, body
        first = outcomes[0][1]  # every file failed: answer with their common status, or 422 if they differ
        return (failed.pop() if len(failed) == 1 else 422), {"detail": f"{first['filename']}: {first['error']}", **body}


def create_app(
    checkpoint_or_predictor, limits: ServeLimits | None = None, *, device: str = "auto", threshold: float | None = None
) -> "FastAPI":
    """The FastAPI app serving a checkpoint folder or a loaded ``Predictor``; limits as in the module docstring.

    ``device`` and ``threshold`` apply when a checkpoint path is given. ``max_batch``: see `_ModelWorker`.
    """
    try:
        from contextlib import asynccontextmanager

        from fastapi import FastAPI
        from fastapi.staticfiles import StaticFiles

        from mlic import __version__
    except ImportError as exc:
        raise MissingExtraError(MISSING_EXTRA) from exc
    from mlic.runtime.cpu import cpu_count

    limits = limits or ServeLimits()
    predictor = checkpoint_or_predictor
    if isinstance(predictor, str | Path):
        from mlic.inference.predictor import Predictor

        predictor = Predictor.from_checkpoint(predictor, device=device, threshold=threshold)
    service = _Service(predictor, limits, decode_threads=min(8, cpu_count()))
    gate = _Gate(limits.max_in_flight)
    shown = dataclasses.asdict(limits) | {"max_upload_bytes": limits.max_upload_bytes}

    @asynccontextmanager
    async def lifespan(app):
        yield
        service.worker.close()

    app = FastAPI(title="mlic", description=_API_DESCRIPTION, version=__version__, lifespan=lifespan)
    app.add_middleware(_InFlightLimit, gate=gate, retry_after_s=limits.retry_after_s)
    app.add_middleware(_BodyLimit, max_bytes=limits.max_upload_bytes)  # added last = outermost: runs first
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_routes(app, service, gate, shown)
    return app


def _add_routes(app: "FastAPI", service: _Service, gate: _Gate, limits: dict[str, Any]) -> None:
    """The web page, /health, /labels and /predict."""
    from fastapi import File, UploadFile
    from fastapi.responses import FileResponse, JSONResponse

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    @app.get("/health", summary="liveness, load and limits")
    async def health() -> dict[str, Any]:
        device = str(getattr(service.predictor, "device", "cpu"))
        return {
            "status": "ok",
            "num_classes": len(service.class_names),
            "device": device,
            "in_flight": gate.count,
            "limits": limits,
        }

    @app.get("/labels", summary="class names and the threshold of each")
    async def labels() -> dict[str, Any]:
        return service.labels()

    @app.post("/predict", summary="label one or several images", responses=_PREDICT_RESPONSES)
    async def predict(
        files: Annotated[list[UploadFile] | None, File(description="images (repeat the field for several)")] = None,
        file: Annotated[UploadFile | None, File(description="one image, as an alternative to `files`")] = None,
    ) -> JSONResponse:
        status, body = await service.predict([*(files or []), *([file] if file else [])])
        return JSONResponse(body, status_code=status)


def serve(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    device: str = "auto",
    threshold: float | None = None,
    threads: int | None = None,
    log_level: str = "info",
    limits: ServeLimits | None = None,
) -> None:
    """Load ``checkpoint`` and serve it with uvicorn until interrupted."""
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingExtraError(MISSING_EXTRA) from exc
    if threads is not None:
        import torch

        torch.set_num_threads(threads)  # intra-op threads of the model's forward pass
    app = create_app(checkpoint, limits, device=device, threshold=threshold)
    # No Server header and no proxy-header trust: this binds loopback by default and has no authentication.
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False, proxy_headers=False)


_API_DESCRIPTION = """Multi-label predictions from an mlic checkpoint: the same decoder, eval preprocessing,
sigmoid and per-class thresholds as `mlic predict`. A label is predicted when its probability is at least its
class threshold. Errors are JSON objects with a `detail` field.

This page loads Swagger UI from the jsDelivr CDN; the web page at `/` and `/openapi.json` are served locally."""

_PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "one result per file, in upload order; a file that failed has `error` set"},
    413: {"description": "body above --max-upload-mb, too many files, or every image above --max-pixels"},
    415: {"description": "no file was an image"},
    422: {"description": "no file uploaded, or every image was broken"},
    503: {"description": "max_in_flight requests already in flight; see Retry-After"},
}

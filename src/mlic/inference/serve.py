"""HTTP service for a checkpoint: ``POST /predict``, ``GET /labels``, ``GET /health``, a web page at ``/``.

Each gate answers with a JSON ``detail`` before the expensive step behind it (``serve_guards``):
  host          400 for a Host header that is not allowed (DNS rebinding against a loopback server);
  upload        the body is read whole, within --body-timeout-s (else 408, the connection closed) and
                --max-upload-mb (else 413), by at most --max-uploading connections at once (else 503); slow
                clients hold an upload place, never a work slot;
  in flight     503 + ``Retry-After`` once --max-in-flight requests that have their bytes are being served;
  pixels        413 when the files of one request declare more than --max-request-pixels together; decoding
                waits for room in a server-wide budget of --max-decoding-pixels, so memory stays bounded
                however many requests arrive;
  image files   413 when a header declares more than --max-pixels (decompression bombs), 415 for bytes that are
                no image, 422 for a broken one; per file, and the request fails only if every file does.
Bytes become pixels through ``mlic.data.pixels`` with the checkpoint's own preprocessing, the very code that
training, evaluation and ``mlic predict`` run, in a pool of --decode-threads threads (default: one per core);
labels follow predict's rule (``labels_at``).

One thread owns the model (``ModelWorker``) and batches the images of concurrent requests: up to --max-batch
a call, waiting up to --batch-wait-ms for images still being decoded (never when none is). The model runs on
--engine: auto is ONNX Runtime on an ONNX copy of the checkpoint (exported once at start-up, then cached) when
the export extra is installed and the device is the CPU, else PyTorch; answers equal ``Predictor``'s to 1e-4.
--exact serves bit-for-bit ``Predictor.from_checkpoint(...).predict_image``: PyTorch, one image a call, no
wait. An ``.onnx`` file (``mlic export``, fp32 or INT8) is served by ONNX Runtime whatever --engine says.

The OpenAPI page at ``/docs`` is FastAPI's Swagger UI, which loads its JavaScript and CSS from the jsDelivr CDN
(FastAPI ships no copy); ``/openapi.json`` and the web page at ``/`` need nothing from outside the server.
"""

# Only the standard library at import time: `mlic --help` imports this module for the serve defaults, and
# torch alone takes seconds to import.
import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from mlic.config import ConfigError, at_least, setting
from mlic.errors import MissingExtraError
from mlic.inference.engines import ENGINES
from mlic.inference.model_worker import ModelWorker
from mlic.inference.serve_guards import (
    Gate,
    HostGuard,
    InFlightLimit,
    PixelBudget,
    UploadGate,
    default_allowed_hosts,
)
from mlic.runtime.cpu import cpu_count

if TYPE_CHECKING:
    import torch
    from fastapi import FastAPI

    from mlic.data.images import ImageDecodeError

STATIC_DIR = Path(__file__).parent / "static"


@dataclass(frozen=True)
class ServeLimits:
    """What one server accepts and how it runs the model; the ``mlic serve`` flags are derived from these fields."""

    max_upload_mb: float = setting(32.0, "largest request body in MiB", rule=at_least(0.001))
    # 48 MP phone photos (8000 x 6000) pass. Lower than training's limit on purpose: a server decodes what
    # strangers send.
    max_pixels: int = setting(50_000_000, "largest image a request may hold, width x height", rule=at_least(1))
    max_files: int = setting(16, "images per request", rule=at_least(1))
    max_request_pixels: int = setting(
        200_000_000, "pixels all images of one request may declare together (as decoded)", rule=at_least(1)
    )
    # Decoding costs about 4 to 10 bytes a pixel while it runs (the image, then its colour conversion).
    max_decoding_pixels: int = setting(
        100_000_000, "pixels being decoded at once over all requests: bounds the memory decoding takes",
        rule=at_least(1),
    )  # fmt: skip
    max_in_flight: int = setting(32, "requests with their bytes served at once; more get 503", rule=at_least(1))
    max_uploading: int = setting(64, "connections still sending their body at once; more get 503", rule=at_least(1))
    body_timeout_s: float = setting(10.0, "seconds a request's body may take to arrive; slower ones get 408",
                                    rule=at_least(0.01))  # fmt: skip
    engine: str = setting(
        "auto",
        "what runs a checkpoint's model: onnx (ONNX Runtime on an ONNX copy, exported at start-up, CPU), torch, "
        "auto: onnx on the CPU when the export extra is installed, else torch",
        choices=ENGINES,
    )
    # 32: on a CPU a call gains little past ~8 images (seed_cnn 128 px in ONNX Runtime, 2 cores: 18 ms an image
    # alone, 10-11 ms in batches of 8 to 32), a GPU gains up to far more; 64 clients then need two calls.
    max_batch: int = setting(
        32,
        "most images per model call, batched across requests; moves probabilities by float rounding with the "
        "load (1: bit-exact)",
        rule=at_least(1),
    )
    # About the time a small upload takes to decode, so a batch catches the images right behind its first; it is
    # only spent while other images are being decoded, so a lone client never waits.
    batch_wait_ms: float = setting(
        2.0, "milliseconds a model call waits for images still being decoded, up to --max-batch", rule=at_least(0)
    )
    exact: bool = setting(
        False,
        "bit-exact answers whatever the load, as Predictor.predict_image gives them: the torch engine, one image "
        "per model call, no wait (instead of --engine, --max-batch and --batch-wait-ms)",
    )
    decode_threads: int = setting(0, "threads decoding uploads (0: one per core this process may use)",
                                  rule=at_least(0))  # fmt: skip
    retry_after_s: int = setting(1, "Retry-After of a 503, in seconds", rule=at_least(1))

    def __post_init__(self) -> None:
        from mlic.config import collect_settings

        for s in collect_settings(ServeLimits):
            s.check(getattr(self, s.key))
        if self.exact and self.engine == "onnx":
            raise ConfigError("exact (--exact) runs the torch engine; leave out --engine onnx")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def model_engine(self) -> str:
        """The engine a checkpoint is served with."""
        return "torch" if self.exact else self.engine

    @property
    def model_batch(self) -> int:
        """The most images in one model call."""
        return 1 if self.exact else self.max_batch

    @property
    def model_wait_ms(self) -> float:
        """How long a model call waits for images still being decoded."""
        return 0.0 if self.model_batch == 1 else self.batch_wait_ms


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


class _Service:
    """What the routes do, kept apart from FastAPI wiring: weigh, decode, queue for the model, answer."""

    def __init__(self, predictor, limits: ServeLimits) -> None:
        self.predictor, self.limits = predictor, limits
        # the predictor's own pixels (decoder, reduced-size decoding, eval transform) under the server's pixel limit
        self.loader = dataclasses.replace(predictor.loader, max_pixels=limits.max_pixels, limit_flag="--max-pixels")
        self.class_names: list[str] = list(predictor.class_names)
        self.thresholds = [float(t) for t in predictor.thresholds]
        self.worker = ModelWorker(predictor.predict_probabilities, limits.model_batch, limits.model_wait_ms / 1000)
        self.budget = PixelBudget(limits.max_decoding_pixels)
        # Decoding is CPU work that releases the GIL (Pillow, torch): one thread per core keeps every core busy;
        # more would only make each image slower.
        self.decode_threads = limits.decode_threads or cpu_count()
        self._pool: ThreadPoolExecutor | None = None  # made on first use, and again after close (like the worker)

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The decoding threads (only the event loop's thread gets here, so no lock)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="mlic-decode")
        return self._pool

    def close(self) -> None:
        """Finish the queued model calls; stop the worker and the decoding threads."""
        self.worker.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def model_info(self) -> dict[str, Any]:
        """How the model runs, for /health."""
        return {
            "engine": getattr(self.predictor, "engine", type(self.predictor).__name__),
            "max_batch": self.limits.model_batch,
            "batch_wait_ms": self.limits.model_wait_ms,
            "exact": self.limits.exact,
            "decode_threads": self.decode_threads,
        }

    def labels(self) -> dict[str, Any]:
        return {
            "class_names": self.class_names,
            "thresholds": dict(zip(self.class_names, self.thresholds, strict=True)),
            "threshold_source": self.predictor.threshold_source,
        }

    def _weigh(self, data: bytes) -> int:
        """Pixels this file will decode (0 when its header is not readable: it fails at decoding, cheaply)."""
        from mlic.data.images import ImageDecodeError, decoded_pixels

        try:
            return decoded_pixels(data, self.loader.pre.draft_size)
        except ImageDecodeError:
            return 0

    def _decode(self, data: bytes, pixels: int) -> "torch.Tensor":
        taken = self.budget.acquire(pixels)
        try:
            return self.loader(data)
        finally:
            self.budget.release(taken)

    async def _predict_one(self, name: str, data: bytes, pixels: int) -> tuple[int, dict[str, Any]]:
        from mlic.data.images import ImageDecodeError
        from mlic.inference.predictor import labels_at

        self.worker.expect()  # before the first await: a batch being formed waits for this image too
        try:
            image = await asyncio.get_running_loop().run_in_executor(self.pool, self._decode, data, pixels)
        except ImageDecodeError as exc:
            self.worker.forget()
            return _status_for(exc), {"filename": name, "labels": [], "probabilities": {}, "error": exc.reason}
        except BaseException:  # cancelled (the client went away) or a bug: the image will not come either way
            self.worker.forget()
            raise
        probs = await asyncio.wrap_future(self.worker.submit(image, expected=True))
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
        if len(uploads) > self.limits.max_files:
            return 413, {"detail": f"{len(uploads)} files in one request, above the limit of {self.limits.max_files}"}
        files = [(u.filename or f"file{i}", await u.read()) for i, u in enumerate(uploads)]
        weights = [self._weigh(data) for _, data in files]
        if sum(weights) > self.limits.max_request_pixels:
            detail = (
                f"the images of this request declare {sum(weights):,} pixels, above the limit of "
                f"{self.limits.max_request_pixels:,} (--max-request-pixels); send fewer or smaller images"
            )
            return 413, {"detail": detail}
        outcomes = await asyncio.gather(*(self._predict_one(n, d, w) for (n, d), w in zip(files, weights, strict=True)))
        labels = self.labels()
        body = {"results": [r for _, r in outcomes], "thresholds": labels["thresholds"]}
        body["threshold_source"] = labels["threshold_source"]
        failed = {status for status, _ in outcomes if status != 200}
        if any(status == 200 for status, _ in outcomes):
            return 200, body
        first = outcomes[0][1]  # every file failed: answer with their common status, or 422 if they differ
        return (failed.pop() if len(failed) == 1 else 422), {"detail": f"{first['filename']}: {first['error']}", **body}


def create_app(
    checkpoint_or_predictor,
    limits: ServeLimits | None = None,
    *,
    device: str = "auto",
    threshold: float | None = None,
    allowed_hosts: tuple[str, ...] = ("*",),
    threads: int | None = None,
) -> "FastAPI":
    """The FastAPI app serving a checkpoint folder, an ``.onnx`` file or a loaded predictor; limits as in the
    module docstring.

    ``device``, ``threshold``, ``threads`` (ONNX Runtime's intra-op threads) and ``limits.engine`` apply when a
    path is given; ``allowed_hosts``: the Host names answered (``*``: any; ``serve`` passes the loopback names
    when it binds loopback).
    """
    try:
        from contextlib import asynccontextmanager

        from fastapi import FastAPI
        from fastapi.staticfiles import StaticFiles

        from mlic import __version__
    except ImportError as exc:
        raise MissingExtraError(MISSING_EXTRA) from exc
    limits = limits or ServeLimits()
    predictor = checkpoint_or_predictor
    if isinstance(predictor, str | Path):
        from mlic.inference.load import load_predictor

        predictor = load_predictor(predictor, device=device, threshold=threshold, engine=limits.model_engine,
                                   num_threads=threads)  # fmt: skip
    service = _Service(predictor, limits)
    in_flight, uploading = Gate(limits.max_in_flight), Gate(limits.max_uploading)

    @asynccontextmanager
    async def lifespan(app):
        yield
        service.close()

    app = FastAPI(title="mlic", description=_API_DESCRIPTION, version=__version__, lifespan=lifespan)
    # added last = outermost = runs first: the Host check, then the upload, then the work slot
    app.add_middleware(InFlightLimit, gate=in_flight, retry_after_s=limits.retry_after_s)
    app.add_middleware(UploadGate, max_bytes=limits.max_upload_bytes, deadline_s=limits.body_timeout_s,
                       uploading=uploading)  # fmt: skip
    app.add_middleware(HostGuard, allowed=allowed_hosts)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    shown = dataclasses.asdict(limits) | {"max_upload_bytes": limits.max_upload_bytes}
    _add_routes(app, service, {"in_flight": in_flight, "uploading": uploading}, shown)
    return app


def _add_routes(app: "FastAPI", service: _Service, gates: dict[str, Gate], limits: dict[str, Any]) -> None:
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
            **service.model_info(),
            "in_flight": gates["in_flight"].count,
            "uploading": gates["uploading"].count,
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
    limits: ServeLimits | None = None,
    allowed_hosts: tuple[str, ...] | None = None,
) -> None:
    """Load ``checkpoint`` and serve it with uvicorn until interrupted; ``allowed_hosts`` default: the loopback
    names when ``host`` is loopback, else any."""
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingExtraError(MISSING_EXTRA) from exc
    import torch

    from mlic.inference.load import load_predictor
    from mlic.runtime.cpu import configure_serving_allocator

    configure_serving_allocator()  # large image buffers go back to the kernel when freed
    limits = limits or ServeLimits()
    predictor = load_predictor(checkpoint, device=device, threshold=threshold, engine=limits.model_engine,
                               num_threads=threads)  # fmt: skip
    if predictor.engine == "onnx":
        # ONNX Runtime runs the model on its own threads; PyTorch only preprocesses, in the decode threads, which
        # already are one per core. Each thread that calls PyTorch gets an OpenMP team of its own, whose spinning
        # takes the cores from the others: seed_cnn, 128 px, 2 cores, decode + model of one PNG 5.0 ms with two
        # PyTorch threads, 4.4 ms with one.
        torch.set_num_threads(1)
    elif threads is not None:
        torch.set_num_threads(threads)  # intra-op threads of the model's forward pass
    allowed = allowed_hosts or default_allowed_hosts(host)
    app = create_app(predictor, limits, allowed_hosts=allowed)
    # No Server header and no proxy-header trust: this binds loopback by default and has no authentication.
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False, proxy_headers=False)


_API_DESCRIPTION = """Multi-label predictions from an mlic checkpoint: the same decoder, eval preprocessing,
sigmoid and per-class thresholds as `mlic predict`. A label is predicted when its probability is at least its
class threshold. Errors are JSON objects with a `detail` field.

This page loads Swagger UI from the jsDelivr CDN; the web page at `/` and `/openapi.json` are served locally."""

_PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "one result per file, in upload order; a file that failed has `error` set"},
    400: {"description": "a Host header that is not allowed (--allowed-hosts)"},
    408: {"description": "the body did not arrive within --body-timeout-s"},
    413: {
        "description": "body above --max-upload-mb, too many files, their pixels above --max-request-pixels, "
        "or every image above --max-pixels"
    },
    415: {"description": "no file was an image"},
    422: {"description": "no file uploaded, or every image was broken"},
    503: {"description": "--max-in-flight requests in flight or --max-uploading uploads under way; see Retry-After"},
}

"""The gates in front of ``mlic serve``'s model, as plain ASGI middleware (standard library only).

Outermost first, each answers with a JSON ``detail`` before the work behind it starts:

``HostGuard``    400 for a ``Host`` header that is not an allowed name: a server bound to loopback answers only
                 to loopback names, so a web page cannot reach it through DNS rebinding.
``UploadGate``   the body of a ``POST /predict`` is read here, whole, before any work slot is taken: 413 from
                 Content-Length or while the bytes stream in (chunked uploads, lying headers), 408 and a closed
                 connection when it has not arrived within the deadline (slow clients), 503 when too many
                 connections are uploading at once. The app then gets the complete body in one message.
``InFlightLimit`` 503 with ``Retry-After`` beyond ``max_in_flight`` requests that have their bytes.

``PixelBudget`` bounds the pixels being decoded at once over all requests (memory, not just CPU), and
``release_memory`` gives the freed heap back to the kernel after a large decode.
"""

import asyncio
import contextlib
import ctypes
import json
import threading
from collections.abc import Iterable
from typing import Any

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


async def send_json(send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def default_allowed_hosts(bind_host: str) -> tuple[str, ...]:
    """Loopback names for a loopback bind; any name (``*``) otherwise (such a server sits behind a proxy)."""
    return LOOPBACK_NAMES if bind_host in LOOPBACK_NAMES else ("*",)


def host_name(header: bytes) -> str:
    """The name part of a Host header value: ``localhost:8000`` -> ``localhost``, ``[::1]:80`` -> ``::1``."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):  # an IPv6 literal
        return text[1:].split("]", 1)[0]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class HostGuard:
    """400 for requests whose Host is not one of ``allowed`` (``*`` allows any)."""

    def __init__(self, app, allowed: Iterable[str]) -> None:
        self.app, self.allowed = app, {name.lower() for name in allowed}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and "*" not in self.allowed:
            header = dict(scope["headers"]).get(b"host", b"")
            if host_name(header) not in self.allowed:
                detail = f"Host {header.decode('latin-1')!r} is not allowed here (--allowed-hosts)"
                await send_json(send, 400, {"detail": detail}, {"connection": "close"})
                return
        await self.app(scope, receive, send)


class Gate:
    """A count of requests inside, with a limit; shared by a middleware and ``/health``."""

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


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class UploadGate:
    """Read a ``POST`` body to ``paths`` whole, within ``deadline_s`` and ``max_bytes``, while at most
    ``uploading.limit`` connections upload at once; then hand it to the app in one message."""

    def __init__(self, app, *, max_bytes: int, deadline_s: float, uploading: Gate, paths=("/predict",)) -> None:
        self.app, self.max_bytes, self.deadline_s, self.uploading, self.paths = (
            app,
            max_bytes,
            deadline_s,
            uploading,
            paths,
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        if not self.uploading.enter():
            detail = f"busy: {self.uploading.limit} uploads in progress (--max-uploading); retry shortly"
            await send_json(send, 503, {"detail": detail}, {"retry-after": "1", "connection": "close"})
            return
        try:
            body = await self._read(scope, receive)
        except _Refused as refused:
            await send_json(send, refused.status, {"detail": refused.detail}, {"connection": "close"})
            return
        finally:
            self.uploading.leave()
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, scope, receive) -> bytes:
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise _Refused(413, self._too_large())
        chunks, size = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(deadline - loop.time(), 0.0))
            except TimeoutError:
                raise _Refused(408, f"the request body did not arrive within {self.deadline_s:g} s "
                                    "(--body-timeout-s)") from None  # fmt: skip
            if message["type"] == "http.disconnect":
                raise _Refused(400, "the client went away before sending the whole body")
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                raise _Refused(413, self._too_large())
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> str:
        return f"request body is larger than the limit of {self.max_bytes:,} bytes (--max-upload-mb)"


def _replay(body: bytes, receive):
    """A ``receive`` that gives the app the whole body at once, then waits on the real one (a disconnect)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


class InFlightLimit:
    """503 with ``Retry-After`` for predict requests beyond ``gate.limit`` (their bodies are in already)."""

    def __init__(self, app, gate: Gate, retry_after_s: int, paths: tuple[str, ...] = ("/predict",)) -> None:
        self.app, self.gate, self.retry_after_s, self.paths = app, gate, retry_after_s, paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        if not self.gate.enter():
            detail = f"busy: {self.gate.limit} requests in flight (--max-in-flight); retry in {self.retry_after_s} s"
            await send_json(send, 503, {"detail": detail}, {"retry-after": str(self.retry_after_s)})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.leave()


class PixelBudget:
    """A semaphore counted in pixels: decoding waits until its image's pixels fit in what is left.

    An image larger than the whole budget still runs, alone. So memory for decoding stays near ``limit`` pixels
    whatever the number of concurrent requests, while small images decode side by side.
    """

    LARGE = 4_000_000  # pixels: after decoding an image this large, freed memory is given back once idle

    def __init__(self, limit: int) -> None:
        self.limit, self.used, self._large = limit, 0, False
        self._cond = threading.Condition()

    def acquire(self, pixels: int) -> int:
        """Block until ``pixels`` (capped at the limit) fit; returns what to ``release``."""
        take = min(max(pixels, 1), self.limit)
        with self._cond:
            self._cond.wait_for(lambda: self.used + take <= self.limit)
            self.used += take
            self._large |= pixels >= self.LARGE
        return take

    def release(self, taken: int) -> None:
        with self._cond:
            self.used -= taken
            trim = self.used == 0 and self._large
            self._large &= not trim
            self._cond.notify_all()
        if trim:
            release_memory()


def release_memory() -> None:
    """Return freed heap memory to the kernel (glibc ``malloc_trim``), so a burst of large images does not
    leave the server holding gigabytes it no longer uses. A no-op where glibc is not the allocator."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)

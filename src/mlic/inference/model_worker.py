"""The one thread that calls a server's model, taking queued images in batches."""

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch


class ModelWorker:
    """The one thread that calls the model: requests queue (image, future) jobs, the thread runs them in batches.

    One caller keeps the model away from concurrent use and keeps intra-op threads from fighting each other for
    the cores. A batch is the first queued job plus the others queued, up to ``max_batch``; while images of other
    requests are still being decoded (announced with ``expect``) it waits up to ``wait_s`` for them. So a lone
    client waits for nothing, and under load one model call serves many requests: on a CPU a batch of 16 costs
    far less than 16 calls. With ``max_batch=1`` every image gets its own forward pass, so its answer is
    bit-for-bit ``Predictor.predict_image``'s whatever else is in flight; in batches, their composition moves
    probabilities by float rounding (about 1e-7), so they are no longer independent of the load.
    """

    def __init__(self, predict: Callable[["torch.Tensor"], "np.ndarray"], max_batch: int, wait_s: float = 0.0) -> None:
        self._predict, self._max_batch, self._wait_s = predict, max_batch, wait_s
        self._jobs: deque = deque()  # (image, future), oldest first
        self._coming = 0  # images announced by expect() and neither submitted nor forgotten yet
        self._stopping = False
        self._ready = threading.Condition()  # guards the three above; notified whenever one changes
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def expect(self) -> None:
        """An image is being decoded for this worker: a batch being formed may wait (up to ``wait_s``) for it."""
        with self._ready:
            self._coming += 1

    def forget(self) -> None:
        """An image announced by ``expect`` will not come (its decoding failed, or its request went away)."""
        with self._ready:
            self._coming -= 1
            self._ready.notify()

    def submit(self, image: "torch.Tensor", *, expected: bool = False) -> Future:
        """Queue one preprocessed (3, S, S) image (``expected``: announced by ``expect``); the future gets its (C,)
        probabilities."""
        with self._lock:  # started lazily: an app that is never called (or a TestClient without lifespan) works too
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mlic-model", daemon=True)
                self._thread.start()
        future: Future = Future()
        with self._ready:  # counted out and queued at once: a waiting batch never sees it in neither place
            self._coming -= expected
            self._jobs.append((image, future))
            self._ready.notify()
        return future

    def close(self) -> None:
        """Finish the queued jobs and stop the thread."""
        with self._lock:  # a submit meanwhile waits here, then starts a new thread
            thread, self._thread = self._thread, None
            if thread is None:
                return
            with self._ready:
                self._stopping = True
                self._ready.notify()
            thread.join()
            self._stopping = False

    def _run(self) -> None:
        import torch

        while (batch := self._next_batch()) is not None:
            try:
                probs = self._predict(torch.stack([image for image, _ in batch]))
            except Exception as exc:  # the requests get the error; the thread lives on for the next ones
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), row in zip(batch, probs, strict=True):
                future.set_result(row)

    def _next_batch(self) -> list | None:
        """The next jobs to run together, oldest first; None once stopping with nothing queued."""
        with self._ready:
            batch: list = []
            while not batch:
                self._ready.wait_for(lambda: self._jobs or self._stopping)
                if not self._jobs:
                    return None
                batch = self._take(1)
            deadline = time.monotonic() + self._wait_s
            while len(batch) < self._max_batch:
                batch += self._take(self._max_batch - len(batch))
                left = deadline - time.monotonic()
                if len(batch) == self._max_batch or left <= 0 or self._coming <= 0 or self._stopping:
                    break
                if not self._jobs:
                    self._ready.wait(left)  # woken by the next submit, or a forget
            return batch

    def _take(self, most: int) -> list:
        """Up to ``most`` queued jobs whose request still waits (a client that left cancelled its future)."""
        taken = []
        while self._jobs and len(taken) < most:
            image, future = self._jobs.popleft()
            if future.set_running_or_notify_cancel():
                taken.append((image, future))
        return taken

"""The one thread that calls a server's model, taking queued images in batches."""

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch


class ModelWorker:
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
            batch = self._take_waiting([job])
            try:
                probs = self._predict(torch.stack([image for image, _ in batch]))
            except Exception as exc:  # the requests get the error; the thread lives on for the next ones
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), row in zip(batch, probs, strict=True):
                future.set_result(row)

    def _take_waiting(self, batch: list) -> list:
        """Add the jobs already waiting, up to ``max_batch``; never wait for more."""
        while len(batch) < self._max_batch:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._jobs.put(None)  # stop after this batch
                break
            batch.append(job)
        return batch

"""SIGTERM and Ctrl-C during training: finish the step, write a checkpoint, stop with 128 + the signal."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from mlic.runtime.console import log


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT: the current step finished, a checkpoint was written; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StopFlag:
    """SIGTERM / SIGINT set a flag; the loop finishes its step, checkpoints and stops (preemption-friendly)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum
        log(f"{signal.Signals(signum).name} received: finishing the current step, then writing a checkpoint")

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """The handlers, for the duration of training (only the main thread may install them)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def interrupted(self, where: str, resume_hint: str) -> TrainingInterrupted:
        name = signal.Signals(self.signum).name
        return TrainingInterrupted(f"{name}: stopped {where}. {resume_hint}", 128 + self.signum)

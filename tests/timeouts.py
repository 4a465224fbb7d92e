"""A hard time limit for tests that must fail rather than hang (decoders, workers, parsers)."""

import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def hard_timeout(seconds: int) -> Iterator[None]:
    """SIGALRM interrupts the main thread even while it waits on DataLoader worker queues."""

    def expire(signum, frame):
        raise TimeoutError(f"no result within {seconds} s: something hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)

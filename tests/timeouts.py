"""Hard time limits for tests that must fail rather than hang (decoders, workers, parsers, torchrun)."""

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


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


def run_group(cmd: list[str], timeout: int, **options) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)`` in a process group of its own: on timeout the whole
    group is killed and the test fails. ``subprocess.run`` would kill only ``cmd`` itself, and torchrun's ranks
    and their loader workers would live on, holding cores, after the test has failed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **options)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:4])} ...: no result within {timeout} s, process group killed\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

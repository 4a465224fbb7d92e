"""Rank-aware console output: only the main process prints (no monkey-patching of print)."""

from __future__ import annotations

from tqdm import tqdm as _tqdm

_state = {"main": True}


class tqdm(_tqdm):  # noqa: N801 (tqdm's own name, so call sites read as tqdm's)
    """tqdm without its monitor thread, which every bar starts, a disabled one too, and which ends with the last.

    A thread that starts or ends while a DataLoader forks its workers can leave a worker deadlocked before it
    runs a line: CPython up to 3.11.7 and 3.12.0 (gh-112275) may fork while that thread holds the interpreter's
    thread-list lock, which the child then waits for forever. Seen once in CI (Python 3.11.7): a validation
    worker of a two-rank run stuck in PyOS_AfterFork_Child -> _PyThreadState_DeleteExcept; the monitor was the
    one Python thread besides the main one that it inherited. Fewer threads make the race rarer; the race is
    CPython's. Without the monitor a bar redraws only when it advances, at most every mininterval.
    """

    monitor_interval = 0


def set_main_process(is_main: bool) -> None:
    _state["main"] = is_main


def is_main_process() -> bool:
    return _state["main"]


def log(message: str) -> None:
    """Print without breaking an active progress bar; silent on ranks other than 0."""
    if _state["main"]:
        tqdm.write(message)


def warn(message: str) -> None:
    """``log`` for warnings: to stderr, above an active progress bar; silent on ranks other than 0."""
    import sys

    if _state["main"]:
        tqdm.write(message, file=sys.stderr)


# Redrawing a bar ten times a second is right on a terminal, but in a log file (a Slurm job's stdout, CI)
# every redraw is kept: a million-image scan wrote megabytes of bars. Off a terminal, one update a minute.
LOG_FILE_INTERVAL_S = 60.0


def progress_bar(iterable=None, *, progress: bool = True, **options) -> tqdm:
    """The one way mlic draws a progress bar: off when ``progress`` is false or on ranks other than 0, and
    sparse when stderr is not a terminal."""
    import sys

    if not sys.stderr.isatty():
        options.setdefault("mininterval", LOG_FILE_INTERVAL_S)
    return tqdm(iterable, disable=not (progress and _state["main"]), **options)

"""Rank-aware console output: only the main process prints (no monkey-patching of print)."""

from __future__ import annotations

from tqdm import tqdm

_state = {"main": True}


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

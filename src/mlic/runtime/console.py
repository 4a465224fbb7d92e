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

"""Where ``mlic predict`` (and ``mlic embed``) writes: checked before any work, written aside, renamed into place
at the end.

A predictions file is never opened for writing under its final name. Rows go to ``OUT.partial`` beside it, which
replaces ``OUT`` only once the run is complete, so an interrupted run leaves the previous ``OUT`` (or none)
untouched and its rows in ``OUT.partial``, where ``--resume`` continues them. An existing ``OUT`` is replaced
only with ``--overwrite`` (or continued with ``--resume``), and an ``OUT`` that is one of the inputs (an image,
the ``--list`` file, a file inside an input folder) is refused: predicting must never destroy what it reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlic.errors import UserError


class DestinationError(UserError, ValueError):
    """``--output`` cannot be written as asked; the message says why and what to pass instead."""


@dataclass(frozen=True)
class Destination:
    """The predictions file and how to treat one that exists already."""

    path: Path
    resume: bool = False
    overwrite: bool = False
    resumable: bool = True  # whether the command has --resume (its message then offers it)

    @property
    def partial(self) -> Path:
        """Where rows are written until the run completes."""
        return self.path.with_name(self.path.name + ".partial")

    def check(self, inputs: Sequence[str | Path], list_file: str | Path | None = None) -> None:
        """Refuse, before any work, an output that is a folder, exists (without --overwrite or --resume), or is
        one of the inputs."""
        out = self.path
        if out.is_dir():
            raise DestinationError(f"--output {out}: is a folder; name the file to write")
        if not out.parent.is_dir():
            raise DestinationError(f"--output {out}: the folder {out.parent} does not exist")
        if out.exists() and not (self.overwrite or self.resume):
            offer = " or --resume to continue it" if self.resumable else ""
            raise DestinationError(f"--output {out} exists; pass --overwrite to replace it{offer}")
        for item in [*inputs, *([list_file] if list_file else [])]:
            if _is_inside(out, Path(item)):
                raise DestinationError(f"--output {out} is also an input ({item}); it would be overwritten")

    def guard(self, paths: Iterable[Path]) -> Iterator[Path]:
        """``paths``, stopping with an error at the output itself (a glob or a list that names it)."""
        target = os.path.abspath(self.path)
        for path in paths:
            if os.path.abspath(path) == target:
                raise DestinationError(f"--output {self.path} is also an input; it would be overwritten")
            yield path

    def prepare_partial(self) -> None:
        """Resuming a finished run: its output becomes the partial file again, to be continued."""
        if self.resume and not self.partial.exists() and self.path.exists():
            os.replace(self.path, self.partial)

    def commit(self) -> None:
        """The run is complete: the partial file, on disk, becomes the output."""
        with open(self.partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.partial, self.path)


def _is_inside(out: Path, item: Path) -> bool:
    """Whether writing ``out`` would overwrite input ``item``: the same file, or an image file in its folder."""
    if item.is_file():
        return out.exists() and os.path.samefile(out, item)
    if item.is_dir():
        from mlic.data.images import is_image_file  # lazily: `mlic predict --help` needs no image library

        return is_image_file(out) and out.resolve().is_relative_to(item.resolve())
    return False

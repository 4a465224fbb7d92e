"""Embeddings at scale: stream images through a predictor into a Parquet table or a ``.npy`` array.

An embedding is the model's pooled backbone features (``mlic.inference.features``), computed from the same
pixels as a prediction. Like ``mlic predict`` the run streams: inputs are expanded lazily, decoded a batch at a
time, and vectors are written as they come, so neither the paths nor the images nor the vectors are ever all
in memory. Rows are in input order; an unreadable image is left out (reported through ``on_unreadable`` and
counted), so row i is always the i-th readable input.

- ``.parquet``: columns ``path`` (string) and ``embedding`` (fixed-size list<float32> of D), a row group per
  chunk of at most ``ROW_GROUP_ROWS`` rows.
- ``.npy``: a float32 (N, D) array, plus ``OUT.paths.txt`` beside it (``emb.npy`` -> ``emb.paths.txt``) with
  the path of row i on line i. N is unknown until the lazy inputs run out, so the rows are appended after a
  header of fixed size that is rewritten with the final shape at the end (the .npy format allows padding it).

Files are written as ``OUT.partial`` and renamed into place when complete (``Destination``); a failed run
removes its partial files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlic.errors import MissingExtraError, UserError
from mlic.inference.destination import Destination, DestinationError

if TYPE_CHECKING:
    from mlic.inference.predictor import BasePredictor

OUTPUT_FORMATS = {".parquet": "parquet", ".npy": "npy"}  # --output suffix -> format
# A Parquet row group is written every ROW_GROUP_ROWS rows, or sooner at ROW_GROUP_BYTES of vectors: what is
# held in memory stays bounded (a few MB) whatever the number of images.
ROW_GROUP_ROWS, ROW_GROUP_BYTES = 4096, 8 << 20
NPY_HEADER_BYTES = 128  # magic + length + header dict padded: room for any (N, D), 64-byte aligned


class EmbedOutputError(UserError, ValueError):
    """``--output`` does not name a format embeddings can be written in."""


@dataclass
class EmbedSummary:
    embedded: int = 0  # rows written
    failed: int = 0  # unreadable images, left out
    dim: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.embedded / self.seconds if self.seconds > 0 else 0.0
        text = f"{self.embedded} image(s) embedded, {self.dim} values each, in {self.seconds:.1f} s ({rate:.1f}/s)"
        return text + (f"; {self.failed} unreadable, left out" if self.failed else "; none unreadable")


def embedding_format(out: str | Path) -> str:
    """``parquet`` or ``npy``, from ``out``'s suffix."""
    fmt = OUTPUT_FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise EmbedOutputError(f"--output {out}: cannot tell the output format; name it .parquet or .npy")
    return fmt


def paths_file(out: str | Path) -> Path:
    """Where the paths of a ``.npy`` output's rows go: ``emb.npy`` -> ``emb.paths.txt``."""
    return Path(out).with_suffix(".paths.txt")


def embedding_destinations(out: str | Path, *, overwrite: bool = False) -> list[Destination]:
    """The files an embedding run writes: ``out``, and for ``.npy`` its paths file."""
    files = [Path(out)] + ([paths_file(out)] if embedding_format(out) == "npy" else [])
    return [Destination(f, overwrite=overwrite, resumable=False) for f in files]


def check_destinations(dests: list[Destination], inputs: Iterable[str | Path], list_file: str | Path | None) -> None:
    """``Destination.check`` for each file, before any work; a paths file's refusal says whose it is."""
    inputs = list(inputs)
    for dest in dests:
        try:
            dest.check(inputs, list_file)
        except DestinationError as exc:
            if dest is dests[0]:
                raise
            raise DestinationError(f"{exc} (the list of row paths written beside {dests[0].path})") from None


def write_embeddings(
    predictor: BasePredictor,
    paths: Iterable[Path],
    out: str | Path,
    *,
    overwrite: bool = False,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = False,
    on_unreadable: Callable[[str, str], None] | None = None,
) -> EmbedSummary:
    """Embed ``paths`` (consumed lazily) into ``out`` (.parquet or .npy, see the module docstring).

    ``on_unreadable(path, why)`` is called for each image left out. An existing output is refused unless
    ``overwrite``; callers that know the inputs run ``check_destinations`` with them first, before loading the
    model, and here each input is held against the outputs as it streams by.
    """
    dests = embedding_destinations(out, overwrite=overwrite)
    check_destinations(dests, [], None)
    summary = EmbedSummary(dim=predictor.embedding_dim())
    todo: Iterable[Path] = paths
    for dest in dests:
        todo = dest.guard(todo)
    start = time.perf_counter()
    writer = _open_writer(embedding_format(out), [d.partial for d in dests], summary.dim)
    try:
        for batch in predictor.embed_paths(todo, batch_size=batch_size, num_workers=num_workers, progress=progress):
            refused = writer.add(batch.paths, batch.vectors) if batch.paths else []
            summary.embedded += len(batch.paths) - len(refused)
            summary.failed += len(batch.failed) + len(refused)
            if on_unreadable is not None:
                for path, why in batch.failed + refused:
                    on_unreadable(path, why)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    for dest in reversed(dests):  # the paths file first: an existing OUT always has its rows' paths
        dest.commit()
    summary.seconds = time.perf_counter() - start
    return summary


def _open_writer(fmt: str, files: list[Path], dim: int) -> _ParquetWriter | _NpyWriter:
    return _ParquetWriter(files[0], dim) if fmt == "parquet" else _NpyWriter(files[0], files[1], dim)


def import_parquet():
    """``pyarrow`` and ``pyarrow.parquet``, or a one-line error naming what to install."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pyarrow is a core dependency of mlic; this only happens in a broken install
        raise MissingExtraError(
            "writing .parquet needs pyarrow (a dependency of mlic): pip install 'pyarrow>=15', or write .npy"
        ) from None
    return pa, pq


class _ParquetWriter:
    """Rows buffered up to ``ROW_GROUP_ROWS`` rows or ``ROW_GROUP_BYTES`` of vectors, then written as one row group."""

    def __init__(self, path: Path, dim: int) -> None:
        self.pa, pq = import_parquet()
        self.path, self.dim = path, dim
        self.schema = self.pa.schema([("path", self.pa.string()), ("embedding", self.pa.list_(self.pa.float32(), dim))])
        self.writer = pq.ParquetWriter(str(path), self.schema)
        self.group_rows = max(64, min(ROW_GROUP_ROWS, ROW_GROUP_BYTES // (4 * max(dim, 1))))
        self.paths: list[str] = []
        self.vectors: list[np.ndarray] = []

    def add(self, paths: list[str], vectors: np.ndarray) -> list[tuple[str, str]]:
        self.paths += paths
        self.vectors.append(vectors)
        if len(self.paths) >= self.group_rows:
            self._flush()
        return []

    def _flush(self) -> None:
        if not self.paths:
            return
        flat = self.pa.array(np.concatenate(self.vectors).astype(np.float32, copy=False).ravel(), self.pa.float32())
        columns = [self.pa.array(self.paths, self.pa.string()), self.pa.FixedSizeListArray.from_arrays(flat, self.dim)]
        self.writer.write_table(self.pa.Table.from_arrays(columns, schema=self.schema), row_group_size=len(self.paths))
        self.paths, self.vectors = [], []

    def close(self) -> None:
        self._flush()
        self.writer.close()

    def abort(self) -> None:
        self.writer.close()
        self.path.unlink(missing_ok=True)


class _NpyWriter:
    """float32 rows appended after a ``NPY_HEADER_BYTES`` header, rewritten with the final shape on close."""

    def __init__(self, path: Path, names_path: Path, dim: int) -> None:
        self.path, self.names_path, self.dim, self.rows = path, names_path, dim, 0
        self.data = open(path, "wb")  # noqa: SIM115 - open for the whole run; closed by close() or abort()
        self.data.write(_npy_header(0, dim))
        self.names = open(names_path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 - as self.data

    def add(self, paths: list[str], vectors: np.ndarray) -> list[tuple[str, str]]:
        """Append the rows; a path with a line break cannot be one line of the paths file, so it is left out."""
        keep = np.array(["\n" not in p and "\r" not in p for p in paths])
        rows = np.ascontiguousarray(vectors[keep], dtype="<f4")
        self.data.write(rows.tobytes())
        self.names.write("".join(p + "\n" for p, k in zip(paths, keep, strict=True) if k))
        self.rows += len(rows)
        return [(p, "its name has a line break, which a .paths.txt line cannot hold (use .parquet)")
                for p, k in zip(paths, keep, strict=True) if not k]  # fmt: skip

    def close(self) -> None:
        self.data.seek(0)
        self.data.write(_npy_header(self.rows, self.dim))
        self.data.close()
        self.names.close()

    def abort(self) -> None:
        self.data.close()
        self.names.close()
        self.path.unlink(missing_ok=True)
        self.names_path.unlink(missing_ok=True)


def _npy_header(rows: int, dim: int) -> bytes:
    """A version 1.0 .npy header of exactly ``NPY_HEADER_BYTES`` for a little-endian float32 (rows, dim) array.

    The format (https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html): magic, version, a
    2-byte header length, then a Python dict literal padded with spaces and ended by a newline.
    """
    text = repr({"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
    body = text.ljust(NPY_HEADER_BYTES - 10 - 1) + "\n"
    if len(body) != NPY_HEADER_BYTES - 10:
        raise ValueError(f"shape ({rows}, {dim}) does not fit a {NPY_HEADER_BYTES}-byte .npy header")
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")

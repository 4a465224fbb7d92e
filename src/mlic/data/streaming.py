"""Training and validation straight from tar shards (``mlic data shard``), local or remote, each sample once.

Where the shards are: ``data/shards/shard-{000000..000511}.tar``, a folder holding a shard set, or a URL:
``s3://``, ``gs://``, ``https://`` (through fsspec: the ``stream`` extra), ``pipe:COMMAND`` (the command's
stdout, WebDataset's convention). The ``index.json`` and ``labels.parquet`` beside the shards give the class
names, each shard's sample count and every sample's labels (``--shard-index`` names the index where it is not
beside them, e.g. for ``pipe:``), so nothing is read twice and nothing is guessed.

One epoch, defined from the seed alone:

* the shards are visited in a random order drawn from (seed, epoch), and the samples inside each shard in a
  random order of their own. A set of one shard is visited in exactly the order a label file would be
  (``torch.randperm`` seeded with seed + epoch, as ``DistributedSampler``), which is how the tests hold the
  two paths equal;
* that sequence is cut into equal runs of whole batches, one per rank (``rank_batches``): every sample is seen
  exactly once per epoch and every rank takes the same number of steps (DDP needs that); where the samples do
  not divide evenly, a rank's last batch is smaller, or one sample larger, never repeated or dropped;
* each rank's batches are cut into contiguous blocks, one per DataLoader worker, so a worker reads whole runs
  of consecutive shards (a shard on a block's edge is read by two workers, each keeping its own samples).

Resuming within an epoch (``set_position``) skips the batches already trained on: each worker restarts at the
shard holding its next sample and drops the samples before it, so no sample is seen twice or missed; with
several workers the remaining batches may come in another order than in an uninterrupted run.

The decoded-image cache is never used for streamed data: a streamed set is the one that does not fit the disk.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from mlic.data.dataset import Batch, augment_sample, collate
from mlic.data.images import DEFAULT_MAX_PIXELS
from mlic.data.pixels import PixelLoader
from mlic.data.records import DataError
from mlic.data.shards import INDEX_FILE, LABELS_FILE, ShardIndex, read_label_table
from mlic.data.table import RecordTable
from mlic.data.transforms import Pipeline
from mlic.errors import MissingExtraError
from mlic.runtime.distributed import DistInfo

REMOTE_SCHEMES = ("s3", "gs", "gcs", "http", "https", "hf", "az", "abfs")
_BRACE = re.compile(r"\{([^{}]*)\}")


# ---- where the shards are ----------------------------------------------------------------------------------


def is_stream_spec(spec: str | Path | None) -> bool:
    """Whether ``spec`` names shards (a .tar pattern, a URL, ``pipe:``, a folder holding a shard set)."""
    if spec is None:
        return False
    text = str(spec)
    if text.startswith("pipe:") or urlparse(text).scheme in REMOTE_SCHEMES:
        return True
    if _BRACE.sub("", text).endswith(".tar"):
        return True
    return Path(text).is_dir() and (Path(text) / INDEX_FILE).is_file()


def expand_braces(spec: str) -> list[str]:
    """``a-{000..002}.tar`` -> a-000.tar, a-001.tar, a-002.tar; ``{x,y}`` -> x, y (as the shell and WebDataset)."""
    match = _BRACE.search(spec)
    if match is None:
        return [spec]
    body = match.group(1)
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        low, high = numeric.groups()
        width = len(low) if low.startswith("0") or len(low) == len(high) else 0
        if int(high) < int(low):
            raise DataError(f"{spec}: the range {{{body}}} runs backwards")
        options = [f"{i:0{width}d}" for i in range(int(low), int(high) + 1)]
    else:
        options = body.split(",")
    head, tail = spec[: match.start()], spec[match.end() :]
    return [expanded for option in options for expanded in expand_braces(head + option + tail)]


def open_url(url: str):
    """A readable binary stream of ``url``: a local path, ``file://``, ``pipe:COMMAND``, or any fsspec URL."""
    if url.startswith("pipe:"):
        return _PipeStream(url[len("pipe:") :])
    parsed = urlparse(url)
    if parsed.scheme in ("", "file") or len(parsed.scheme) == 1:  # a Windows drive letter is no scheme
        return open(parsed.path if parsed.scheme == "file" else url, "rb")
    try:
        import fsspec
    except ImportError as exc:
        extra = "pip install 'mlic[stream]'"
        raise MissingExtraError(f"reading {parsed.scheme}:// needs the stream extra: {extra}") from exc
    try:
        return fsspec.open(url, "rb").open()
    except ImportError as exc:  # fsspec names the package its protocol needs (s3fs, gcsfs...)
        raise MissingExtraError(f"reading {url}: {exc}") from exc


class _PipeStream(io.RawIOBase):
    """A shell command's stdout; a failing command is an error when the stream is closed, not a short read."""

    def __init__(self, command: str) -> None:
        self.command, self.ended = command, False
        self.process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.process.stdout.readinto(buffer)
        self.ended = self.ended or count == 0
        return count

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        self.process.stdout.close()
        if not self.ended:  # stopped reading early on purpose: the command's broken pipe is no error
            self.process.kill()
            self.process.wait()
            return
        code = self.process.wait()
        if code != 0:
            error = self.process.stderr.read().decode(errors="replace").strip().splitlines()
            raise DataError(f"pipe:{self.command}: exit status {code}{': ' + error[-1] if error else ''}")


def _parent(url: str) -> str:
    """The folder a shard URL sits in, as a URL of the same kind."""
    return url.rsplit("/", 1)[0] if "/" in url else "."


@dataclass
class ShardSet:
    """Shards to stream (in the order named) and what the index says of them; ``table``: their samples'
    labels, row i = the i-th sample of the named shards in order (the stream's own numbering)."""

    urls: list[str]
    sizes: list[int]
    keys: list[int]  # each shard's first sample key in the index's numbering
    index: ShardIndex
    table: RecordTable

    @classmethod
    def open(cls, spec: str, index_url: str | None = None) -> ShardSet:
        """The shards ``spec`` names, with the index (default: ``index.json`` beside them) and label table."""
        urls = _shard_urls(spec)
        if index_url is None:
            if spec.startswith("pipe:"):
                raise DataError(f"{spec}: for pipe: shards, name their index with --shard-index")
            index_url = f"{_parent(urls[0])}/{INDEX_FILE}"
        index = _read_index(index_url)
        position = {name: i for i, name in enumerate(index.shards)}
        firsts = np.concatenate([[0], np.cumsum(index.sizes)]).astype(np.int64)
        chosen = []
        for url in urls:
            name = _shard_name(url)
            if name not in position:
                raise DataError(f"{url}: not a shard of {index_url} (it lists {index.shards[0]} .. {index.shards[-1]})")
            chosen.append(position[name])
        if len(set(chosen)) != len(chosen):
            raise DataError(f"{spec}: names a shard twice")
        table = read_label_table_at(f"{_parent(index_url)}/{LABELS_FILE}", index)
        if len(table) != index.samples:
            raise DataError(f"{index_url}: the index counts {index.samples} samples, {LABELS_FILE} {len(table)}")
        rows = np.concatenate([np.arange(firsts[j], firsts[j + 1]) for j in chosen])
        table = table if np.array_equal(rows, np.arange(index.samples)) else table.take(rows)
        return cls(urls, [index.sizes[j] for j in chosen], [int(firsts[j]) for j in chosen], index, table)

    @property
    def samples(self) -> int:
        return int(sum(self.sizes))


def _shard_name(url: str) -> str:
    """The shard's file name in a URL or a ``pipe:`` command (its last ``*.tar`` word)."""
    names = re.findall(r"[^/\s]+\.tar\b", url)
    return names[-1] if names else url


def _shard_urls(spec: str) -> list[str]:
    """The shard URLs ``spec`` names: a pattern or list expanded, or every shard of a folder (local or remote)."""
    if spec.startswith("pipe:") or _BRACE.sub("", spec).endswith(".tar"):
        return expand_braces(spec)
    folder = spec.rstrip("/")
    index = _read_index(f"{folder}/{INDEX_FILE}")
    return [f"{folder}/{name}" for name in index.shards]


def _read_index(url: str) -> ShardIndex:
    try:
        with open_url(url) as stream:
            data = json.loads(stream.read())
    except FileNotFoundError:
        raise DataError(f"{url}: no shard index here (mlic data shard writes {INDEX_FILE} beside the shards)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{url}: not JSON ({exc.msg} at line {exc.lineno})") from None
    return ShardIndex.from_json(data, url)


def read_label_table_at(url: str, index: ShardIndex) -> RecordTable:
    try:
        with open_url(url) as stream:
            return read_label_table(stream, index.classes, url)
    except FileNotFoundError:
        raise DataError(f"{url}: missing (mlic data shard writes it beside {INDEX_FILE})") from None


# ---- one epoch's plan --------------------------------------------------------------------------------------


def rank_batches(total: int, world_size: int, batch_size: int) -> list[list[tuple[int, int]]]:
    """Per rank, its batches as [start, end) runs of the epoch's sequence: contiguous per rank, the same
    number on every rank, together covering ``range(total)`` exactly once."""
    if total < world_size:
        raise DataError(f"{total} samples cannot be shared by {world_size} ranks")
    full, rest = divmod(total, world_size * batch_size)
    sizes = [[batch_size] * full for _ in range(world_size)]
    if rest >= world_size or full == 0:  # one more round of smaller batches, at least one sample each
        share, more = divmod(rest, world_size)
        for rank in range(world_size):
            sizes[rank].append(share + (rank < more))
    else:  # fewer samples left than ranks: one more in the last batch of the first `rest` ranks
        for rank in range(rest):
            sizes[rank][-1] += 1
    plans, start = [], 0
    for rank_sizes in sizes:
        ends = start + np.cumsum(rank_sizes)
        plans.append([(int(a), int(b)) for a, b in zip(np.concatenate([[start], ends[:-1]]), ends, strict=True)])
        start = int(ends[-1])
    return plans


def worker_blocks(num_batches: int, num_workers: int) -> list[range]:
    """Contiguous blocks of a rank's batches, one per worker, sizes differing by at most one."""
    share, more = divmod(num_batches, num_workers)
    blocks, start = [], 0
    for w in range(num_workers):
        end = start + share + (w < more)
        blocks.append(range(start, end))
        start = end
    return blocks


def delivery_order(blocks: Sequence[range]) -> list[int]:
    """The order a DataLoader hands the workers' batches out: round robin over the workers still going."""
    return [block[r] for r in range(max((len(b) for b in blocks), default=0)) for block in blocks if r < len(block)]


class EpochOrder:
    """Where each position of an epoch's sequence comes from: shard, and sample inside it."""

    def __init__(self, sizes: Sequence[int], seed: int, epoch: int, shuffle: bool) -> None:
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        # shards (positions in ShardSet.urls) in visiting order, and the sequence position each one begins at
        count = len(sizes)
        self.shard_order = np.random.default_rng([seed, epoch]).permutation(count) if shuffle else np.arange(count)
        self.starts = np.concatenate([[0], np.cumsum(np.asarray(sizes, np.int64)[self.shard_order])])
        self._last: tuple[int, np.ndarray] | None = None

    def inside(self, visit: int) -> np.ndarray:
        """The order of the samples inside the ``visit``-th shard visited."""
        if self._last is not None and self._last[0] == visit:
            return self._last[1]
        size = int(self.starts[visit + 1] - self.starts[visit])
        if not self.shuffle:
            order = np.arange(size)
        else:
            # One shard: exactly DistributedSampler's order (seed + epoch). Others: their own stream of the seed.
            generator = torch.Generator().manual_seed(self.seed + self.epoch + int(self.shard_order[visit]) * 1_000_003)
            order = torch.randperm(size, generator=generator).numpy()
        self._last = (visit, order)
        return order

    def locate(self, start: int, end: int) -> list[tuple[int, np.ndarray]]:
        """Positions [start, end) as (visit, sample positions inside that shard) runs, in sequence order."""
        runs = []
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        for visit in range(first, len(self.shard_order)):
            a, b = int(self.starts[visit]), int(self.starts[visit + 1])
            if a >= end:
                break
            lo, hi = max(start, a) - a, min(end, b) - a
            if hi > lo:
                runs.append((visit, self.inside(visit)[lo:hi]))
        return runs


# ---- the stream ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadFailure:
    """A worker could not read a shard: handed to the main process, which raises it as a ``DataError``
    (an exception raised inside a worker would reach the user wrapped in a worker traceback)."""

    message: str


class ShardStream(IterableDataset):
    """Batches of a ``ShardSet`` for one rank, built in the DataLoader's workers (``batch_size=None``)."""

    def __init__(
        self,
        shards: ShardSet,
        class_names: Sequence[str],
        pipeline: Pipeline,
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        info: DistInfo | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        """``shuffle``: training (a new order and augmentation each epoch); off for evaluation."""
        info = info or DistInfo()
        self.shards, self.class_names, self.pipeline = shards, list(class_names), pipeline
        self.records = shards.table.with_classes(self.class_names)
        self.labels = self.records.labels
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world_size = info.rank, info.world_size
        self.loader = PixelLoader(pipeline.pre, pipeline.stage, max_pixels)
        self.epoch, self.skip = 0, 0
        self._plan = rank_batches(shards.samples, info.world_size, batch_size)[info.rank]

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Epoch to draw the order from, and how many of this rank's samples (whole batches) are done."""
        self.epoch, self.skip = epoch, start // self.batch_size

    def __len__(self) -> int:
        """Batches of this rank in one epoch (the same on every rank)."""
        return len(self._plan)

    def __iter__(self) -> Iterator[Batch | ReadFailure]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        blocks = worker_blocks(len(self._plan), workers)
        done = set(delivery_order(blocks)[: self.skip])
        mine = [b for b in blocks[worker] if b not in done]
        order = EpochOrder(self.shards.sizes, self.seed, self.epoch, self.shuffle)
        reader = _ShardReader(self.shards, order)
        for b in mine:
            start, end = self._plan[b]
            try:
                samples = [self._sample(*item) for item in reader.samples(start, end)]
            except DataError as exc:
                yield ReadFailure(str(exc))
                return
            yield collate(samples, self.labels)

    def _sample(self, index: int, data: bytes) -> dict:
        image, reason = self.loader.load_or_reason(data)
        if image is None:
            return {"index": index, "error": (self.records.paths[index], reason)}
        epoch = self.epoch if self.shuffle else None  # evaluation: no augmentation
        image, flip = augment_sample(self.pipeline, self.seed, epoch, index, image)
        return {"index": index, "image": image, "flip": flip}


class _ShardReader:
    """Reads the shards a worker needs, one at a time, keeping only the samples it asked for."""

    def __init__(self, shards: ShardSet, order: EpochOrder) -> None:
        self.shards, self.order = shards, order
        self.firsts = np.concatenate([[0], np.cumsum(shards.sizes)]).astype(np.int64)  # stream numbering
        self.visit, self.held = -1, {}

    def samples(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        """(stream index, image bytes) of sequence positions [start, end), in order."""
        for visit, inside in self.order.locate(start, end):
            shard = int(self.order.shard_order[visit])
            if visit != self.visit:  # the worker's runs are contiguous: each shard is read once
                needed = set(self._positions_needed(visit, start))
                self.held, self.visit = self._read(shard, needed), visit
            for position in inside.tolist():
                yield int(self.firsts[shard]) + position, self.held.pop(position)

    def _positions_needed(self, visit: int, start: int) -> np.ndarray:
        # From ``start`` to the shard's end: later batches of this worker take the rest of what is read now.
        return self.order.inside(visit)[max(start, int(self.order.starts[visit])) - int(self.order.starts[visit]) :]

    def _read(self, shard: int, needed: set[int]) -> dict[int, bytes]:
        url, first_key, size = self.shards.urls[shard], self.shards.keys[shard], self.shards.sizes[shard]
        found: dict[int, bytes] = {}
        try:
            with open_url(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    key, _, ext = member.name.rpartition("/")[2].partition(".")
                    if ext == "json" or not member.isfile() or not key.isdigit():
                        continue
                    position = int(key) - first_key
                    if position in needed:
                        found[position] = tar.extractfile(member).read()
                        if len(found) == len(needed):
                            break  # the rest of the shard is not this worker's: stop downloading it
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise DataError(f"{url}: cannot read the shard: {exc}") from None
        missing = needed - found.keys()
        if missing:
            key = first_key + min(missing)
            raise DataError(f"{url}: {len(missing)} of its {size} samples are missing (e.g. key {key:09d}); "
                            "was the shard rewritten after its index?")  # fmt: skip
        return found


class StreamLoader:
    """A DataLoader over a ``ShardStream``, whose iteration turns a worker's ``ReadFailure`` into a DataError."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.dataset = loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for item in self.loader:
            if isinstance(item, ReadFailure):
                raise DataError(item.message)
            yield item

"""Sharded data sets: a label file's images and labels as WebDataset-style tar shards, for streaming.

``mlic data shard DATA OUT/`` writes, in OUT/:

    shard-000000.tar, ...  each sample is two tar members with the same key, its position in the set (9 digits):
                           ``<key>.<ext>`` the image file's bytes as shipped (or a JPEG re-encoded with
                           ``--resize``) and ``<key>.json`` its labels as class names:
                           ``{"positives": [...], "negatives": [...] or null, "unknown": [...],
                           "path": ..., "source": ...}``
                           (``negatives`` null: fully labelled, every other class is a known negative)
    labels.parquet         every sample's labels as class ids, row = key: the table training reads for the
                           vocabulary, the label counts and the validation rows, without opening a shard
    index.json             format and version, class names, sample count of every shard, counts per class

Any WebDataset reader sees ordinary samples (``webdataset.WebDataset(urls)`` yields dicts with ``jpg`` and
``json``); mlic streams them with ``mlic.data.streaming``. Samples are shuffled once before writing (with
``--seed``) unless ``--no-shuffle``: a label file sorted by class would otherwise give shards, and so batches,
of one class. Each shard is written under a temporary name and renamed when complete, and the index comes
last, so an interrupted run never leaves a shard set that looks whole.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlic.config import at_least, between, setting
from mlic.data.images import DEFAULT_MAX_PIXELS, decode_image
from mlic.data.labels import LabelTable, Ragged
from mlic.data.records import DataError, Record
from mlic.data.table import RecordTable, StringColumn, as_table
from mlic.runtime.console import progress_bar

SHARD_FORMAT, SHARD_VERSION = "mlic-shards", 1
INDEX_FILE, LABELS_FILE = "index.json", "labels.parquet"
KEY_DIGITS = 9  # up to a billion samples
DEFAULT_SAMPLES_PER_SHARD = 1000  # about 100 MB of typical photos: the size WebDataset's authors suggest


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


def sample_key(i: int) -> str:
    return f"{i:0{KEY_DIGITS}d}"


@dataclass(frozen=True)
class ShardIndex:
    """What ``index.json`` says: the classes, the shards in order with their sample counts, counts per class."""

    classes: list[str]
    shards: list[str]
    sizes: list[int]
    positives: list[int] = field(default_factory=list)
    negatives: list[int] = field(default_factory=list)
    resized: int | None = None

    @property
    def samples(self) -> int:
        return int(sum(self.sizes))

    @property
    def pattern(self) -> str:
        """The brace pattern naming every shard, as ``mlic train`` takes it."""
        return f"shard-{{{0:06d}..{len(self.shards) - 1:06d}}}.tar" if len(self.shards) > 1 else self.shards[0]

    def to_json(self) -> dict:
        return {
            "format": SHARD_FORMAT,
            "version": SHARD_VERSION,
            "samples": self.samples,
            "pattern": self.pattern,
            "classes": self.classes,
            "shards": [{"name": n, "samples": s} for n, s in zip(self.shards, self.sizes, strict=True)],
            "counts": {"positives": self.positives, "negatives": self.negatives},
            "resized": self.resized,
            "labels": LABELS_FILE,
        }

    @classmethod
    def from_json(cls, data: object, where: str) -> ShardIndex:
        """The index in ``data``, checked; errors name ``where`` (the index file's location)."""
        if not isinstance(data, dict) or data.get("format") != SHARD_FORMAT:
            raise DataError(f'{where}: not an index written by mlic data shard (no "format": "{SHARD_FORMAT}")')
        if data.get("version") != SHARD_VERSION:
            raise DataError(f"{where}: shard format version {data.get('version')!r}; this mlic reads {SHARD_VERSION}")
        try:
            shards = [(str(s["name"]), int(s["samples"])) for s in data["shards"]]
            classes = [str(c) for c in data["classes"]]
            counts = data.get("counts") or {}
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: damaged shard index ({type(exc).__name__}: {exc})") from None
        if not shards or any(size < 0 for _, size in shards):
            raise DataError(f"{where}: the index lists no shards, or a negative sample count")
        return cls(classes, [n for n, _ in shards], [s for _, s in shards], list(counts.get("positives", [])),
                   list(counts.get("negatives", [])), data.get("resized"))  # fmt: skip


@dataclass(frozen=True)
class ShardOptions:
    """How ``mlic data shard`` writes; its flags are derived from these fields."""

    samples_per_shard: int = setting(DEFAULT_SAMPLES_PER_SHARD, "samples in each shard", rule=at_least(1))
    resize: int | None = setting(
        None, "re-encode each image as a JPEG whose shorter side is at most N (default: the bytes as shipped)",
        rule=at_least(16), metavar="N",
    )  # fmt: skip
    quality: int = setting(90, "JPEG quality of re-encoded images", rule=between(1, 100))
    shuffle: bool = setting(
        True, "shuffle samples once before writing (else a class-sorted file gives one-class shards)"
    )
    seed: int = setting(0, "seed of that shuffle")
    max_pixels: int = setting(
        DEFAULT_MAX_PIXELS, "largest image decoded when re-encoding, width x height", rule=at_least(1),
        flag="--max-image-pixels", metavar="N",
    )  # fmt: skip

    def __post_init__(self) -> None:
        from mlic.config import collect_settings

        for s in collect_settings(ShardOptions):
            s.check(getattr(self, s.key))


def write_shards(
    records: Sequence[Record],
    out: str | Path,
    options: ShardOptions | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> ShardIndex:
    """Write ``records`` (checked, readable images) as shards in ``out``; the index of what was written."""
    o = options or ShardOptions()
    folder = _prepare_folder(Path(out), overwrite)
    table = as_table(records)
    order = np.random.default_rng(o.seed).permutation(len(table)) if o.shuffle else np.arange(len(table))
    table = table.take(order)  # sample key i is row i of this table
    starts = range(0, len(table), o.samples_per_shard)
    sizes = []
    with progress_bar(total=len(table), progress=progress, desc="write shards", unit="img") as bar:
        for s, start in enumerate(starts):
            rows = range(start, min(start + o.samples_per_shard, len(table)))
            _write_shard(folder / shard_name(s), table, rows, o)
            sizes.append(len(rows))
            bar.update(len(rows))
    _write_label_table(folder / LABELS_FILE, table)
    labels = table.labels
    index = ShardIndex(table.class_names, [shard_name(s) for s in range(len(sizes))], sizes,
                       labels.positive_counts().tolist(), _negative_counts(labels).tolist(), o.resize)  # fmt: skip
    _write_atomically(folder / INDEX_FILE, json.dumps(index.to_json(), indent=1).encode())
    return index


def _prepare_folder(folder: Path, overwrite: bool) -> Path:
    """``folder``, created; a shard set already there is refused, or removed with ``overwrite``."""
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder}: exists and is not a folder")
    ours = [*folder.glob("shard-*.tar"), *folder.glob("shard-*.tar.partial"), folder / LABELS_FILE,
            folder / INDEX_FILE]  # fmt: skip
    ours = [p for p in ours if p.exists()]
    if ours and not overwrite:
        raise DataError(f"{folder}: already holds a shard set ({ours[0].name}); pass --overwrite to replace it")
    for path in ours:
        path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _write_shard(path: Path, table: RecordTable, rows: range, o: ShardOptions) -> None:
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in rows:
            record = table[i]
            data, ext = _image_bytes(record, o)
            _add(tar, f"{sample_key(i)}.{ext}", data)
            _add(tar, f"{sample_key(i)}.json", json.dumps(_label_json(record)).encode())
    partial.replace(path)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0  # fixed metadata: the same input gives the same bytes
    tar.addfile(info, io.BytesIO(data))


def _image_bytes(record: Record, o: ShardOptions) -> tuple[bytes, str]:
    """The file's bytes and extension as shipped; with ``resize``, a JPEG whose shorter side is at most that."""
    path = Path(record.path)
    try:
        if o.resize is None:
            return path.read_bytes(), (path.suffix.lower().lstrip(".") or "img")
        image = decode_image(path, max_pixels=o.max_pixels, draft_size=(o.resize, o.resize))
    except OSError as exc:
        raise DataError(f"{record.source or path}: {path}: cannot read: {exc.strerror or exc}") from None
    scale = o.resize / min(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), 1)  # LANCZOS
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=o.quality)
    return buffer.getvalue(), "jpg"


def _label_json(record: Record) -> dict:
    negatives = None if record.negatives is None else list(record.negatives)
    return {"positives": list(record.positives), "negatives": negatives, "unknown": list(record.unknown),
            "path": str(record.path), "source": record.source}  # fmt: skip


def _negative_counts(labels: LabelTable) -> np.ndarray:
    """(C,) images in which each class is a known negative."""
    return labels.known_counts() - labels.positive_counts()


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)


# ---- the label table ---------------------------------------------------------------------------------------


def _write_label_table(path: Path, table: RecordTable) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = table.labels

    def ids(ragged: Ragged) -> pa.Array:
        return pa.LargeListArray.from_arrays(pa.array(ragged.indptr, pa.int64()), pa.array(ragged.ids, pa.int32()))

    columns = {
        "path": pa.array(list(table.paths), pa.large_string()),
        "source": pa.array(list(table.sources), pa.large_string()),
        "positives": ids(labels.positives),
        "negatives": ids(labels.negatives),
        "unknown": ids(labels.unknown),
        "partial": pa.array(labels.partial, pa.bool_()),
    }
    partial = path.with_name(path.name + ".partial")
    pq.write_table(pa.table(columns), partial)
    partial.replace(path)


def read_label_table(source, classes: Sequence[str], where: str) -> RecordTable:
    """The ``labels.parquet`` of a shard set (a path or an open binary file) as a ``RecordTable`` over ``classes``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        data = pq.read_table(source)
        columns = {name: data.column(name).combine_chunks() for name in
                   ("path", "source", "positives", "negatives", "unknown", "partial")}  # fmt: skip
    except (pa.ArrowException, KeyError, OSError) as exc:
        raise DataError(f"{where}: cannot read the shard set's label table: {' '.join(str(exc).split())}") from None

    def ragged(column) -> Ragged:
        values = column.values.to_numpy(zero_copy_only=False).astype(np.int32)
        if len(values) and (values.min() < 0 or values.max() >= len(classes)):
            raise DataError(f"{where}: a class id outside the index's {len(classes)} classes")
        return Ragged(column.offsets.to_numpy().astype(np.int64) - int(column.offsets[0].as_py()), values)

    partial = columns["partial"].to_numpy(zero_copy_only=False).astype(bool)
    labels = LabelTable(tuple(classes), ragged(columns["positives"]), ragged(columns["negatives"]),
                        ragged(columns["unknown"]), partial)  # fmt: skip
    paths = StringColumn.from_strings(columns["path"].to_pylist())
    sources = StringColumn.from_strings(columns["source"].to_pylist())
    return RecordTable(paths, sources, labels)

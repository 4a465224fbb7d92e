"""A run's data: read the label files, split, scan images, cache decoded images, build datasets and loaders.

``mlic data cache`` runs the first part of this (``cache_run_data``: ``read_splits`` and ``build_caches``) with
the same data settings, so it builds exactly the caches a training run then reuses.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
from torch.utils.data import DistributedSampler

from mlic.config import DataConfig
from mlic.data.cache import CacheUnavailable, DecodedCache, ensure_cache
from mlic.data.dataset import MultiLabelDataset
from mlic.data.device_cache import DeviceCachedBatches, cache_fits
from mlic.data.device_decode import DeviceDecodedBatches, decodes_on_device
from mlic.data.labels import build_vocabulary
from mlic.data.loader import build_loader, build_stream_loader
from mlic.data.records import DataError, Record
from mlic.data.sampler import EpochSampler
from mlic.data.scan import drop_bad_images
from mlic.data.sources import load_records, unknown_labels
from mlic.data.splits import holdout_split
from mlic.data.streaming import ShardSet, ShardStream, is_stream_spec
from mlic.data.transforms import Pipeline, Preprocessing, build_eval_pipeline, build_train_pipeline
from mlic.models.hub import Normalization
from mlic.runtime.console import log
from mlic.runtime.distributed import DistInfo, barrier


@dataclass
class Splits:
    """The records of each split, checked, and the class names (from the training labels)."""

    train: list[Record]
    val: list[Record]
    test: list[Record]
    class_names: list[str]


@dataclass
class RunData:
    class_names: list[str]
    preprocessing: Preprocessing
    train_ds: MultiLabelDataset
    train_sampler: EpochSampler
    train_loader: object
    val_loader: object | None
    val_records: list[Record]
    test_records: list[Record]


def pipelines(d: DataConfig, norm: Normalization | None = None) -> tuple[Preprocessing, Pipeline, Pipeline]:
    """(the preprocessing a checkpoint stores, the training pipeline, the evaluation pipeline); ``norm``: the
    pretrained backbone's input statistics (default: ImageNet's)."""
    pre = Preprocessing(image_size=d.image_size)
    if norm is not None:
        pre = dataclasses.replace(pre, mean=norm.mean, std=norm.std)
    return pre, build_train_pipeline(pre, d.augment), build_eval_pipeline(pre)


def prepare_data(
    d: DataConfig, *, seed: int, batch_size: int, progress: bool, info: DistInfo, pin_memory: bool = False,
    norm: Normalization | None = None, device: torch.device | None = None,
) -> RunData:  # fmt: skip
    """Datasets and loaders of a run; ``pin_memory`` for non-blocking copies to CUDA; ``norm`` as ``pipelines``'s;
    ``device``: the training device, which holds the training cache itself where it fits (``data.device_cache``),
    or else, without a cache, decodes the training JPEGs (``data.device_decode``; CUDA only for both)."""
    if is_stream_spec(d.train):
        return prepare_stream_data(d, seed=seed, batch_size=batch_size, info=info, pin_memory=pin_memory, norm=norm)
    splits = read_splits(d, seed=seed, progress=progress)
    pre, train_pipeline, val_pipeline = pipelines(d, norm)
    train_cache, val_cache = build_caches(d, splits, progress=progress, info=info)
    limit = d.max_image_pixels
    train_ds = MultiLabelDataset(splits.train, splits.class_names, train_pipeline, cache=train_cache, seed=seed,
                                 max_pixels=limit)  # fmt: skip
    sampler = EpochSampler(train_ds, shuffle=True, seed=seed, rank=info.rank, world_size=info.world_size)
    if device is not None and cache_fits(train_ds, device):
        train_loader = DeviceCachedBatches(train_ds, sampler, batch_size, device)
        log(f"cache: training images held on {device} ({train_loader.images.nbytes / 2**30:.2f} GiB)")
    elif device is not None and decodes_on_device(train_ds, device):
        train_loader = DeviceDecodedBatches(train_ds, sampler, batch_size, device, num_workers=d.num_workers, seed=seed)
        log(f"decode: training JPEGs decoded on {device}; loader workers read the files")
    else:
        train_loader = build_loader(
            train_ds,
            batch_size=batch_size,
            shuffle=False,
            num_workers=d.num_workers,
            seed=seed,
            sampler=sampler,
            pin_memory=pin_memory,
            cached=train_cache is not None,
        )
    val_loader = None
    if splits.val:
        val_ds = MultiLabelDataset(splits.val, splits.class_names, val_pipeline, cache=val_cache, max_pixels=limit)
        val_loader = _val_loader(val_ds, d, batch_size, info, pin_memory, cached=val_cache is not None)
    log(
        f"data: {len(splits.train)} train, {len(splits.val)} val, {len(splits.test)} test images; "
        f"{len(splits.class_names)} classes"
    )
    return RunData(splits.class_names, pre, train_ds, sampler, train_loader, val_loader, splits.val, splits.test)


def _val_loader(val_ds: MultiLabelDataset, d: DataConfig, batch_size: int, info: DistInfo, pin_memory: bool,
                cached: bool):  # fmt: skip
    # Sharded without shuffling; the sampler's padding duplicates are dropped when predictions are gathered.
    val_sampler = DistributedSampler(val_ds, info.world_size, info.rank, shuffle=False) if info.enabled else None
    return build_loader(val_ds, batch_size=batch_size, shuffle=False, num_workers=d.num_workers, sampler=val_sampler,
                        pin_memory=pin_memory, cached=cached)  # fmt: skip


def prepare_stream_data(d: DataConfig, *, seed: int, batch_size: int, info: DistInfo, pin_memory: bool,
                        norm: Normalization | None = None) -> RunData:  # fmt: skip
    """A run whose training data is streamed from shards (``mlic.data.streaming``): no split, no scan, no cache;
    validation from shards too, or from a label file as usual."""
    if not d.val:
        raise DataError(
            f"{d.train}: training from shards needs --val (shards or a label file of their own): split before "
            "sharding (mlic data split, then mlic data shard each part)"
        )
    if d.test and is_stream_spec(d.test):
        raise DataError(f"--test {d.test}: the test set is read from a label file, not from shards")
    pre, train_pipeline, val_pipeline = pipelines(d, norm)
    shards = ShardSet.open(d.train, d.shard_index)
    class_names = build_vocabulary(shards.table)
    if not class_names:
        raise DataError(f"{d.train}: no labels found in the training data")
    if d.cache != "off":
        log("cache: none for streamed training data (a streamed set is one that does not fit the disk)")
    stream = ShardStream(shards, class_names, train_pipeline, batch_size=batch_size, seed=seed, shuffle=True,
                         info=info, max_pixels=d.max_image_pixels)  # fmt: skip
    train_loader = build_stream_loader(stream, num_workers=d.num_workers, seed=seed, pin_memory=pin_memory)
    val_records, val_loader = _streamed_run_val(d, class_names, val_pipeline, batch_size, info, pin_memory)
    if unknown := unknown_labels(val_records, class_names):
        log(f"warning: validation labels not in the training data (ignored): {', '.join(unknown)}")
    read = dict(fmt=d.format, image_root=d.image_root, label_delimiter=d.label_delimiter)
    test = load_records(d.test, **read) if d.test else []
    log(f"data: {shards.samples} train (streamed from {len(shards.urls)} shards), {len(val_records)} val, "
        f"{len(test)} test images; {len(class_names)} classes")  # fmt: skip
    return RunData(class_names, pre, stream, stream, train_loader, val_loader, val_records, test)


def _streamed_run_val(d: DataConfig, class_names: list[str], pipeline: Pipeline, batch_size: int, info: DistInfo,
                      pin_memory: bool):  # fmt: skip
    """(records, loader) of the validation data of a streamed run: shards, or a label file read as usual."""
    if is_stream_spec(d.val):
        stream = ShardStream(ShardSet.open(d.val), class_names, pipeline, batch_size=batch_size, shuffle=False,
                             info=info, max_pixels=d.max_image_pixels)  # fmt: skip
        return stream.records, build_stream_loader(stream, num_workers=d.num_workers, seed=0, pin_memory=pin_memory)
    read = dict(fmt=d.format, image_root=d.image_root, label_delimiter=d.label_delimiter, check_files=False)
    records = drop_bad_images(load_records(d.val, **read), skip=d.skip_bad_images, max_pixels=d.max_image_pixels)
    cache = _cache(d, info, records, pipeline, "validation", progress=False)
    dataset = MultiLabelDataset(records, class_names, pipeline, cache=cache, max_pixels=d.max_image_pixels)
    return records, _val_loader(dataset, d, batch_size, info, pin_memory, cached=cache is not None)


def build_caches(
    d: DataConfig, splits: Splits, *, progress: bool, info: DistInfo
) -> tuple[DecodedCache | None, DecodedCache | None]:
    """The decoded-image caches of the training and validation images (None where off or impossible)."""
    _, train_pipeline, val_pipeline = pipelines(d)
    train = _cache(d, info, splits.train, train_pipeline, "train", progress)
    val = _cache(d, info, splits.val, val_pipeline, "validation", progress)
    return train, val


def _cache(d: DataConfig, info: DistInfo, records: list[Record], pipeline: Pipeline, split: str, progress: bool):
    """The decoded-image cache of ``records`` (rank 0 builds it, the others wait and open it), or None: with
    ``--cache off``, or when it cannot be written (``auto`` then reads the image files every epoch)."""
    if d.cache == "off" or not records:
        return None
    cache: DecodedCache | None = None
    for building_rank in (True, False):  # rank 0 first, then everyone else
        if building_rank == info.is_main:
            start = time.perf_counter()
            try:
                cache, built = ensure_cache(records, pipeline, root=d.cache_dir, progress=progress,
                                            desc=f"caching {split} images", max_pixels=d.max_image_pixels,
                                            max_bytes=int(d.cache_max_gb * 1e9))  # fmt: skip
            except CacheUnavailable as exc:
                log(f"warning: no decoded-image cache for the {split} images: {exc}")
                cache, built = None, False
            if cache is not None and info.is_main:
                n, _, size, _ = cache.shape
                how = f"built in {time.perf_counter() - start:.0f}s" if built else "reused"
                log(f"cache: {split} {n} images at {size}px, {how} ({cache.folder})")
        barrier(info)
    return cache


def read_splits(d: DataConfig, *, seed: int, progress: bool) -> Splits:
    """Read train/val/test labels (holding out ``val_fraction`` of train when there is no val file), name the
    classes from the training labels, and scan the images (bad ones stop the run, or are left out)."""
    # Missing files are not an error yet: the image scan below reports them with every other bad file, so that
    # --skip-bad-images can leave them all out.
    read = dict(fmt=d.format, image_root=d.image_root, label_delimiter=d.label_delimiter, check_files=False)
    train = load_records(d.train, **read)
    if d.val:
        val = load_records(d.val, **read)
    elif d.val_fraction > 0:
        train, val = holdout_split(train, d.val_fraction, seed=seed)
        log(f"no validation file: holding out {len(val)} of {len(train) + len(val)} images")
    else:
        val = []
    test = load_records(d.test, **read) if d.test else []
    class_names = build_vocabulary(train)
    if not class_names:
        raise DataError(f"{d.train}: no labels found in the training data")
    for split, records in (("validation", val), ("test", test)):
        if unknown := unknown_labels(records, class_names):
            log(f"warning: {split} labels not in the training data (ignored): {', '.join(unknown)}")
    train, val, test = (
        drop_bad_images(r, skip=d.skip_bad_images, max_pixels=d.max_image_pixels, progress=progress)
        for r in (train, val, test)
    )
    return Splits(train, val, test, class_names)


def cache_run_data(d: DataConfig, *, seed: int, progress: bool) -> None:
    """Build the decoded-image caches a run with these data settings and ``seed`` would read (``mlic data cache``)."""
    if is_stream_spec(d.train):
        raise DataError(f"{d.train}: shards are streamed, never cached (the cache is for image files on disk)")
    splits = read_splits(d, seed=seed, progress=progress)
    build_caches(dataclasses.replace(d, cache="auto"), splits, progress=progress, info=DistInfo())

"""A run's data: read the label files, split, scan images, cache decoded images, build datasets and loaders."""

from __future__ import annotations

import time
from dataclasses import dataclass

from torch.utils.data import DistributedSampler

from mlic.config import TrainConfig
from mlic.data.cache import CacheUnavailable, DecodedCache, ensure_cache
from mlic.data.dataset import MultiLabelDataset
from mlic.data.labels import build_vocabulary
from mlic.data.loader import build_loader, load_records, unknown_labels
from mlic.data.records import DataError, Record
from mlic.data.sampler import EpochSampler
from mlic.data.scan import format_bad_images, scan_images
from mlic.data.splits import holdout_split
from mlic.data.transforms import Pipeline, Preprocessing, build_eval_pipeline, build_train_pipeline
from mlic.engine.console import log
from mlic.engine.distributed import DistInfo, barrier


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


def prepare_data(cfg: TrainConfig, info: DistInfo, *, pin_memory: bool = False) -> RunData:
    train_records, val_records, test_records, class_names = _load_data(cfg)
    pre = Preprocessing(image_size=cfg.data.image_size)
    bs, workers = cfg.optim.batch_size, cfg.data.num_workers
    train_pipeline, val_pipeline = build_train_pipeline(pre, cfg.data.augment), build_eval_pipeline(pre)
    train_cache = _cache(cfg, info, train_records, train_pipeline, "train")
    train_ds = MultiLabelDataset(train_records, class_names, train_pipeline, cache=train_cache, seed=cfg.seed)
    sampler = EpochSampler(train_ds, shuffle=True, seed=cfg.seed, rank=info.rank, world_size=info.world_size)
    train_loader = build_loader(
        train_ds,
        batch_size=bs,
        shuffle=False,
        num_workers=workers,
        seed=cfg.seed,
        sampler=sampler,
        pin_memory=pin_memory,
        cached=train_cache is not None,
    )
    val_loader = None
    if val_records:
        val_cache = _cache(cfg, info, val_records, val_pipeline, "validation")
        val_ds = MultiLabelDataset(val_records, class_names, val_pipeline, cache=val_cache)
        # Sharded without shuffling; the sampler's padding duplicates are dropped when predictions are gathered.
        val_sampler = (
            DistributedSampler(val_ds, num_replicas=info.world_size, rank=info.rank, shuffle=False)
            if info.enabled
            else None
        )
        val_loader = build_loader(val_ds, batch_size=bs, shuffle=False, num_workers=workers, sampler=val_sampler,
                                  pin_memory=pin_memory, cached=val_cache is not None)  # fmt: skip
    log(
        f"data: {len(train_records)} train, {len(val_records)} val, {len(test_records)} test images; "
        f"{len(class_names)} classes"
    )
    return RunData(class_names, pre, train_ds, sampler, train_loader, val_loader, val_records, test_records)


def _cache(cfg: TrainConfig, info: DistInfo, records: list[Record], pipeline: Pipeline, split: str):
    """The decoded-image cache of ``records`` (rank 0 builds it, the others wait and open it), or None: with
    ``--cache off``, or when it cannot be written (``auto`` then reads the image files every epoch)."""
    if cfg.data.cache == "off" or not records:
        return None
    cache: DecodedCache | None = None
    for building_rank in (True, False):  # rank 0 first, then everyone else
        if building_rank == info.is_main:
            start = time.perf_counter()
            try:
                cache, built = ensure_cache(records, pipeline, root=cfg.data.cache_dir, progress=cfg.progress,
                                            desc=f"caching {split} images")  # fmt: skip
            except CacheUnavailable as exc:
                log(f"warning: no decoded-image cache for the {split} images: {exc}")
                cache, built = None, False
            if cache is not None and info.is_main:
                n, _, size, _ = cache.shape
                how = f"built in {time.perf_counter() - start:.0f}s" if built else "reused"
                log(f"cache: {split} {n} images at {size}px, {how} ({cache.folder})")
        barrier(info)
    return cache


def _load_data(cfg: TrainConfig):
    d = cfg.data
    read = dict(fmt=d.format, image_root=d.image_root, label_delimiter=d.label_delimiter)
    train_records = load_records(d.train, **read)
    if d.val:
        val_records = load_records(d.val, **read)
    elif d.val_fraction > 0:
        train_records, val_records = holdout_split(train_records, d.val_fraction, seed=cfg.seed)
        log(f"no validation file: holding out {len(val_records)} of {len(train_records) + len(val_records)} images")
    else:
        val_records = []
    test_records = load_records(d.test, **read) if d.test else []
    class_names = build_vocabulary(train_records)
    if not class_names:
        raise DataError(f"{d.train}: no labels found in the training data")
    for split, records in (("validation", val_records), ("test", test_records)):
        if unknown := unknown_labels(records, class_names):
            log(f"warning: {split} labels not in the training data (ignored): {', '.join(unknown)}")
    train_records, val_records, test_records = (
        _drop_bad_images(r, d.skip_bad_images, cfg.progress) for r in (train_records, val_records, test_records)
    )
    return train_records, val_records, test_records, class_names


def _drop_bad_images(records: list, skip: bool, progress: bool) -> list:
    """Fast header scan before training: a bad file stops the run (naming it) unless the user chose to skip."""
    bad = scan_images(records, progress=progress)
    if not bad:
        return records
    if not skip:
        raise DataError(format_bad_images(bad) + "\nfix or remove them, or pass --skip-bad-images to leave them out")
    log(format_bad_images(bad) + "\nleaving them out (--skip-bad-images)")
    bad_paths = {b.path for b in bad}
    return [r for r in records if str(r.path) not in bad_paths]

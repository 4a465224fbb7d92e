"""A run's data: read the label files, split, scan images, build datasets and loaders."""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import DistributedSampler

from mlic.config import TrainConfig
from mlic.data.dataset import MultiLabelDataset
from mlic.data.labels import build_vocabulary
from mlic.data.loader import build_loader, load_records, unknown_labels
from mlic.data.records import DataError, Record
from mlic.data.sampler import EpochSampler
from mlic.data.scan import format_bad_images, scan_images
from mlic.data.splits import holdout_split
from mlic.data.transforms import Preprocessing, build_eval_transform, build_train_transform
from mlic.engine.console import log
from mlic.engine.distributed import DistInfo


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


def prepare_data(cfg: TrainConfig, info: DistInfo) -> RunData:
    train_records, val_records, test_records, class_names = _load_data(cfg)
    pre = Preprocessing(image_size=cfg.data.image_size)
    bs, workers = cfg.optim.batch_size, cfg.data.num_workers
    train_ds = MultiLabelDataset(
        train_records, class_names, build_train_transform(pre, cfg.data.augment), seed=cfg.seed
    )
    sampler = EpochSampler(train_ds, shuffle=True, seed=cfg.seed, rank=info.rank, world_size=info.world_size)
    train_loader = build_loader(
        train_ds, batch_size=bs, shuffle=False, num_workers=workers, seed=cfg.seed, sampler=sampler
    )
    val_loader = None
    if val_records:
        val_ds = MultiLabelDataset(val_records, class_names, build_eval_transform(pre))
        # Sharded without shuffling; the sampler's padding duplicates are dropped when predictions are gathered.
        val_sampler = (
            DistributedSampler(val_ds, num_replicas=info.world_size, rank=info.rank, shuffle=False)
            if info.enabled
            else None
        )
        val_loader = build_loader(val_ds, batch_size=bs, shuffle=False, num_workers=workers, sampler=val_sampler)
    log(
        f"data: {len(train_records)} train, {len(val_records)} val, {len(test_records)} test images; "
        f"{len(class_names)} classes"
    )
    return RunData(class_names, pre, train_ds, sampler, train_loader, val_loader, val_records, test_records)


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

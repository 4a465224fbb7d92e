"""Records + one decoder + one pipeline -> (uint8 image, flip) samples, batched with their targets and masks.

Labels stay class ids (``LabelTable``) until a batch is collated, when the (B, C) targets and known-masks of
its images are built: nothing (N, C) is ever held for the whole set. The float work (normalisation, and the
flip that the sample only decides) is left to ``batch_inputs``, per batch on the training device; with a
decoded-image cache a sample is a row copy, not a decode.

An unreadable image never stops a run: the sample comes back marked bad with its path and
reason, ``collate`` drops it from the batch, and the loop reports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from mlic.data.cache import DecodedCache
from mlic.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError
from mlic.data.labels import LabelTable
from mlic.data.pixels import PixelLoader
from mlic.data.records import Record
from mlic.data.table import as_table
from mlic.data.transforms import Pipeline


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, S, S) uint8 as staged and augmented; ``batch_inputs`` makes model input of it
    targets: torch.Tensor  # (B, C) float32 multi-hot
    masks: torch.Tensor  # (B, C) float32: 1 = label known, 0 = unknown (ignored by loss and metrics)
    indices: torch.Tensor  # (B,) positions in the dataset, to line predictions up with records
    errors: list[tuple[str, str]]  # (path, reason) of samples dropped from this batch
    flips: torch.Tensor | None = None  # (B,) bool: flip horizontally (decided per sample, done per batch)

    def __len__(self) -> int:
        return self.images.shape[0]


class MultiLabelDataset(Dataset):
    def __init__(
        self,
        records: Sequence[Record],
        class_names: Sequence[str],
        pipeline: Pipeline,
        *,
        cache: DecodedCache | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        seed: int = 0,
    ) -> None:
        self.seed = seed
        # paths and labels as flat arrays over this dataset's classes; targets are built per batch (collate)
        self.records = as_table(records, class_names)
        self.labels = self.records.labels
        self.class_names = list(class_names)
        self.pipeline = pipeline
        self.cache = cache
        # the cache may hold more images than this dataset (a held-out split shares its file's cache)
        self.cache_rows = None if cache is None else np.array([cache.row(p) for p in self.records.paths], np.int64)
        self.loader = PixelLoader(pipeline.pre, pipeline.stage, max_pixels)

    def __len__(self) -> int:
        return len(self.records)

    def collate(self, samples: list[dict]) -> Batch:
        """The batch of ``samples``, with its (B, C) targets and masks built now from the label table."""
        return collate(samples, self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        # The training sampler passes (epoch, index): the sample's augmentation is then seeded from
        # (seed, epoch, index) alone, identical whatever the workers, ranks or interruptions.
        epoch, i = key if isinstance(key, tuple) else (None, key)
        image, reason = self._staged(i)
        if image is None:
            return {"index": i, "error": (self.records.paths[i], reason)}
        image, flip = augment_sample(self.pipeline, self.seed, epoch, i, image)
        return {"index": i, "image": image, "flip": flip}

    def _staged(self, i: int) -> tuple[torch.Tensor | None, str | None]:
        """(uint8 (3, stage, stage), None): a cache row, or decoded and resized now; (None, why) if unreadable."""
        if self.cache_rows is None:
            return self.loader.load_or_reason(self.records.paths[i])
        try:
            return self.cache.image(int(self.cache_rows[i])), None
        except ImageDecodeError as exc:  # the file was unreadable when the cache was built
            return None, exc.reason


def augment_sample(
    pipeline: Pipeline, seed: int, epoch: int | None, index: int, image: torch.Tensor
) -> tuple[torch.Tensor, bool]:
    """(augmented image, flip it?) of sample ``index`` in ``epoch``, seeded from (seed, epoch, index) alone;
    ``epoch`` None: evaluation, unchanged. Streamed shards and label files share it, so they augment alike."""
    if epoch is None or (pipeline.augment is None and not pipeline.flip):
        return image, False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sample_seed(seed, epoch, index))
        if pipeline.augment is not None:
            image = pipeline.augment(image)
        return image, pipeline.flip and bool(torch.rand(()) < 0.5)


def sample_flip(pipeline: Pipeline, seed: int, epoch: int | None, index: int) -> bool:
    """The flip ``augment_sample`` decides for sample ``index`` of a pipeline without per-sample augmentation,
    without an image (``data.device_cache`` gathers the pixels on the device)."""
    if epoch is None or not pipeline.flip:
        return False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sample_seed(seed, epoch, index))
        return bool(torch.rand(()) < 0.5)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample's augmentation in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def collate(samples: list[dict], labels: LabelTable) -> Batch:
    """Readable samples stacked, unreadable ones listed in ``errors``; targets and masks from ``labels``."""
    good = [s for s in samples if "error" not in s]
    errors = [s["error"] for s in samples if "error" in s]
    if not good:
        empty = torch.empty(0)
        return Batch(empty.to(torch.uint8), empty, empty, empty.to(torch.long), errors)
    indices = [s["index"] for s in good]
    targets, masks = labels.dense(indices)
    return Batch(
        images=torch.stack([s["image"] for s in good]),
        targets=torch.from_numpy(targets),
        masks=torch.from_numpy(masks),
        indices=torch.tensor(indices, dtype=torch.long),
        errors=errors,
        flips=torch.tensor([s["flip"] for s in good], dtype=torch.bool),
    )

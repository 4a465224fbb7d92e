"""The decoded-image cache held on the training device: batches gathered there, no loader, no host copy.

On a GPU, an epoch from the decoded uint8 cache is bound by getting pixels to the device: a DataLoader
copies every (B, 3, S, S) batch from memory-mapped files through pinned memory each step. When the whole
cache of the training set fits in a share of the device's free memory, it is copied there once, and each
step's batch is a gather by index on the device (``images[idx]``). Flips are decided per sample from
(seed, epoch, index) exactly as ``MultiLabelDataset`` decides them, and targets come from the same label
table, so the batches equal the DataLoader's batch for batch (tested on CPU, where the same code runs with
``device=cpu``). Only for the presets without per-sample uint8 augmentation (``none``, ``light``): crops and
colour jitter run per sample in the loader's workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from mlic.data.dataset import Batch, MultiLabelDataset, sample_flip
from mlic.data.images import ImageDecodeError
from mlic.data.sampler import EpochSampler

# Share of the device's free memory the cache may take: the model, its activations and the optimizer need the rest.
DEVICE_SHARE = 0.4


def cache_fits(dataset: MultiLabelDataset, device: torch.device, share: float = DEVICE_SHARE) -> bool:
    """Whether ``dataset``'s cached training images can live on ``device`` (CUDA only; never on CPU, where the
    memory-mapped cache already is the fastest place)."""
    if device.type != "cuda" or dataset.cache is None or dataset.pipeline.augment is not None:
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return _nbytes(dataset) <= share * free


def _nbytes(dataset: MultiLabelDataset) -> int:
    _, c, h, w = dataset.cache.shape
    return len(dataset) * c * h * w


class DeviceCachedBatches:
    """Training batches of ``dataset`` in ``sampler``'s order, from its cache copied once onto ``device``."""

    def __init__(self, dataset: MultiLabelDataset, sampler: EpochSampler, batch_size: int, device: torch.device):
        if dataset.cache is None or dataset.pipeline.augment is not None:
            raise ValueError("a device-held cache needs a cached dataset without per-sample augmentation")
        self.dataset, self.sampler, self.batch_size, self.device = dataset, sampler, batch_size, device
        self.images, self.readable, self.errors = self._upload()

    def _upload(self) -> tuple[torch.Tensor, np.ndarray, dict[int, str]]:
        """(N, 3, S, S) uint8 on the device, in dataset order; unreadable rows stay zero and are left out later."""
        ds = self.dataset
        images = torch.zeros((len(ds), *ds.cache.shape[1:]), dtype=torch.uint8, device=self.device)
        readable, errors = np.ones(len(ds), bool), {}
        chunk = 1024  # a bounded host buffer: the cache is copied over in pieces, never whole in host memory
        for first in range(0, len(ds), chunk):
            part = []
            for i in range(first, min(first + chunk, len(ds))):
                try:
                    part.append(ds.cache.image(int(ds.cache_rows[i])))
                except ImageDecodeError as exc:
                    readable[i], errors[i] = False, exc.reason
                    part.append(torch.zeros(ds.cache.shape[1:], dtype=torch.uint8))
            images[first : first + len(part)] = torch.stack(part).to(self.device)
        return images, readable, errors

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        keys = list(self.sampler)
        for first in range(0, len(keys), self.batch_size):
            yield self._batch(keys[first : first + self.batch_size])

    def _batch(self, keys: list[tuple[int, int]]) -> Batch:
        ds = self.dataset
        good = [(epoch, i) for epoch, i in keys if self.readable[i]]
        errors = [(ds.records.paths[i], self.errors[i]) for _, i in keys if not self.readable[i]]
        indices = [i for _, i in good]
        flips = [sample_flip(ds.pipeline, ds.seed, epoch, i) for epoch, i in good]
        targets, masks = ds.labels.dense(indices)
        idx = torch.tensor(indices, dtype=torch.long)
        return Batch(
            images=self.images[idx.to(self.device)],  # the gather runs on the device
            targets=torch.from_numpy(targets),
            masks=torch.from_numpy(masks),
            indices=idx,
            errors=errors,
            flips=torch.tensor(flips, dtype=torch.bool),
        )

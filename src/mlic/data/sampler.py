"""The training sampler: shuffled per epoch, sharded across ranks, resumable mid-epoch.

It is torch's ``DistributedSampler`` (same shuffling, padding and sharding, so a single process
is simply ``num_replicas=1``) with two additions:

* ``start``: skip the first ``start`` samples of this rank's shard, so a run resumed at step k of
  an epoch sees exactly the batches it had not seen yet;
* it yields ``(epoch, index)`` pairs, so the dataset can seed each sample's augmentation from
  (run seed, epoch, index). Augmentation then does not depend on worker count, worker
  scheduling, rank layout or interruptions: the property exact resume rests on.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    def __init__(
        self,
        dataset: Dataset,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Epoch to draw the order from, and how many of this rank's samples to skip."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.start :]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start

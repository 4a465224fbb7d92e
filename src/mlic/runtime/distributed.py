"""DistributedDataParallel under torchrun: process group, rank-aware logging, gathering predictions.

``torchrun --nproc-per-node N -m mlic train ...`` sets RANK / LOCAL_RANK / WORLD_SIZE; without them
everything here is a no-op and mlic runs as a single process, unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes: NCCL on CUDA (one GPU per local rank), gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if it is true on any: all ranks then stop on the same step."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_all(info: DistInfo, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every rank's ``arrays`` concatenated, rank 0's first (no reordering, no deduplication)."""
    if not info.enabled:
        return arrays
    gathered: list = [None] * info.world_size
    dist.all_gather_object(gathered, arrays)
    return tuple(np.concatenate([g[k] for g in gathered]) for k in range(len(arrays)))


def gather_rows(info: DistInfo, indices: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """All ranks' rows, ordered by dataset index, each index once.

    The sampler pads the last shard by repeating samples so every rank has the same count; those
    duplicates are dropped here, so distributed metrics equal single-process metrics.
    """
    if info.enabled:
        gathered: list = [None] * info.world_size
        dist.all_gather_object(gathered, (indices, *arrays))
        indices = np.concatenate([g[0] for g in gathered])
        arrays = tuple(np.concatenate([g[k + 1] for g in gathered]) for k in range(len(arrays)))
    order = np.argsort(indices, kind="stable")
    _, first = np.unique(indices[order], return_index=True)
    keep = order[first]
    return (indices[keep], *(a[keep] for a in arrays))


def sync_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    Without SyncBatchNorm each rank's last forward updates its own running stats; before evaluating
    and saving, all ranks must hold the statistics that rank 0 saves, or distributed validation would
    not equal evaluating the saved checkpoint.
    """
    if not info.enabled:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)

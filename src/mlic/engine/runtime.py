"""Device choice and seeding."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; anything else is passed to torch as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a run is reproducible."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: derive NumPy/Python seeds from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def default_num_workers(cached: bool = False) -> int:
    """Loader processes, from the core count and whether samples come from the decoded-image cache.

    Measured on 2 cores (epoch 2 img/s, seed_cnn, workers 0/1/2): from the cache 17.4/17.4/16.4 at 224 px and
    95/97/89 at 96 px, since a row copy costs nothing and a worker only competes with the two compute threads;
    decoding files 12.7/13.5/13.8 and 31.5/35.4/40.3, since decoding then overlaps the model step. So on
    2 cores or fewer: none from the cache, one per core from files; above that half the cores, up to 8.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cpus <= 2:
        return 0 if cached else cpus
    return min(8, cpus // 2)


def configure_allocator() -> bool:
    """Stop glibc malloc from returning big activation buffers to the kernel after every step.

    With the defaults, each training step unmaps and re-faults about 1 GB of activations (the
    issue's measurement: ~260,000 page faults per step, ~30% of CPU time in the kernel); keeping
    them mapped gave 1.5-1.9x. Opt out with MLIC_NO_MALLOPT=1. Returns whether it was applied.
    """
    import ctypes
    import sys

    if os.environ.get("MLIC_NO_MALLOPT") == "1" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl or another libc: nothing to tune this way
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    ok = libc.mallopt(m_mmap_max, 0) == 1
    ok &= libc.mallopt(m_trim_threshold, 2**30) == 1
    return bool(ok)

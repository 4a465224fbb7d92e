"""The CPUs this process may use, loader workers chosen from them, and the allocator setting for training."""

from __future__ import annotations

import ctypes
import functools
import os
import sys


@functools.cache
def cpu_count() -> int:
    """Cores this process may run on (its affinity mask, which containers and ``taskset`` narrow), read once."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_num_workers(cached: bool = False) -> int:
    """Loader processes, from the core count and whether samples come from the decoded-image cache.

    Measured on 2 cores (epoch 2 img/s, seed_cnn, workers 0/1/2): from the cache 17.4/17.4/16.4 at 224 px and
    95/97/89 at 96 px, since a row copy costs nothing and a worker only competes with the two compute threads;
    decoding files 12.7/13.5/13.8 and 31.5/35.4/40.3, since decoding then overlaps the model step. So on
    2 cores or fewer: none from the cache, one per core from files; above that half the cores, up to 8.
    """
    cpus = cpu_count()
    if cpus <= 2:
        return 0 if cached else cpus
    return min(8, cpus // 2)


def configure_serving_allocator(threshold: int = 1 << 20) -> bool:
    """A server's setting, the opposite of training's: every allocation above ``threshold`` bytes is its own
    mapping, returned to the kernel when freed.

    glibc otherwise raises that threshold after each large free, so the next images' buffers come from the heap,
    where freed memory is kept (and a zeroed allocation must be written over, so it counts as resident): a burst
    of large uploads left a server gigabytes above its idle size. Returns whether it was applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_mmap_threshold = -3  # from glibc's malloc.h; setting it also turns the dynamic threshold off
    return libc.mallopt(m_mmap_threshold, threshold) == 1


def configure_allocator() -> bool:
    """Stop glibc malloc from returning big activation buffers to the kernel after every step.

    With the defaults, each training step unmaps and re-faults about 1 GB of activations (measured: about
    260,000 page faults per step, 30% of CPU time in the kernel); keeping them mapped gave 1.5-1.9x.
    Opt out with MLIC_NO_MALLOPT=1. Returns whether it was applied.
    """
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

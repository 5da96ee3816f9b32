"""What the node may use of its machine: cores and memory, as its cgroup limits them.

A container's limits are its cgroup's, not the machine's: the memory limit is read from
``/sys/fs/cgroup/memory.max`` (cgroup v2) or ``/sys/fs/cgroup/memory/memory.limit_in_bytes``
(v1), the CPU quota from ``/sys/fs/cgroup/cpu.max`` (v2) or ``cpu.cfs_quota_us`` over
``cpu.cfs_period_us`` (v1); without a limit, ``MemAvailable`` (else ``MemTotal``) of
``/proc/meminfo`` and the CPUs the process may run on. Every path is read under ``root``
(default ``/``), so tests can hand a fake one.

Memory the node frees goes back to the system: :func:`return_large_frees` pins glibc's
threshold for mapping an allocation apart, so a freed batch is unmapped at once rather than
kept in its thread's arena for reuse.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "CACHE_MEMORY_FRACTION",
    "LARGE_ALLOCATION_BYTES",
    "NodeMemory",
    "auto_cache_bytes",
    "default_io_workers",
    "node_memory",
    "return_large_frees",
    "usable_cores",
]

CACHE_MEMORY_FRACTION = 0.25
"""Share of the memory the node may use that the chunk cache gets by default."""

LARGE_ALLOCATION_BYTES = 1 << 20
"""Allocations of at least this many bytes (batches, chunks) are mapped apart and unmapped
as soon as they are freed (see :func:`return_large_frees`)."""

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)

# cgroup v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages, about 2**63).
_V1_UNLIMITED = 1 << 60


class NodeMemory(NamedTuple):
    """Bytes of memory the node may use, and where that figure comes from."""

    nbytes: int
    source: str


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None


def _cgroup_memory(root: Path) -> NodeMemory | None:
    v2 = root / "sys/fs/cgroup/memory.max"
    text = _read(v2)
    if text is not None and text.isdigit():
        return NodeMemory(int(text), f"cgroup v2 {v2}")
    v1 = root / "sys/fs/cgroup/memory/memory.limit_in_bytes"
    text = _read(v1)
    if text is not None and text.isdigit() and int(text) < _V1_UNLIMITED:
        return NodeMemory(int(text), f"cgroup v1 {v1}")
    return None


def _meminfo(root: Path) -> NodeMemory | None:
    path = root / "proc/meminfo"
    fields = {}
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0]) * 1024  # kB
    for name in ("MemAvailable", "MemTotal"):
        if name in fields:
            return NodeMemory(fields[name], f"{name} of {path}")
    return None


def node_memory(root: Path = Path("/")) -> NodeMemory | None:
    """The memory the node may use: its cgroup's limit, else what ``/proc/meminfo`` offers.

    The smaller of the two when both are known (a cgroup limit above the machine's memory
    limits nothing). None when neither can be read.
    """
    known = [m for m in (_cgroup_memory(root), _meminfo(root)) if m is not None]
    return min(known, default=None)


def auto_cache_bytes(max_memory_bytes: int, root: Path = Path("/")) -> tuple[int, str]:
    """The chunk cache's automatic ``max_bytes``, and a sentence saying how it was sized.

    ``CACHE_MEMORY_FRACTION`` of :func:`node_memory`, at most half the node's memory budget
    (``limits.max_memory_bytes``, which holds the cache and the streams); half the budget
    when the memory cannot be read.
    """
    cap = max_memory_bytes // 2
    memory = node_memory(root)
    if memory is None:
        return cap, "half of limits.max_memory_bytes (the node's memory could not be read)"
    share = int(memory.nbytes * CACHE_MEMORY_FRACTION)
    if share >= cap:
        return cap, (
            f"half of limits.max_memory_bytes, below {CACHE_MEMORY_FRACTION:.0%} of the "
            f"{memory.nbytes} bytes the node may use ({memory.source})"
        )
    return share, (
        f"{CACHE_MEMORY_FRACTION:.0%} of the {memory.nbytes} bytes the node may use "
        f"({memory.source})"
    )


def _cpu_quota(root: Path) -> float | None:
    """Cores' worth of CPU time the cgroup grants, or None: no quota."""
    text = _read(root / "sys/fs/cgroup/cpu.max")
    if text is not None:
        quota, _, period = text.partition(" ")
        if quota.isdigit() and period.isdigit() and int(period):
            return int(quota) / int(period)
        return None
    quota_text = _read(root / "sys/fs/cgroup/cpu/cpu.cfs_quota_us")
    period_text = _read(root / "sys/fs/cgroup/cpu/cpu.cfs_period_us")
    if quota_text and period_text and quota_text.isdigit() and period_text.isdigit():
        return int(quota_text) / int(period_text) if int(period_text) else None
    return None  # v1 writes "-1" for no quota


def usable_cores(root: Path = Path("/")) -> int:
    """The cores the node may use: the CPUs it may run on, capped by its cgroup's quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cpu_quota(root)
    return max(1, min(cores, math.ceil(quota))) if quota else max(1, cores)


@functools.cache
def default_io_workers() -> int:
    """A stream's read threads when its request leaves ``nb_io_workers`` 0: the usable
    cores (found once per process)."""
    return usable_cores()


def return_large_frees() -> bool:
    """Make this process's allocations of ``LARGE_ALLOCATION_BYTES`` or more go back to the
    system as soon as they are freed; True if the C library took it (glibc).

    By default glibc raises its threshold for mapping an allocation apart up to the largest
    block freed (at most 32 MiB), so freed batches then stay in the arena of the thread that
    allocated them, one arena per thread: a node with a reader thread per core would hold
    batches beyond what its streams reserve (``StreamPlan.memory_bytes``). Pinning the
    threshold also stops it from moving.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (or no C library to ask)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, LARGE_ALLOCATION_BYTES))

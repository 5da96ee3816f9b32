"""Tests for data_node.resources: memory and cores the node may use, over a fake root.

Matrix: memory from cgroup v2 memory.max (a number; "max" falls through), cgroup v1
memory.limit_in_bytes (a limit; the "unlimited" huge number falls through), /proc/meminfo
(MemAvailable, else MemTotal), the smaller of cgroup and meminfo, nothing readable; the
automatic cache size (a quarter, capped at half the memory budget, half the budget when
nothing is readable); cores capped by cgroup v2 cpu.max and v1 cfs quota ("max" and -1:
no quota); a node built without [cache] max_bytes sizes its cache so and logs it; an
explicit max_bytes wins and is logged as such; with large frees returned, batches freed by
several threads leave no memory behind (by default glibc keeps one per thread's arena).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from data_node.config import CacheConfig, NodeConfig
from data_node.resources import auto_cache_bytes, node_memory, usable_cores
from data_node.server import build_server

GiB = 1 << 30


def write(root, path, text):
    file = root / path
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)


def meminfo(root, available_kb=None, total_kb=16 * 1024 * 1024):
    lines = [f"MemTotal:       {total_kb} kB"]
    if available_kb is not None:
        lines.append(f"MemAvailable:   {available_kb} kB")
    write(root, "proc/meminfo", "\n".join(lines) + "\n")


def test_cgroup_v2_limit(tmp_path):
    write(tmp_path, "sys/fs/cgroup/memory.max", "2147483648\n")
    meminfo(tmp_path, available_kb=8 * 1024 * 1024)
    memory = node_memory(tmp_path)
    assert memory.nbytes == 2 * GiB
    assert "cgroup v2" in memory.source
    assert auto_cache_bytes(8 * GiB, tmp_path)[0] == GiB // 2


def test_cgroup_v2_without_limit_falls_to_meminfo(tmp_path):
    write(tmp_path, "sys/fs/cgroup/memory.max", "max\n")
    meminfo(tmp_path, available_kb=4 * 1024 * 1024)
    memory = node_memory(tmp_path)
    assert memory.nbytes == 4 * GiB
    assert "MemAvailable" in memory.source


@pytest.mark.parametrize(("limit", "expected"), [(str(GiB), GiB), ("9223372036854771712", 4 * GiB)])
def test_cgroup_v1(tmp_path, limit, expected):
    write(tmp_path, "sys/fs/cgroup/memory/memory.limit_in_bytes", limit + "\n")
    meminfo(tmp_path, available_kb=4 * 1024 * 1024)
    assert node_memory(tmp_path).nbytes == expected


def test_meminfo_total_without_available(tmp_path):
    meminfo(tmp_path, total_kb=1024 * 1024)
    memory = node_memory(tmp_path)
    assert memory.nbytes == GiB
    assert "MemTotal" in memory.source


def test_a_cgroup_limit_above_the_machine_is_the_machine(tmp_path):
    write(tmp_path, "sys/fs/cgroup/memory.max", str(64 * GiB))
    meminfo(tmp_path, available_kb=2 * 1024 * 1024)
    assert node_memory(tmp_path).nbytes == 2 * GiB


def test_nothing_readable(tmp_path):
    assert node_memory(tmp_path) is None
    nbytes, how = auto_cache_bytes(8 * GiB, tmp_path)
    assert nbytes == 4 * GiB
    assert "could not be read" in how


def test_the_cache_gets_at_most_half_the_budget(tmp_path):
    write(tmp_path, "sys/fs/cgroup/memory.max", str(64 * GiB))
    meminfo(tmp_path, available_kb=64 * 1024 * 1024)
    nbytes, how = auto_cache_bytes(8 * GiB, tmp_path)
    assert nbytes == 4 * GiB
    assert "half of limits.max_memory_bytes" in how


@pytest.mark.parametrize(
    ("path", "text", "quota"),
    [
        ("sys/fs/cgroup/cpu.max", "150000 100000\n", 2),
        ("sys/fs/cgroup/cpu.max", "100000 100000\n", 1),
        ("sys/fs/cgroup/cpu.max", "max 100000\n", None),
        ("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n", None),
    ],
)
def test_cores_capped_by_the_cgroup_quota(tmp_path, path, text, quota):
    write(tmp_path, path, text)
    if "cfs" in path:
        write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n")
    cores = len(os.sched_getaffinity(0))
    assert usable_cores(tmp_path) == (cores if quota is None else min(cores, quota))


def test_cgroup_v1_cfs_quota(tmp_path):
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "50000\n")
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n")
    assert usable_cores(tmp_path) == 1


def node_config(tmp_path, cache):
    return NodeConfig(
        data_root=tmp_path, state_dir=tmp_path / "state", output_root=tmp_path, cache=cache
    )


def test_a_node_sizes_its_cache_automatically_and_says_so(tmp_path, caplog):
    config = node_config(tmp_path, CacheConfig())
    with caplog.at_level(logging.INFO, logger="data_node.server"):
        node, _ = build_server(config, "127.0.0.1:0")
    try:
        # MemAvailable moves between two reads; the share of it the cache gets does not.
        expected, how = auto_cache_bytes(config.limits.max_memory_bytes)
        assert node.servicer._registry.cache.max_bytes == expected
        lines = [r.getMessage() for r in caplog.records if "cache.max_bytes" in r.getMessage()]
        assert len(lines) == 1
        assert lines[0].startswith(
            f"cache.max_bytes: {expected} bytes ({expected / 2**20:.0f} MiB), automatic: "
        )
        assert how.split(" the ")[0] in lines[0]
    finally:
        node.stop(None)


def test_an_explicit_cache_size_wins(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="data_node.server"):
        node, _ = build_server(node_config(tmp_path, CacheConfig(12345)), "127.0.0.1:0")
    try:
        assert node.servicer._registry.cache.max_bytes == 12345
        lines = [r.getMessage() for r in caplog.records if "cache.max_bytes" in r.getMessage()]
        assert lines == [
            "cache.max_bytes: 12345 bytes (0 MiB), explicit: [cache] max_bytes of the config"
        ]
    finally:
        node.stop(None)


CHURN = textwrap.dedent(
    """
    import sys, threading
    import numpy as np
    from data_node.resources import return_large_frees

    def rss():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))

    if sys.argv[1] == "returned":
        assert return_large_frees()
    def churn():  # batches of two sizes, allocated and freed by a thread
        for _ in range(3):
            batch = np.ones(16 << 20, np.uint8)
            del batch
            batch = np.ones((16 << 20) + 4096, np.uint8)
            del batch
    before = rss()
    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print((rss() - before) / (16 << 20))
    """
)


def batches_kept(mode):
    """Batches' worth of memory 4 threads keep after freeing their batches, in a new process."""
    run = subprocess.run(
        [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True
    )
    return float(run.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_returned_large_frees_leave_no_batch_behind():
    assert batches_kept("returned") < 0.5
    assert batches_kept("default") >= 2  # what the node would hold beyond its reservations

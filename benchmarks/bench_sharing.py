"""Aggregate throughput of 1, 2 and 4 concurrent trainers on one node, with and without the cache.

Data: 6,400 float32 1x64x64 images (105 MB decoded; integers 0-15, so gzip has work to
do), in one HDF5 dataset, gzip level 1, chunks of 8 images (128 KiB decoded, 800 chunks),
written to a temp dir. One data node runs in this process (``build_server`` on loopback,
rebuilt for every measurement so its cache starts empty), serving it with the cache at
128 MiB (the dataset is larger than the budget per trainer, budget/4, and fits the whole
budget) or off (``max_bytes = 0``, the baseline). Trainers are spawned processes, each with
a ``DataNodeClient`` reading one shuffled epoch (batches of 32, one element per 4 KiB page
touched) at the same time as the others:

- partitioned: N ranks of one job (world_size N, one seed) read one epoch between them;
- independent: N trainers with their own seeds read one epoch each;
- 1 trainer, 2 io: one trainer whose stream has nb_io_workers=2 (two node threads
  reading, and decoding chunks, for it; every other stream has one).

The node decodes cache misses of these gzip chunks with zlib outside the GIL
(``H5Source.read_chunk``), so streams (or io threads) missing different chunks decode
in parallel. On 2 cores the limit of the partitioned modes is the cores themselves: one
partitioned epoch is the same node work as one trainer's epoch (each chunk decoded once
either way), so N partitioned trainers can only gain what the trainers' and gRPC threads'
overlap gives, while N independent trainers share every decode N times.

Printed per mode, N and cache setting: aggregate samples/s (all trainers' samples over
the time from the first start to the last end) and its ratio to 1 trainer with the same
cache setting (goal with the cache: 4 trainers >= 1.6x); chunks read from storage (cache
misses) in the run and their ratio to 1 trainer (goal: 4 trainers <= 1.2x). With the
cache off nothing counts chunk reads (the node reads rows through h5py; each shuffled row
read decodes a chunk unless HDF5's own 1 MiB chunk cache still holds it).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from data_client import DataNodeClient
from data_node.config import load
from data_node.server import build_server

NUM_SAMPLES = 6400
SHAPE = (1, 64, 64)
CHUNK = 8
BATCH = 32
SEED = 7
CACHE_BYTES = 128 * 2**20
TRAINERS = (1, 2, 4)
ROUNDS = 3
PAGE_ELEMENTS = 1024  # one float32 per 4 KiB page
MiB = 2**20
CONFIG = """
[node]
listen = "127.0.0.1:0"
data_root = "data"
state_dir = "state"
output_root = "outputs"

[limits]
max_open_streams = 8

[cache]
max_bytes = {max_bytes}

[datasets.bench.arrays]
image = {{ path = "bench.h5", key = "image" }}
"""


def make_dataset(root: Path) -> int:
    """Write the dataset under ``root/data``; return its size on disk in bytes."""
    (root / "data").mkdir()
    rng = np.random.default_rng(0)
    path = root / "data" / "bench.h5"
    with h5py.File(path, "w") as f:
        image = f.create_dataset(
            "image",
            (NUM_SAMPLES, *SHAPE),
            "f4",
            chunks=(CHUNK, *SHAPE),
            compression="gzip",
            compression_opts=1,
        )
        step = 800
        for start in range(0, NUM_SAMPLES, step):
            image[start : start + step] = rng.integers(0, 16, (step, *SHAPE)).astype(np.float32)
    return path.stat().st_size


def write_config(root: Path, max_bytes: int) -> Path:
    path = root / f"node{max_bytes}.toml"
    path.write_text(textwrap.dedent(CONFIG.format(max_bytes=max_bytes)))
    return path


def warm(seconds: float) -> int:
    """Keep a pool process busy (importing this module is the warm-up); return its pid."""
    time.sleep(seconds)
    return os.getpid()


def run_trainer(port: int, options: dict) -> tuple[int, float, float, float]:
    """One trainer: read one epoch; return samples, start and end (monotonic), CPU seconds."""
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        stream = client.stream("bench", BATCH, sample_random=True, **options)
        start, cpu = time.monotonic(), time.process_time()
        samples = 0
        for (image,) in stream:
            float(image.reshape(-1)[::PAGE_ELEMENTS].sum())
            samples += len(image)
        return samples, start, time.monotonic(), time.process_time() - cpu


def trainer_options(mode: str, count: int) -> list[dict]:
    """Stream options of ``count`` trainers sharing the dataset in ``mode``."""
    if mode == "partitioned":
        return [{"seed": SEED, "rank": r, "world_size": count} for r in range(count)]
    io_threads = {"nb_io_workers": 2} if mode == IO2 else {}
    return [{"seed": SEED + r, "sharing": "independent", **io_threads} for r in range(count)]


@dataclass(frozen=True)
class Run:
    """One measurement: aggregate samples/s, chunk reads (-1: no cache), CPUs busy."""

    rate: float
    chunk_reads: int
    node_cpus: float
    trainer_cpus: float


def measure(config: Path, pool: ProcessPoolExecutor, options: list[dict]) -> Run:
    """Run one trainer per entry of ``options`` at once against a fresh node."""
    node, port = build_server(load(config), "127.0.0.1:0")
    node.start()
    try:
        node_cpu = time.process_time()
        futures = [pool.submit(run_trainer, port, opts) for opts in options]
        results = [future.result() for future in futures]
        node_cpu = time.process_time() - node_cpu
        cache = node.servicer._registry.cache
        chunk_reads = -1 if cache is None else cache.stats().misses
    finally:
        node.stop(None)
    samples = sum(r[0] for r in results)
    expected = NUM_SAMPLES * (1 if "world_size" in options[0] else len(options))
    assert samples == expected, (samples, expected)
    elapsed = max(r[2] for r in results) - min(r[1] for r in results)
    trainer_cpu = sum(r[3] for r in results)
    return Run(samples / elapsed, chunk_reads, node_cpu / elapsed, trainer_cpu / elapsed)


IO2 = "1 trainer, 2 io"
CASES = [("1 trainer", 1), (IO2, 1)] + [
    (mode, n) for mode in ("partitioned", "independent") for n in (2, 4)
]


def report(label: str, runs: dict[tuple[str, int], Run]) -> None:
    base = runs["1 trainer", 1]
    for mode, count in CASES:
        run = runs[mode, count]
        name = f"{count} {mode}" if count > 1 else mode
        line = f"{label:13} {name:15}: {run.rate:6.0f} samples/s"
        if run is not base:
            goal = " (goal >= 1.6x)" if count == 4 and base.chunk_reads >= 0 else ""
            line += f" = {run.rate / base.rate:4.2f}x{goal:15}"
        else:
            line += f"{'':22}"
        line += f" | CPUs busy: node {run.node_cpus:3.1f}, trainers {run.trainer_cpus:3.1f}"
        if run.chunk_reads >= 0:
            line += f" | chunk reads {run.chunk_reads:4d}"
            if run is not base:
                line += f" = {run.chunk_reads / base.chunk_reads:4.2f}x"
                line += " (goal <= 1.2x)" if count == 4 else ""
        print(line)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench_sharing_"))
    try:
        began = time.monotonic()
        on_disk = make_dataset(root)
        decoded = NUM_SAMPLES * int(np.prod(SHAPE)) * 4
        print(
            f"{NUM_SAMPLES} float32 {SHAPE} images: {decoded / MiB:.1f} MiB decoded, "
            f"{on_disk / MiB:.1f} MiB gzip-1 on disk, {NUM_SAMPLES // CHUNK} chunks of "
            f"{CHUNK * np.prod(SHAPE) * 4 // 1024} KiB; batches of {BATCH}, shuffled; "
            f"{os.cpu_count()} CPUs; trainers are processes; best of {ROUNDS} rounds"
        )
        print(
            f"cache budget {CACHE_BYTES / MiB:.0f} MiB: dataset {decoded / MiB:.0f} MiB > "
            f"budget/4 = {CACHE_BYTES / 4 / MiB:.0f} MiB (larger than the budget per trainer) "
            f"and <= budget (fits)"
        )
        configs = {max_bytes: write_config(root, max_bytes) for max_bytes in (CACHE_BYTES, 0)}
        best: dict[int, dict[tuple[str, int], Run]] = {max_bytes: {} for max_bytes in configs}
        with ProcessPoolExecutor(max(TRAINERS), mp_context=mp.get_context("spawn")) as pool:
            # Busy for a second each, the tasks start every process before the clock does;
            # one untimed run warms the node's side of this process.
            assert len(set(pool.map(warm, [1.0] * max(TRAINERS)))) == max(TRAINERS)
            measure(configs[CACHE_BYTES], pool, trainer_options("independent", 1))
            for _ in range(ROUNDS):
                for max_bytes, config in configs.items():
                    for mode, count in CASES:
                        run = measure(config, pool, trainer_options(mode, count))
                        kept = best[max_bytes].get((mode, count))
                        if kept is None or run.rate > kept.rate:
                            best[max_bytes][mode, count] = run
        for max_bytes, runs in best.items():
            report(f"cache {max_bytes // MiB} MiB" if max_bytes else "cache off", runs)
        print(f"total {time.monotonic() - began:.0f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

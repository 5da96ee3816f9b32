"""One client over two node processes against one node process: throughput and where time goes.

An HDF5 dataset of 256 float32 1x256x256 images and uint8 masks (chunks of 32 samples) is
written to a temp dir; two node processes (spawned) serve it, each with a config of its own.
Every stream asks for the same thing: shuffled batches of 16, seed 3, augmentation (rotation,
zoom, flip, intensity shift) with one worker process per node (nb_proc_workers=1), looping.

(a) 1 node: ``DataNodeClient(A).stream(...)``, a BatchStream;
(b) 2 nodes: ``DataNodeClient([A, B]).stream(...)``, a MultiNodeStream: even batches from A,
    odd ones from B, merged in order (the same batches as (a), bit for bit).

Each is measured after a warm-up, over TIMED batches that the "trainer" only touches (one
element per 4 KiB page), then again with a simulated GPU step per batch (a sleep as long as
a batch takes in (a): the trainer then needs one node's full rate). Rounds interleave (a) and
(b); the figures are each setting's median round, the ratio (b)/(a) the median of the rounds'.

Where the time goes, per batch: node CPU (the node processes and their worker processes,
from /proc; "workers" is the workers' part, the augmentation; the rest is reading, encoding
and sending), client CPU (receiving, decoding, merging: this process), the trainer's wait in
``next()`` (``stall``) and, for (b), the lane threads' wait on their nodes (``lane_stalls``,
summed over lanes). "ours" is (node + client CPU per batch) x batches/s, the cores this
benchmark keeps busy, "others" what the rest of the machine used meanwhile (/proc/stat).

What to expect: one node is bound by its single augmentation worker (about one core), so on
a machine with idle cores a second node nearly doubles the rate, until the cores run out:
the client and both nodes' main processes need cores too. On 2 cores the ceiling is about
2 cores / (node + client CPU per batch), and other load on the machine lowers it further.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

# The same augmentation, node process and page-touching trainer as bench_stream.
from bench_stream import AUGMENT, run_node, touch

from data_client import DataNodeClient

NUM_SAMPLES = 256
SHAPE = (1, 256, 256)
CHUNK = 32
BATCH = 16
SEED = 3
WORKERS = 1
WARMUP = 8
TIMED = 50
ROUNDS = 5
CONFIG = """
[node]
listen = "127.0.0.1:0"
data_root = "data"
state_dir = "state_{name}"
output_root = "outputs_{name}"

[datasets.bench.arrays]
image = {{ path = "bench.h5", key = "image" }}
mask = {{ path = "bench.h5", key = "mask" }}
"""
TICK = os.sysconf("SC_CLK_TCK")


class Figures(NamedTuple):
    """One measurement: batches/s and, per batch, milliseconds of each kind."""

    rate: float
    node_cpu: float
    worker_cpu: float
    client_cpu: float
    stall: float
    lane_wait: float
    stall_fraction: float
    machine: float


def make_configs(root: Path) -> list[Path]:
    """Write the dataset and one config per node under ``root``; return the configs."""
    (root / "data").mkdir()
    rng = np.random.default_rng(0)
    with h5py.File(root / "data" / "bench.h5", "w") as f:
        image = f.create_dataset("image", (NUM_SAMPLES, *SHAPE), "f4", chunks=(CHUNK, *SHAPE))
        mask = f.create_dataset("mask", (NUM_SAMPLES, *SHAPE), "u1", chunks=(CHUNK, *SHAPE))
        for start in range(0, NUM_SAMPLES, CHUNK):
            x = rng.random((CHUNK, *SHAPE), dtype=np.float32)
            image[start : start + CHUNK] = x
            mask[start : start + CHUNK] = x > 0.5
    configs = []
    for name in ("a", "b"):
        config = root / f"node_{name}.toml"
        config.write_text(CONFIG.format(name=name))
        configs.append(config)
    return configs


def tree_cpu(pids: list[int]) -> tuple[float, float]:
    """CPU seconds (user + system) of the processes ``pids``, and of all their descendants."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    found, frontier = set(pids), set(pids)
    while frontier:
        frontier = {pid for pid, (parent, _) in stats.items() if parent in frontier} - found
        found |= frontier
    main = sum(stats[pid][1] for pid in pids if pid in stats) / TICK
    return main, sum(stats[pid][1] for pid in found - set(pids) if pid in stats) / TICK


def machine_cpu() -> float:
    """CPU seconds every process of the machine has used (all cores, from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / TICK


def measure(addresses: list[str], node_pids: list[int], step: float) -> Figures:
    """Stream from ``addresses``; time TIMED batches after WARMUP, sleeping ``step`` per batch."""
    with DataNodeClient(addresses) as client:
        stream = client.stream(
            "bench",
            BATCH,
            sample_random=True,
            seed=SEED,
            augmentation=AUGMENT,
            nb_proc_workers=WORKERS,
            loop_forever=True,
        )
        with stream:
            for _ in range(WARMUP):
                touch(next(stream))
            stall, lanes = stream.stall, sum(getattr(stream, "lane_stalls", ()))
            (node, workers), client_cpu = tree_cpu(node_pids), time.process_time()
            machine = machine_cpu()
            start = time.perf_counter()
            for _ in range(TIMED):
                touch(next(stream))
                time.sleep(step)
            elapsed = time.perf_counter() - start
            machine = machine_cpu() - machine
            node_after, workers_after = tree_cpu(node_pids)
            node, workers = node_after - node, workers_after - workers
            client_cpu = time.process_time() - client_cpu
            stall = stream.stall - stall
            lanes = sum(getattr(stream, "lane_stalls", ())) - lanes
    ms = 1000 / TIMED
    return Figures(
        TIMED / elapsed,
        (node + workers) * ms,
        workers * ms,
        client_cpu * ms,
        stall * ms,
        lanes * ms,
        stall / elapsed,
        machine / elapsed,
    )


def median_figures(rounds: list[Figures]) -> Figures:
    return Figures(*(statistics.median(values) for values in zip(*rounds, strict=True)))


def report(label: str, figures: Figures, cpus: int) -> None:
    busy = (figures.node_cpu + figures.client_cpu) * figures.rate / 1000
    lanes = f", lane wait {figures.lane_wait:5.1f}" if figures.lane_wait else ""
    print(
        f"  {label}: {figures.rate:5.1f} batches/s | per batch ms: node CPU "
        f"{figures.node_cpu:4.1f} (workers {figures.worker_cpu:4.1f}), client CPU "
        f"{figures.client_cpu:3.1f}, trainer stall "
        f"{figures.stall:5.1f}{lanes} | stall fraction {figures.stall_fraction:.2f} | "
        f"ours {busy:.2f} + others {max(0.0, figures.machine - busy):.2f} of {cpus} cores"
    )


def compare(one: list[str], two: list[str], pids: list[int], step: float, cpus: int) -> float:
    """Print (a), (b) and their ratio with ``step`` seconds of trainer work per batch."""
    singles, doubles = [], []
    for _ in range(ROUNDS):
        singles.append(measure(one, pids[:1], step))
        doubles.append(measure(two, pids, step))
    ratios = [b.rate / a.rate for a, b in zip(singles, doubles, strict=True)]
    single, double = median_figures(singles), median_figures(doubles)
    report("1 node ", single, cpus)
    report("2 nodes", double, cpus)
    print(
        f"  ratio 2 nodes / 1 node: {statistics.median(ratios):.2f} "
        f"({min(ratios):.2f}-{max(ratios):.2f})"
    )
    return single.rate


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench_multinode_"))
    context = mp.get_context("spawn")
    stop = context.Event()
    nodes = []
    try:
        ports = []
        for config in make_configs(root):
            ports.append(context.Queue())
            # Not a daemon: the node starts worker processes of its own.
            node = context.Process(target=run_node, args=(config, ports[-1], stop))
            node.start()
            nodes.append(node)
        addresses = [f"127.0.0.1:{port.get(timeout=60)}" for port in ports]
        pids = [node.pid for node in nodes if node.pid is not None]
        cpus = os.cpu_count() or 1
        batch_mb = BATCH * np.prod(SHAPE) * (4 + 1) / 1e6
        print(
            f"{NUM_SAMPLES} samples of float32 {SHAPE} + uint8 mask, batches of {BATCH} "
            f"({batch_mb:.1f} MB), augmented, nb_proc_workers={WORKERS} per node; {TIMED} "
            f"timed batches after {WARMUP}, {ROUNDS} rounds, {cpus} CPUs"
        )
        print("trainer only touches each batch:")
        rate = compare(addresses[:1], addresses, pids, 0.0, cpus)
        print(f"trainer step of {1000 / rate:.0f} ms per batch (one node's pace):")
        compare(addresses[:1], addresses, pids, 1 / rate, cpus)
    finally:
        stop.set()
        for node in nodes:
            node.join(timeout=30)
            if node.is_alive():
                node.terminate()
                node.join()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The node's warm worker pool: time to first batch, and throughput of a small augmented stream.

A data node (its own spawned process, ``[workers] processes = 2`` where the node has a
pool) serves an HDF5 dataset of 512 float32 1x64x64 images and uint8 masks (chunks of 32).
Streams ask for batches of 16, shuffled, augmented (rotation, shifts, zoom, flip) on
``nb_proc_workers=2``.

1. First batch: seconds from opening a stream to its first batch, (a) on the node just
   started (its first stream: before the pool, its processes started with it), and (b) the
   median of 5 fresh streams on the warm node (the pool's goal: under 0.1 s). Before the
   pool, every stream started its own processes, so (b) was about (a).
2. Throughput: samples/s of one augmented stream in steady state (after 4 warm-up batches,
   over 40 batches), best of 3 rounds.

The script runs against whatever ``data_node`` it imports: run it with this checkout's
interpreter for the figures after, and with a checkout before the pool for those before
(``[workers]`` is only written where the node's config knows it).
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from data_client import DataNodeClient
from data_node import config as node_config
from data_node.config import load
from data_node.server import build_server

NUM_SAMPLES = 512
SHAPE = (1, 64, 64)
BATCH = 16
WARMUP = 4
TIMED = 40
ROUNDS = 3
FRESH_STREAMS = 5
AUGMENT = {
    "x_array": "image",
    "y_array": "mask",
    "rotation_range": 20.0,
    "width_shift_range": 0.1,
    "height_shift_range": 0.1,
    "zoom_range": (0.9, 1.1),
    "horizontal_flip": True,
}
REQUEST: dict[str, Any] = {
    "sample_random": True,
    "seed": 3,
    "augmentation": AUGMENT,
    "nb_proc_workers": 2,
}


def write_node(root: Path) -> Path:
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    image = rng.random((NUM_SAMPLES, *SHAPE), dtype=np.float32)
    with h5py.File(data / "small.h5", "w") as file:
        file.create_dataset("image", data=image, chunks=(32, *SHAPE))
        file.create_dataset("mask", data=(image > 0.5).astype(np.uint8), chunks=(32, *SHAPE))
    workers = "[workers]\nprocesses = 2\n" if hasattr(node_config, "WorkersConfig") else ""
    path = root / "node.toml"
    path.write_text(
        textwrap.dedent(
            """
            [node]
            listen = "127.0.0.1:0"
            data_root = "data"
            [limits]
            max_nb_proc_workers = 2
            [datasets.small.arrays]
            image = { path = "small.h5", key = "image" }
            mask = { path = "small.h5", key = "mask" }
            """
        )
        + workers
    )
    return path


def run_node(config: Path, ports: Any, stop: Any) -> None:
    node, port = build_server(load(config), "127.0.0.1:0")
    node.start()
    ports.put(port)
    stop.wait()
    node.stop(None)


def first_batch(client: DataNodeClient) -> float:
    start = time.perf_counter()
    with client.stream("small", BATCH, loop_forever=True, **REQUEST) as stream:
        next(stream)
        return time.perf_counter() - start


def samples_per_second(client: DataNodeClient) -> float:
    with client.stream("small", BATCH, loop_forever=True, **REQUEST) as stream:
        for _ in range(WARMUP):
            next(stream)
        start = time.perf_counter()
        for _ in range(TIMED):
            image, mask, *_ = next(stream)
            float(image.sum()) + float(mask.sum())
        return TIMED * BATCH / (time.perf_counter() - start)


def main() -> None:
    context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        config = write_node(Path(tmp))
        ports, stop = context.Queue(), context.Event()
        node = context.Process(target=run_node, args=(config, ports, stop))
        node.start()
        try:
            with DataNodeClient(f"127.0.0.1:{ports.get(timeout=120)}") as client:
                started = first_batch(client)
                rates = [samples_per_second(client) for _ in range(ROUNDS)]
                warm = statistics.median(first_batch(client) for _ in range(FRESH_STREAMS))
        finally:
            stop.set()
            node.join(60)
    print(f"first batch, node just started:  {started:7.3f} s")
    print(f"first batch, warm node (median): {warm:7.3f} s   (goal < 0.1 s)")
    print(f"augmented stream, best of {ROUNDS}:   {max(rates):7.1f} samples/s")


if __name__ == "__main__":
    main()

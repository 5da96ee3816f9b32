"""Remote stream (node process + client, loopback) against the same data_flow in this process.

An HDF5 dataset of 2,048 float32 1x256x256 images and uint8 masks (chunks of 32 samples) is
written to a temp dir. A data node serving it runs in a separate process (spawned), so its
reading, augmentation and encoding do not share a GIL with the client's decoding.

(a) in-process: ``data_flow`` over the very arrays the node opens (``open_dataset`` of the same
    config), with the node's ``SampleAugmentation`` as preprocessor and the node's settings
    (shuffle, seed, batch size, one io thread, ``max_in_flight``, the same nb_proc_workers),
    iterated with ``flow_with_info``;
(b) remote: ``DataNodeClient.stream`` with the same options.

Each batch is touched in the consumer (one element per 4 KiB page of every array), so nothing
stays lazy. Throughput is steady state: each stream is warmed up (worker start-up, first
batches) before the clock starts. Rounds interleave (a) and (b); the ratio (b)/(a) is the median
over rounds of the ratio within a round, with its range (goal with augmentation: >= 0.90).
The figures of (a) and (b) are the best round of each.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from data_client import DataNodeClient
from data_node.catalog.datasets import open_dataset
from data_node.config import LimitsConfig, load
from data_node.server import build_server
from data_tools.data_augmentation import SampleAugmentation, parse_augmentation_spec
from data_tools.io import data_flow

if TYPE_CHECKING:
    from collections.abc import Iterator

NUM_SAMPLES = 2048
SHAPE = (1, 256, 256)
CHUNK = 32
BATCH = 32
SEED = 3
WARMUP = 4
TIMED = 30
ROUNDS = 5
PAGE_ELEMENTS = 1024  # one float32 per 4 KiB page; more than one per page for uint8
MB = 1e6
AUGMENT = {
    "x_array": "image",
    "y_array": "mask",
    "rotation_range": 20.0,
    "zoom_range": 0.1,
    "horizontal_flip": True,
    "intensity_shift_range": 0.1,
}
CONFIG = """
[node]
listen = "127.0.0.1:0"
data_root = "data"

[datasets.bench.arrays]
image = { path = "bench.h5", key = "image" }
mask = { path = "bench.h5", key = "mask" }
"""


def make_dataset(root: Path) -> Path:
    """Write the dataset and the node's config under ``root``; return the config's path."""
    (root / "data").mkdir()
    rng = np.random.default_rng(0)
    with h5py.File(root / "data" / "bench.h5", "w") as f:
        image = f.create_dataset("image", (NUM_SAMPLES, *SHAPE), "f4", chunks=(CHUNK, *SHAPE))
        mask = f.create_dataset("mask", (NUM_SAMPLES, *SHAPE), "u1", chunks=(CHUNK, *SHAPE))
        for start in range(0, NUM_SAMPLES, CHUNK):
            x = rng.random((CHUNK, *SHAPE), dtype=np.float32)
            image[start : start + CHUNK] = x
            mask[start : start + CHUNK] = x > 0.5
    config = root / "node.toml"
    config.write_text(textwrap.dedent(CONFIG))
    return config


def run_node(config: Path, ports: Any, stop: Any) -> None:
    """The node process: serve ``config`` on a free loopback port until ``stop`` is set."""
    node, port = build_server(load(config), "127.0.0.1:0")
    node.start()
    ports.put(port)
    stop.wait()
    # The client's last cancel reaches the node asynchronously; let that stream end first.
    deadline = time.monotonic() + 10
    while node.servicer.open_streams and time.monotonic() < deadline:
        time.sleep(0.02)
    node.stop(None)


def touch(batch: tuple[np.ndarray, ...] | list[np.ndarray]) -> int:
    """Read one element per page of every array (so none stays lazy); return the bytes."""
    for array in batch:
        float(array.reshape(-1)[::PAGE_ELEMENTS].sum())
    return sum(array.nbytes for array in batch)


def measure(batches: Iterator[Any]) -> tuple[float, float]:
    """Batches/s and MB/s of ``batches`` after ``WARMUP`` untimed batches."""
    for _ in range(WARMUP):
        touch(next(batches))
    nbytes = 0
    start = time.perf_counter()
    for _ in range(TIMED):
        nbytes += touch(next(batches))
    elapsed = time.perf_counter() - start
    return TIMED / elapsed, nbytes / elapsed / MB


def local(arrays: list[Any], workers: int, augment: bool) -> tuple[float, float]:
    """(a): data_flow in this process, as the node builds it."""
    options = {k: v for k, v in AUGMENT.items() if not k.endswith("_array")}
    spec = parse_augmentation_spec(**options)
    transform = SampleAugmentation(spec, SEED, 0, 1) if augment else None
    flow = data_flow(
        arrays,
        BATCH,
        nb_io_workers=1,
        nb_proc_workers=workers,
        sample_random=True,
        seed=SEED,
        preprocessor=transform,
        max_in_flight=LimitsConfig().max_in_flight,
    )
    with flow, contextlib.closing(flow.flow_with_info()) as infos:
        return measure(info.arrays for info in infos)


def remote(client: DataNodeClient, workers: int, augment: bool) -> tuple[float, float]:
    """(b): the node's stream through the client."""
    stream = client.stream(
        "bench",
        BATCH,
        sample_random=True,
        seed=SEED,
        augmentation=AUGMENT if augment else None,
        nb_proc_workers=workers,
        loop_forever=True,
    )
    with stream:
        return measure(stream)


def compare(arrays: list[Any], client: DataNodeClient, workers: int, augment: bool) -> None:
    """Print (a), (b) and their ratio for one setting."""
    locals_, remotes = [], []
    for _ in range(ROUNDS):
        locals_.append(local(arrays, workers, augment))
        remotes.append(remote(client, workers, augment))
    ratios = [r[0] / a[0] for a, r in zip(locals_, remotes, strict=True)]
    ratio = statistics.median(ratios)
    (a_rate, a_mb), (b_rate, b_mb) = max(locals_), max(remotes)
    label = f"{'augmented' if augment else 'plain':9} nb_proc_workers={workers}"
    print(
        f"{label}: in-process {a_rate:6.1f} batches/s {a_mb:7.0f} MB/s | "
        f"remote {b_rate:6.1f} batches/s {b_mb:7.0f} MB/s | "
        f"ratio {ratio:.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        + ("  (goal >= 0.90)" if augment else "")
    )


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench_stream_"))
    context = mp.get_context("spawn")
    stop = context.Event()
    node = None
    try:
        config = make_dataset(root)
        ports = context.Queue()
        # Not a daemon: the node starts worker processes of its own.
        node = context.Process(target=run_node, args=(config, ports, stop))
        node.start()
        port = ports.get(timeout=60)
        arrays = [array for _, array in open_dataset(load(config).datasets["bench"]).arrays]
        batch_mb = BATCH * np.prod(SHAPE) * (4 + 1) / MB  # float32 image + uint8 mask
        print(
            f"{NUM_SAMPLES} samples of float32 {SHAPE} + uint8 mask, batches of {BATCH} "
            f"({batch_mb:.1f} MB), {TIMED} timed batches after {WARMUP}, {ROUNDS} rounds, "
            f"{os.cpu_count()} CPUs; ratio: median (min-max) of the rounds"
        )
        with DataNodeClient(f"127.0.0.1:{port}") as client:
            for augment in (True, False):
                for workers in (0, 2):
                    compare(arrays, client, workers, augment)
    finally:
        stop.set()
        if node is not None:
            node.join(timeout=30)
            if node.is_alive():
                node.terminate()
                node.join()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

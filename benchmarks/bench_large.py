"""A dataset about four times the node's chunk cache: decodes, samples/s, CPU and first batch.

Workload (issue 13, generated in a temp dir): 4,096 images 1x256x256 float32 and uint8
masks, gzip HDF5, chunks of 32 images; batches of 32, shuffled, per-sample augmentation
(rotation 15, shift 0.1, zoom 0.1, horizontal flip: image_random_transform, the mask
transformed with the image); the node's cache holds a quarter of the decoded data.
``--quick`` runs a reduced size (512 images of 1x64x64) to check the benchmark works;
``--images``, ``--size``, ``--epochs`` and ``--cache-fraction`` set the rest;
``--checkout-python`` adds today's node (below).

Modes, one node each, built in this process (loopback), one trainer reading ``--epochs``
shuffled epochs, augmented on the node's warm pool (one worker per core; the request leaves
``nb_proc_workers`` to its default, every worker of the pool):

- today (checkout), with ``--checkout-python PATH`` (an older checkout's Python, e.g.
  ``../before/.venv/bin/python``): today's node for real, ``python -m data_node serve`` in a
  process of its own with the same config and request; the base of "x today" when given;
- exact/LRU (emulated): today's eviction on this code: one reader thread, the stream's
  reads not registered with the cache (``following_reads`` patched to register nothing), so
  the cache evicts the least recently used chunk and decodes nothing ahead; the base of
  "x today" without ``--checkout-python``;
- exact/known-future: the node as it is: readers on every core, eviction by known future
  use (Belady), decode-ahead;
- windowed: ``shuffle_window`` (a chunk-windowed shuffle) of half the samples the cache
  holds;
- all-in-cache: a cache holding the whole dataset, warmed by one epoch first.

Also, in the same run: a torch ``DataLoader(num_workers=2, shuffle=True)`` over h5py with
the same augmentation (``image_random_transform`` per sample); the offline optimum decode
count for the exact order (Belady on the sequence of chunk reads, an image chunk and its
mask chunk counted as one unit of their summed size: the classic rule needs equal units; the
node's cache, budgeted in bytes, may keep more of the small mask chunks and so come in under
it) and LRU's on that sequence; CPU per delivered sample, the node's apart from the
client's, against the sum of its unavoidable parts, each measured alone: decoding every
chunk once, augmenting once, one copy of the sample. The node and the client share this
process: the client's CPU is its reading thread's (``time.thread_time``: receiving,
decoding the messages into arrays); the node's is the rest of this process (its stream,
reader and decode-ahead threads, and gRPC's threads, which serve the client too: an
overstatement of the node's share) plus its warm pool's worker processes, counted from
once the pool is ready (their start and imports are not counted). Time to the first batch
of a stream on a cold node (just built) and on a warm one (a stream already ran); the warm
stream uses another seed than the stream that warmed the node, so its first chunks are not
already in the cache: what it measures is the warm pool and node, not a warm cache.

Prints ratios; asserts nothing about time. Figures on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any
from unittest import mock

import h5py
import numpy as np

from data_client import DataNodeClient, UnavailableError
from data_node.config import load
from data_node.server import build_server
from data_node.streaming import streams
from data_tools.chunk_cache import ChunkCache, cached, chunk_reads, optimal_decodes
from data_tools.data_augmentation import image_random_transform
from data_tools.io import data_flow
from data_tools.storage.hdf5 import H5Source
from data_tools.wrap import delayed_view

CHUNK = 32
BATCH = 32
SEED = 7
AUGMENT = {
    "rotation_range": 15.0,
    "width_shift_range": 0.1,
    "height_shift_range": 0.1,
    "zoom_range": 0.1,
    "horizontal_flip": True,
}
MiB = 2**20


def make_data(path: Path, images: int, size: int) -> None:
    """Smooth random images (gzip has work to do) and their thresholded masks."""
    rng = np.random.default_rng(SEED)
    with h5py.File(path, "w") as file:
        image, mask = (
            file.create_dataset(
                name,
                (images, 1, size, size),
                dtype,
                chunks=(CHUNK, 1, size, size),
                compression="gzip",
            )
            for name, dtype in (("image", "f4"), ("mask", "u1"))
        )
        for start in range(0, images, CHUNK):
            coarse = rng.random((CHUNK, 1, size // 8, size // 8), dtype=np.float32)
            block = np.kron(coarse, np.ones((1, 1, 8, 8), np.float32))
            image[start : start + CHUNK] = block
            mask[start : start + CHUNK] = (block > 0.5).astype(np.uint8)


def write_config(root: Path, cache_bytes: int, listen: str = "127.0.0.1:0", tag: str = "") -> Path:
    """A node config serving ``large`` with a cache of ``cache_bytes`` (``tag``: its own dirs)."""
    name = f"{tag}{cache_bytes}"
    path = root / f"node-{name}.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [node]
            listen = "{listen}"
            data_root = "{root}/data"
            state_dir = "{root}/state-{name}"
            output_root = "{root}/out-{name}"

            [limits]
            max_memory_bytes = {max(8 << 30, 4 * cache_bytes)}

            [cache]
            max_bytes = {cache_bytes}

            [datasets.large.arrays]
            image = {{ path = "large.h5", key = "image" }}
            mask = {{ path = "large.h5", key = "mask" }}
            """
        )
    )
    return path


@contextlib.contextmanager
def lru_only():
    """Today's cache: no stream registers its reads (LRU eviction, nothing decoded ahead)."""

    @contextlib.contextmanager
    def unregistered(arrays, batches, **_):
        yield list(arrays), None

    with mock.patch.object(streams, "following_reads", unregistered):
        yield


def _live_children_seconds(pid: int) -> float:
    """CPU seconds of the live descendants of ``pid`` (the node's warm worker pool), Linux."""
    total = 0.0
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
                total += _live_children_seconds(int(child))
    return total


def cpu_seconds() -> float:
    """CPU seconds of this process, its finished children and its live ones."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    finished = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    return finished + _live_children_seconds(os.getpid())


def run_stream(
    port: int, epochs: int, batches: int | None = None, seed: int = SEED, **options: Any
) -> tuple[int, float, float, float]:
    """(samples, seconds, seconds to the first batch, CPU seconds of this reading thread) of
    one shuffled, augmented stream of ``seed`` (default ``SEED``).

    ``batches``: stop after that many (closing the stream); default None: every batch.
    """
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        start, thread_cpu = time.perf_counter(), time.thread_time()
        stream = client.stream(
            "large",
            BATCH,
            sample_random=True,
            seed=seed,
            epochs=epochs,
            augmentation={**AUGMENT, "x_array": "image", "y_array": "mask"},
            **options,
        )
        samples, first = 0, None
        with stream:
            for count, arrays in enumerate(stream, 1):
                if first is None:
                    first = time.perf_counter() - start
                samples += len(arrays[0])
                if count == batches:
                    break
        return (
            samples,
            time.perf_counter() - start,
            first or 0.0,
            time.thread_time() - thread_cpu,
        )


def measure(
    root: Path, cache_bytes: int, epochs: int, chunks: int, *, warm: bool = False, **options: Any
) -> dict[str, float]:
    node, port = build_server(load(write_config(root, cache_bytes)))
    node.start()
    try:
        assert node.workers is not None
        assert node.workers.wait_ready(120)
        if warm:
            run_stream(port, 1, **options)
        cache = node.servicer._registry.cache
        misses = cache.stats().misses
        cpu = cpu_seconds()
        samples, seconds, first, client_cpu = run_stream(port, epochs, **options)
        return {
            "samples/s": samples / seconds,
            "decodes/chunk/epoch": (cache.stats().misses - misses) / chunks / epochs,
            "node cpu/sample ms": (cpu_seconds() - cpu - client_cpu) / samples * 1e3,
            "client cpu/sample ms": client_cpu / samples * 1e3,
            "first batch s": first,
        }
    finally:
        node.stop(None)


def _tree_seconds(pid: int) -> float:
    """CPU seconds of process ``pid``, its reaped children and its live descendants."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = sum(int(field) for field in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK") + _live_children_seconds(pid)


def measure_checkout(python: str, root: Path, cache_bytes: int, epochs: int) -> dict[str, float]:
    """Today's node for real: another checkout's ``python -m data_node serve``, as a process.

    The same config (cache size included) and the same request as the other modes: what the
    node does with a request that leaves the worker counts to their defaults is its own.
    Its cache counts are not read (its metrics may differ): decodes are not reported.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(root, cache_bytes, f"127.0.0.1:{port}", tag="checkout-")
    with (root / "checkout-node.log").open("w") as log:
        node = subprocess.Popen(
            [python, "-m", "data_node", "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            with DataNodeClient(f"127.0.0.1:{port}") as client:
                while True:
                    try:
                        client.datasets()
                        break
                    except UnavailableError:
                        if time.monotonic() > deadline or node.poll() is not None:
                            raise
                        time.sleep(0.2)
            cpu = _tree_seconds(node.pid)
            samples, seconds, first, client_cpu = run_stream(port, epochs)
            return {
                "samples/s": samples / seconds,
                "decodes/chunk/epoch": float("nan"),
                "node cpu/sample ms": (_tree_seconds(node.pid) - cpu) / samples * 1e3,
                "client cpu/sample ms": client_cpu / samples * 1e3,
                "first batch s": first,
            }
        finally:
            node.terminate()
            node.wait(timeout=60)


def first_batches(root: Path, cache_bytes: int) -> tuple[float, float]:
    """Seconds to the first batch on a cold node (just built) and on a warm one.

    The warm stream has a seed of its own: the stream that warmed the node left its first
    batch's chunks in the cache, which would flatter the warm figure.
    """
    node, port = build_server(load(write_config(root, cache_bytes)))
    node.start()
    try:
        first = run_stream(port, 1, batches=1)[2]
        return first, run_stream(port, 1, batches=1, seed=SEED + 1)[2]
    finally:
        node.stop(None)


def batch_rows(flow: data_flow) -> Any:
    """The rows of each batch of ``flow``, in order, read from its spec (nothing is read)."""
    return (rows for _, _, rows in flow.spec.batches())


def offline_counts(path: Path, images: int, cache_bytes: int) -> tuple[int, int]:
    """(optimum, LRU) chunk decodes for one epoch of the exact order, in chunk units."""
    view = delayed_view(cached(H5Source(str(path), "image"), ChunkCache(0)))
    order = data_flow([view], batch_size=BATCH, sample_random=True, seed=SEED, loop_forever=False)
    sequence = [chunk_id for rows in batch_rows(order) for chunk_id, _ in chunk_reads(view, rows)]
    with h5py.File(path) as file:
        pair_bytes = sum(
            CHUNK * int(np.prod(file[k].shape[1:])) * file[k].dtype.itemsize
            for k in ("image", "mask")
        )
    capacity = cache_bytes // pair_bytes
    lru = ChunkCache(capacity)  # one byte per unit; no stream registered: LRU
    for chunk in sequence:
        lru.get(chunk, lambda: np.zeros(1, np.uint8))
    # An image chunk and its mask chunk are read by the same batches: two decodes per unit.
    return 2 * optimal_decodes(sequence, capacity), 2 * lru.stats().misses


def unavoidable_ms(path: Path, images: int) -> tuple[float, float, float]:
    """Per sample: decoding every chunk once, augmenting once, one copy (ms each)."""
    sources = [H5Source(str(path), key) for key in ("image", "mask")]
    start = time.process_time()
    for source in sources:
        for number in range(images // CHUNK):
            source.read_chunk(number)
    decode = (time.process_time() - start) / images
    with h5py.File(path) as file:
        x, y = file["image"][0], file["mask"][0]
    rounds = 20
    start = time.process_time()
    for i in range(rounds):
        image_random_transform(x, y, rng=np.random.default_rng([SEED, 0, i]), **AUGMENT)
    augment = (time.process_time() - start) / rounds
    out_x, out_y = np.empty_like(x), np.empty_like(y)
    start = time.process_time()
    for _ in range(rounds * 10):
        np.copyto(out_x, x)
        np.copyto(out_y, y)
    copy = (time.process_time() - start) / (rounds * 10)
    return decode * 1e3, augment * 1e3, copy * 1e3


class _H5Augmented:
    """torch Dataset over h5py: read one sample, augment it as the node does."""

    def __init__(self, path: str, images: int) -> None:
        self.path, self.images, self.file = path, images, None

    def __len__(self) -> int:
        return self.images

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self.file is None:
            self.file = h5py.File(self.path, "r")  # opened in each worker
        x, y = self.file["image"][index], self.file["mask"][index]
        rng = np.random.default_rng([SEED, 0, index])
        return image_random_transform(x, y, rng=rng, **AUGMENT)


def torch_rate(path: Path, images: int, epochs: int) -> float | None:
    try:
        import torch.utils.data
    except ImportError:
        return None
    loader = torch.utils.data.DataLoader(
        _H5Augmented(str(path), images), batch_size=BATCH, shuffle=True, num_workers=2
    )
    start = time.perf_counter()
    samples = sum(len(batch[0]) for _ in range(epochs) for batch in loader)
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 images of 1x64x64")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--cache-fraction", type=float, default=0.25)
    parser.add_argument(
        "--checkout-python",
        help="the Python of an older checkout (its .venv/bin/python): today's node measured "
        "for real, in a process of its own, and the base of 'x today'",
    )
    args = parser.parse_args()
    images, size = (512, 64) if args.quick else (args.images, args.size)
    images -= images % CHUNK
    decoded = images * size * size * 5
    cache_bytes = int(decoded * args.cache_fraction)
    chunks = 2 * images // CHUNK
    root = Path(tempfile.mkdtemp(prefix="bench_large_"))
    try:
        (root / "data").mkdir()
        path = root / "data" / "large.h5"
        make_data(path, images, size)
        print(
            f"{images} images 1x{size}x{size} float32 + uint8 masks, gzip, chunks of {CHUNK}: "
            f"{decoded / MiB:.0f} MiB decoded in {chunks} chunks, stored "
            f"{path.stat().st_size / MiB:.0f} MiB; cache {cache_bytes / MiB:.0f} MiB "
            f"({args.cache_fraction:.0%}); {args.epochs} epoch(s), batches of {BATCH}, "
            "augmented on every pool worker. Shared machine: figures are noisy."
        )
        results: dict[str, dict[str, float]] = {}
        if args.checkout_python:
            results["today (checkout)"] = measure_checkout(
                args.checkout_python, root, cache_bytes, args.epochs
            )
        with lru_only():
            results["exact/LRU (emulated)"] = measure(
                root, cache_bytes, args.epochs, chunks, nb_io_workers=1
            )
        results["exact/known-future"] = measure(root, cache_bytes, args.epochs, chunks)
        # Windows of half the samples the cache holds (whole chunks, at least one).
        window = max(CHUNK, cache_bytes // (size * size * 5) // 2 // CHUNK * CHUNK)
        results["windowed"] = measure(root, cache_bytes, args.epochs, chunks, shuffle_window=window)
        results["all-in-cache"] = measure(
            root, int(decoded * 1.2) + MiB, args.epochs, chunks, warm=True
        )
        rate = torch_rate(path, images, args.epochs)
        optimum, lru = offline_counts(path, images, cache_bytes)
        decode, augment, copy = unavoidable_ms(path, images)
        cold, warm = first_batches(root, cache_bytes)

        base = next(iter(results.values()))["samples/s"]  # today's
        print(
            f"\n{'mode':22} {'samples/s':>10} {'x today':>8} {'decodes/chunk/ep':>17} "
            f"{'node cpu/sample ms':>19} {'client cpu/sample ms':>21}"
        )
        for mode, figures in results.items():
            print(
                f"{mode:22} {figures['samples/s']:10.1f} {figures['samples/s'] / base:8.2f} "
                f"{figures['decodes/chunk/epoch']:17.2f} {figures['node cpu/sample ms']:19.2f} "
                f"{figures['client cpu/sample ms']:21.2f}"
            )
        if rate is not None:
            print(f"{'torch DataLoader(2)':22} {rate:10.1f} {rate / base:8.2f}")
        else:
            print("torch DataLoader: skipped (torch not installed)")
        known = results["exact/known-future"]["decodes/chunk/epoch"] * chunks
        print(
            f"\nexact order, one epoch: offline optimum {optimum} decodes, LRU {lru}; "
            f"known-future measured {known:.0f} ({known / optimum:.2f}x the optimum, "
            f"LRU/known-future {lru / max(known, 1):.2f}x)"
        )
        parts = decode + augment + copy
        for mode, figures in results.items():
            print(
                f"node cpu per sample, {mode}: {figures['node cpu/sample ms']:.2f} ms = "
                f"{figures['node cpu/sample ms'] / parts:.2f}x the sum of its parts "
                f"(decode {decode:.2f} + augment {augment:.2f} + copy {copy:.3f} ms)"
            )
        all_in = results["all-in-cache"]["samples/s"]
        known_rate = results["exact/known-future"]["samples/s"]
        print(f"known-future / all-in-cache rate: {known_rate / all_in:.2f}")
        print(f"windowed / all-in-cache rate: {results['windowed']['samples/s'] / all_in:.2f}")
        print(f"first batch: cold node {cold:.2f} s, warm node {warm:.2f} s (another seed)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

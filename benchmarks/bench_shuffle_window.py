"""Chunk-windowed shuffle (shuffle_window) against the exact permutation: locality vs shuffle.

For one epoch of each order (the exact permutation, then windows of several sizes), over a
dataset of NUM_SAMPLES samples stored in chunks of CHUNK samples, it reports:

* shuffle quality: how far a sample lands from its storage neighbour (sample ``i`` and
  ``i + 1``), as the median distance between their places in the epoch (in samples), and the
  share of storage neighbours that land in the same batch (a perfect shuffle: about
  BATCH / NUM_SAMPLES);
* read cost, simulated: chunk decodes per epoch when the epoch is read batch by batch
  through an LRU cache of decoded chunks holding a quarter of the dataset (what the node's
  ``ChunkCache`` does), and the same per chunk (1.0: each chunk decoded once);
* read cost, measured: the same epoch read by ``data_flow`` (one io thread) from a gzip HDF5
  file through a real ``ChunkCache`` of a quarter of the dataset: decodes (cache misses)
  and samples/s, and the speed-up over the exact permutation (same run).

Goal (issue 13 part 1): a window that fits the cache decodes each chunk about once per epoch
(<= 1.05 decodes per chunk), against about one decode per sample read for the exact
permutation over a dataset four times the cache. Timings on a shared machine are noisy;
decode counts are exact.

Run: ``python benchmarks/bench_shuffle_window.py`` (about a minute; ``--quick``: smaller).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import h5py
import numpy as np

from data_tools.chunk_cache import ChunkCache, cached
from data_tools.io import FlowSpec, data_flow, read_blocks
from data_tools.storage.hdf5 import H5Source
from data_tools.wrap import delayed_view

SEED = 5
BATCH = 32


def neighbour_stats(order: np.ndarray, batch: int) -> tuple[float, float]:
    """(median distance in the epoch between storage neighbours, share in the same batch)."""
    place = np.empty_like(order)
    place[order] = np.arange(len(order))
    distance = np.abs(np.diff(place))  # sample i and i + 1
    same_batch = (place[:-1] // batch) == (place[1:] // batch)
    return float(np.median(distance)), float(same_batch.mean())


def lru_decodes(order: np.ndarray, chunk: int, cache_chunks: int, batch: int) -> int:
    """Chunk decodes of reading ``order`` batch by batch through an LRU of ``cache_chunks``."""
    cache: OrderedDict[int, None] = OrderedDict()
    decodes = 0
    for start in range(0, len(order), batch):
        for number in np.unique(order[start : start + batch] // chunk).tolist():
            if number in cache:
                cache.move_to_end(number)
                continue
            decodes += 1
            cache[number] = None
            if len(cache) > cache_chunks:
                cache.popitem(last=False)
    return decodes


def measured(path: Path, window: int | None, cache_bytes: int) -> tuple[int, float, int]:
    """(decodes, samples/s, samples) of one epoch read by data_flow through a ChunkCache."""
    cache = ChunkCache(cache_bytes)
    source = delayed_view(cached(H5Source(path, "x"), cache))
    flow = data_flow(
        [source],
        BATCH,
        nb_io_workers=1,
        sample_random=True,
        seed=SEED,
        loop_forever=False,
        shuffle_window=window,
    )
    samples = 0
    start = time.perf_counter()
    with flow:
        for (batch,) in flow.flow():
            samples += len(batch)
    seconds = time.perf_counter() - start
    return cache.stats().misses, samples / seconds, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller dataset")
    args = parser.parse_args()
    num_samples, chunk, shape = (1024, 16, (1, 32, 32)) if args.quick else (4096, 32, (1, 64, 64))
    num_chunks = num_samples // chunk
    cache_chunks = num_chunks // 4
    sample_bytes = int(np.prod(shape)) * 4
    windows = [None, chunk * 2, cache_chunks * chunk // 4, cache_chunks * chunk // 2]
    windows.append(cache_chunks * chunk - 2 * chunk)

    print(
        f"{num_samples} samples of {shape} float32 in gzip chunks of {chunk} ({num_chunks} "
        f"chunks); batches of {BATCH}; cache: a quarter of the dataset ({cache_chunks} chunks)"
    )
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "data.h5"
        rng = np.random.default_rng(0)
        with h5py.File(path, "w") as f:
            f.create_dataset(
                "x",
                data=rng.random((num_samples, *shape), dtype=np.float32),
                chunks=(chunk, *shape),
                compression="gzip",
            )
        with h5py.File(path, "r") as f:
            blocks = read_blocks([f["x"]])
        header = (
            f"{'order':<16} {'median dist':>11} {'same batch':>10} {'LRU decodes':>11} "
            f"{'per chunk':>9} {'measured':>8} {'samples/s':>9} {'speed-up':>8}"
        )
        print(header)
        print("-" * len(header))
        base_rate = None
        for window in windows:
            spec = FlowSpec(
                num_samples,
                BATCH,
                SEED,
                sample_random=True,
                shuffle_window=window,
                read_blocks=blocks,
            )
            order = spec.epoch_order(0)
            distance, same = neighbour_stats(order, BATCH)
            decodes = lru_decodes(order, chunk, cache_chunks, BATCH)
            misses, rate, samples = measured(path, window, cache_chunks * chunk * sample_bytes)
            assert samples == num_samples
            base_rate = base_rate or rate
            name = "exact" if window is None else f"window {window}"
            print(
                f"{name:<16} {distance:>11.0f} {same:>10.3f} {decodes:>11d} "
                f"{decodes / num_chunks:>9.2f} {misses:>8d} {rate:>9.0f} "
                f"{rate / base_rate:>7.2f}x"
            )
    print(
        "median dist: places between storage neighbours in the epoch (a uniform permutation: "
        f"about {0.293 * num_samples:.0f}); same batch: share of storage neighbours in one batch (exact: "
        f"about {BATCH / num_samples:.3f}); measured: decodes of the real ChunkCache."
    )


if __name__ == "__main__":
    main()

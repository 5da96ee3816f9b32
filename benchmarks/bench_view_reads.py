"""Batches read through delayed_view against reading the same elements one at a time.

Data: 20,000 elements of 1x32x32 float32 (smooth images, so they compress), stored as a
chunked HDF5 dataset (chunks of 64 elements, lzf, as h5py_array_writer writes) and a
zarr v3 array (chunks of 64 elements, blosc lz4, as zarr_array_writer writes).
For each backend and access order (shuffled: delayed_view(shuffle=True); sequential:
delayed_view()) it times a fixed number of batches of 64 read as ``view[i:i + 64]``
against ``np.stack([source[j] for j in those indices])``, checks that both give the same
data, and prints both times and the ratio (baseline / view; the goal is >= 5 for the
shuffled case). Each measurement is the best of three interleaved rounds. One more,
informational row repeats the shuffled HDF5 case with a chunk cache (rdcc_nbytes) large
enough to hold the whole dataset, and one more reads it through the node's ChunkCache
(data_tools.chunk_cache), warmed, with a budget that holds the whole dataset.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from data_tools.chunk_cache import ChunkCache, cached
from data_tools.storage.hdf5 import H5Source
from data_tools.wrap import delayed_view

NUM_ELEMENTS = 20_000
ELEMENT_SHAPE = (1, 32, 32)
CHUNK = 64
BATCH = 64
NUM_BATCHES = {"hdf5": 150, "zarr": 40}
ROUNDS = 3


def make_data(rng):
    """Smooth 32x32 images quantized to 1/64: realistic enough to compress."""
    coarse = rng.standard_normal((NUM_ELEMENTS, 1, 4, 4)).astype(np.float32)
    images = coarse.repeat(8, axis=2).repeat(8, axis=3)
    images += 0.05 * rng.standard_normal(images.shape).astype(np.float32)
    return np.round(images * 64) / 64


def write_sources(root, data):
    h5_path = root / "data.h5"
    with h5py.File(h5_path, "w") as handle:
        handle.create_dataset("data", data=data, chunks=(CHUNK, *ELEMENT_SHAPE), compression="lzf")
    zarr_path = str(root / "data.zarr")
    array = zarr.create_array(
        store=zarr_path,
        shape=data.shape,
        dtype=data.dtype,
        chunks=(CHUNK, *ELEMENT_SHAPE),
        compressors=BloscCodec(cname="lz4", clevel=5),
    )
    array[...] = data
    return h5_path, zarr_path


def time_batches(read_batch, num_batches):
    start = time.perf_counter()
    for b in range(num_batches):
        read_batch(b)
    return time.perf_counter() - start


def compare(name, source, shuffle, num_batches):
    view = delayed_view(source)
    if shuffle:
        view.shuffle(0)
    order = view.index_pairs[:, 1]

    def through_view(b):
        return view[b * BATCH : (b + 1) * BATCH]

    def one_at_a_time(b):
        return np.stack([source[int(i)] for i in order[b * BATCH : (b + 1) * BATCH]])

    for b in (0, num_batches - 1):
        np.testing.assert_array_equal(through_view(b), one_at_a_time(b))
    best_view = best_base = float("inf")
    for _ in range(ROUNDS):
        best_base = min(best_base, time_batches(one_at_a_time, num_batches))
        best_view = min(best_view, time_batches(through_view, num_batches))
    per = 1e3 / num_batches
    print(
        f"{name:<10} {'shuffled' if shuffle else 'sequential':<11} {num_batches:>4} batches  "
        f"one-at-a-time {best_base * per:8.2f} ms/batch  delayed_view {best_view * per:8.2f} "
        f"ms/batch  ratio {best_base / best_view:6.2f}x"
    )
    return best_base / best_view


def main():
    root = Path(tempfile.mkdtemp(prefix="bench_view_reads_"))
    try:
        data = make_data(np.random.default_rng(0))
        h5_path, zarr_path = write_sources(root, data)
        sizes = {
            "hdf5": h5_path.stat().st_size,
            "zarr": sum(p.stat().st_size for p in Path(zarr_path).rglob("*") if p.is_file()),
        }
        print(
            f"{NUM_ELEMENTS} elements of {ELEMENT_SHAPE} float32 ({data.nbytes / 2**20:.0f} MiB), "
            f"chunks of {CHUNK}, batches of {BATCH}; on disk: "
            + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in sizes.items())
        )
        ratios = {}
        with h5py.File(h5_path, "r") as handle:
            for shuffle in (True, False):
                ratios["hdf5", shuffle] = compare(
                    "hdf5", handle["data"], shuffle, NUM_BATCHES["hdf5"]
                )
        # Informational: with an HDF5 chunk cache that holds the whole dataset, chunks are
        # decoded once rather than once per batch; what is left is per-call overhead.
        cache = 2 * data.nbytes
        with h5py.File(h5_path, "r", rdcc_nbytes=cache, rdcc_nslots=100_003) as handle:
            handle["data"][...]
            compare("hdf5+rdcc", handle["data"], True, NUM_BATCHES["hdf5"])
        # Informational: the node's shared ChunkCache over the same file, warmed: a hit is a
        # copy out of a decoded chunk, with no HDF5 call at all.
        source = cached(H5Source(h5_path, "data"), ChunkCache(cache))
        source[...]
        compare("hdf5+cache", source, True, NUM_BATCHES["hdf5"])
        array = zarr.open_array(zarr_path, mode="r")
        for shuffle in (True, False):
            ratios["zarr", shuffle] = compare("zarr", array, shuffle, NUM_BATCHES["zarr"])
        for backend in ("hdf5", "zarr"):
            ratio = ratios[backend, True]
            verdict = "meets" if ratio >= 5 else "misses"
            print(f"{backend}: shuffled ratio {ratio:.2f}x {verdict} the >= 5x goal")
    finally:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""h5py_array_writer fed random-size pieces against one bulk h5py write of the same array.

About 1 GiB (65,536 elements of 1x64x64 float32 holding 0..255 image-like values) goes
once through h5py_array_writer(batch_size=256) in pieces of 1..300 elements, and once
into a dataset with the same chunks (256, 1, 64, 64), lzf compression and maxshape in a
single assignment. Each way is timed from file creation to close (wall and CPU time),
best of ROUNDS interleaved runs.
Goal: bulk_time / writer_time >= 0.9.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from data_tools.io import h5py_array_writer, is_complete

NUM_ELEMENTS = 65_536
ELEMENT_SHAPE = (1, 64, 64)
BATCH_SIZE = 256
ROUNDS = 3


def bulk_write(path: Path, data: np.ndarray) -> None:
    with h5py.File(path, "w") as file:
        dataset = file.create_dataset(
            "x",
            shape=data.shape,
            maxshape=(None, *ELEMENT_SHAPE),
            dtype=data.dtype,
            chunks=(BATCH_SIZE, *ELEMENT_SHAPE),
            compression="lzf",
        )
        dataset[...] = data


def writer_write(path: Path, data: np.ndarray, sizes: np.ndarray) -> None:
    with h5py_array_writer(ELEMENT_SHAPE, data.dtype, BATCH_SIZE, path, "x") as writer:
        start = 0
        for size in sizes:
            writer.buffered_write(data[start : start + size])
            start += size


def timed(action, path: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of ``action``, started with no dirty pages from an earlier run."""
    path.unlink(missing_ok=True)
    os.sync()
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (NUM_ELEMENTS, *ELEMENT_SHAPE), dtype=np.uint8).astype(np.float32)
    cuts = np.cumsum(rng.integers(1, 301, NUM_ELEMENTS))
    cuts = cuts[cuts < NUM_ELEMENTS]
    sizes = np.diff(np.concatenate([[0], cuts, [NUM_ELEMENTS]]))
    gib = data.nbytes / 2**30
    print(f"{gib:.2f} GiB, {NUM_ELEMENTS} elements of {ELEMENT_SHAPE} float32")
    print(f"writer: {len(sizes)} pieces of 1..300 elements, batch_size {BATCH_SIZE}")
    with tempfile.TemporaryDirectory(prefix="bench_writer_") as tmp:
        bulk_path, writer_path = Path(tmp) / "bulk.h5", Path(tmp) / "writer.h5"
        bulk_runs, writer_runs = [], []
        for _ in range(ROUNDS):
            bulk_runs.append(timed(lambda: bulk_write(bulk_path, data), bulk_path))
            writer_runs.append(timed(lambda: writer_write(writer_path, data, sizes), writer_path))
        with h5py.File(writer_path, "r") as file:
            assert file["x"].shape == data.shape
            assert np.array_equal(file["x"][-1000:], data[-1000:])
        assert is_complete(writer_path, "x")
    for label, index in (("wall", 0), ("CPU", 1)):
        bulk = min(run[index] for run in bulk_runs)
        written = min(run[index] for run in writer_runs)
        print(
            f"{label:>4}: bulk h5py write {bulk:6.2f} s ({gib / bulk:4.2f} GiB/s), "
            f"h5py_array_writer {written:6.2f} s ({gib / written:4.2f} GiB/s), "
            f"ratio bulk/writer = {bulk / written:.2f}  (goal >= 0.9)"
        )


if __name__ == "__main__":
    main()

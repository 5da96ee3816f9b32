"""Child process for the SIGKILL test of test_writers: writes forever until killed.

Usage: python _writer_kill_child.py {hdf5,zarr,bcolz} PATH {new,append}

Prints "flushed" once data has reached the storage, then keeps writing random-size
pieces. It exits on its own (without closing the writer) after 60 s, so a lost
parent never leaves it running.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from data_tools.io import bcolz_array_writer, h5py_array_writer, zarr_array_writer

SHAPE = (4, 4)
BATCH = 16


def main() -> None:
    backend, path, mode = sys.argv[1:]
    append = mode == "append"
    if backend == "hdf5":
        writer = h5py_array_writer(SHAPE, "float32", BATCH, path, "x", append=append)
    elif backend == "zarr":
        writer = zarr_array_writer(SHAPE, "float32", BATCH, path, "x", append=append)
    else:
        writer = bcolz_array_writer(SHAPE, "float32", BATCH, path, append=append)
    rng = np.random.default_rng(0)
    writer.buffered_write(np.ones((3 * BATCH, *SHAPE), dtype="float32"))
    writer.flush_buffer()
    print("flushed", flush=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        writer.buffered_write(rng.random((int(rng.integers(1, 40)), *SHAPE), dtype="float32"))
    os._exit(3)


if __name__ == "__main__":
    main()

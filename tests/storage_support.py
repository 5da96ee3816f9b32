"""Functions the storage tests run in spawned processes (importable there, on the tests/ path)."""

from __future__ import annotations

import sys

import numpy as np

from data_tools import storage

ROWS = [0, 2, 3, 7, 9]


def read_everything(source, length):
    """Every row of ``source``, and rows ``ROWS`` read by its backend (``storage.read_rows``)."""
    rows = np.array(ROWS, dtype=np.intp)
    return np.asarray(source[0:length]), np.asarray(storage.read_rows(source, rows))


def format_libraries_loaded(batch):
    """A preprocessor: the batch, and per element whether zarr or bcolz is imported here."""
    (x,) = batch
    loaded = [name in sys.modules for name in ("zarr", "bcolz")]
    return x, np.tile(np.array(loaded, dtype=np.uint8), (len(x), 1))


def store_rows(file_format, container, start, rows):
    """Write ``rows`` at ``start`` of array "x" of ``container``, as one parallel writer."""
    storage.backend(file_format).open_rows(container, "x").store(start, rows)

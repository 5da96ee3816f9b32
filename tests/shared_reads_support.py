"""Sources and preprocessors for the shared-reads tests, importable by spawned worker processes."""

from __future__ import annotations

import numpy as np


def noise_in_place(batch, rng):
    """Add gaussian noise to the first array and double the second, both in place."""
    x, y = batch
    x += rng.normal(size=x.shape)
    y *= 2
    return x, y


def vary_size(batch, rng):
    """Repeat the first array 1 to 4 times along axis 1 (a random count): results vary in size."""
    x, y = batch
    return np.concatenate([x] * int(rng.integers(1, 5)), axis=1), y


class CorruptChunkError(OSError):
    """What ParentOnlySource raises for its bad row."""


class ParentOnlySource:
    """An array-like that cannot leave this process (pickling it raises) and fails one row.

    Reading a batch that holds ``bad_row`` raises CorruptChunkError.
    """

    def __init__(self, array, bad_row=None):
        self.array = np.asarray(array)
        self.shape = self.array.shape
        self.dtype = self.array.dtype
        self.bad_row = bad_row

    def __len__(self):
        return len(self.array)

    def __getitem__(self, key):
        rows = np.arange(len(self.array))[key[0] if isinstance(key, tuple) else key]
        if self.bad_row is not None and np.any(rows == self.bad_row):
            raise CorruptChunkError(f"cannot decode row {self.bad_row}")
        return self.array[key]

    def __reduce__(self):
        raise TypeError("ParentOnlySource must never be pickled")


class NoDtype:
    """A picklable array-like without ``dtype``: data_flow cannot estimate its batch bytes."""

    def __init__(self, array):
        self.array = np.asarray(array)
        self.shape = self.array.shape

    def __len__(self):
        return len(self.array)

    def __getitem__(self, key):
        return self.array[key]

"""Slow steps with known durations, importable by spawned worker processes (metrics tests)."""

from __future__ import annotations

import time

import numpy as np

# Long enough that a pass-through step, timed beside it, stays far below it even when a
# loaded machine pauses the thread for a few time slices.
DELAY = 0.1


class SlowSource:
    """A read-only array that takes at least DELAY seconds per read."""

    def __init__(self, array):
        self._array = np.asarray(array)
        self.shape = self._array.shape
        self.dtype = self._array.dtype

    def __len__(self):
        return len(self._array)

    def __getitem__(self, key):
        time.sleep(DELAY)
        return self._array[key]


def slow_preprocessor(batch):
    """Pass the batch through after DELAY seconds."""
    time.sleep(DELAY)
    return tuple(batch)

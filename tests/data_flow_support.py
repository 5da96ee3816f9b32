"""Preprocessors for the data_flow tests, importable by spawned worker processes.

Test modules are imported under names that a spawned child cannot import, so anything a
worker process must unpickle lives here, on the tests/ path.
"""

from __future__ import annotations

import threading

import numpy as np


def augment(batch, rng):
    """A random augmentation: noise drawn from the batch's generator, and a random flip."""
    x, y = batch
    x = x + rng.normal(size=x.shape)
    if rng.random() < 0.5:
        x = x[:, ::-1]
    return x, y


def divide_by_255(batch):
    """The reference README's preprocessor (in place, no rng)."""
    b0, b1 = batch
    b0 /= 255.0
    return b0, b1


def fail_if_contains(batch, value):
    """Raise ValueError on the batch whose second array holds ``value``."""
    if np.any(batch[1] == value):
        raise ValueError(f"refusing a batch that holds {value}")
    return batch


class UnrebuildableError(Exception):
    """Pickles, but cannot be unpickled: its __init__ needs two arguments."""

    def __init__(self, first, second):
        super().__init__(f"{first} and {second}")


def raise_unrebuildable(batch):
    raise UnrebuildableError("left", "right")


def grow(batch):
    """Return more bytes than were read: float64 copies, three times over."""
    x, y = batch
    return np.concatenate([x.astype(np.float64)] * 3, axis=1), y


def as_objects(batch):
    """Return the first array as an array of Python objects (which cannot be shared)."""
    return (batch[0].astype(object),)


def unpicklable_result(batch):
    """Return Python objects that cannot travel back from a worker process."""
    return (np.array([threading.Lock() for _ in batch[0]], dtype=object),)


class Unpicklable:
    """An array-like that cannot be sent to a worker process."""

    def __init__(self, array):
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.lock = threading.Lock()

    def __len__(self):
        return len(self.array)

    def __getitem__(self, key):
        return self.array[key]


def tag_position(batch, *, epoch, indices):
    """Append each row's epoch and global index as a third array (per-sample randomness uses these)."""
    x, y = batch
    return x, y, np.stack([np.full(len(indices), epoch), indices], axis=1)


def add_noise(batch, rng):
    """A chain stage drawing from the batch's generator: noise added to the first array."""
    image, *rest = batch
    return (image + rng.standard_normal(image.shape).astype(image.dtype), *rest)


def tag_epoch(batch, *, epoch):
    """A chain stage taking the epoch keyword: the epoch added to the first array."""
    image, *rest = batch
    return (image + epoch, *rest)


def count_loaded_modules(batch):
    """A last stage: appends (data_node modules, data_tools modules) loaded in this process."""
    import sys

    roots = [name.split(".")[0] for name in sys.modules]
    counts = [roots.count("data_node"), roots.count("data_tools")]
    return (*batch, np.array([counts] * len(batch[0]), dtype=np.int64))

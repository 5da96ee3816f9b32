"""The in-memory storage backend: numpy arrays, and ``.npy`` files opened memory-mapped.

An in-memory array is its own picklable description (a pickled copy reaches a worker
process). ``open`` maps a ``.npy`` file read-only, confined to a root like every other
format's files. ``BACKEND`` is the format's ``StorageBackend``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from data_tools.storage.base import StorageBackend
from data_tools.storage.confine import fd_path, open_confined

if TYPE_CHECKING:
    from pathlib import Path

    import numpy.typing as npt

    from data_tools.storage.confine import Root

__all__ = ["BACKEND", "NumpyBackend"]


class NumpyBackend(StorageBackend):
    """numpy arrays: rows read by numpy indexing, no storage chunks, nothing to decode."""

    name = "numpy"

    def open(self, path: Path, key: str | None, root: Root | None) -> npt.NDArray[Any]:
        """Map the ``.npy`` file at ``path`` read-only (``key`` is ignored)."""
        if root is None:
            return np.asarray(np.load(path, mmap_mode="r", allow_pickle=False))
        fd = open_confined(root, path)
        try:
            # numpy maps the verified descriptor itself (its magic link), not the path.
            return np.asarray(np.load(fd_path(fd), mmap_mode="r", allow_pickle=False))
        finally:
            os.close(fd)  # the map keeps the file

    def take(self, source: Any, indices: npt.NDArray[np.intp]) -> npt.NDArray[Any]:
        return np.asarray(np.take(source, indices, axis=0))


BACKEND = NumpyBackend()

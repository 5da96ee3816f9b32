"""Picklable, read-only stand-ins for array sources that hold open file handles."""

from __future__ import annotations

import os
import threading
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from data_tools.errors import SourceChangedError

__all__ = ["H5Source", "as_picklable"]


class H5Source:
    """A read-only HDF5 dataset described by its file name and key, safe to pickle.

    An ``h5py.Dataset`` cannot be pickled, and a handle inherited across ``fork`` shares
    HDF5 library state with the parent. An ``H5Source`` instead opens the file itself, in
    mode ``"r"``, on first use, and caches the handle per process: a process that did not
    open the cached handle (a forked child, or anything that unpickled the source) opens
    its own, as fsspec's ``_Cached`` does with its pid check. Pickling drops the handle.

    Indexing delegates to the dataset, so it accepts whatever ``h5py.Dataset`` accepts.

    Args:
        filename: Path of the HDF5 file.
        key: Path of the dataset inside the file (for example ``"/images"``).

    Raises:
        TypeError: On first use, if ``key`` names a group rather than a dataset.
        FileNotFoundError, OSError, KeyError: On first use, from h5py, if the file or the
            key does not exist.
    """

    def __init__(self, filename: str | os.PathLike[str], key: str) -> None:
        self.filename = os.fspath(filename)
        self.key = key
        self._init_handle_state()

    def _init_handle_state(self) -> None:
        self._lock = threading.Lock()
        self._file: Any = None
        self._dataset: Any = None
        self._pid: int | None = None
        self._meta: tuple[tuple[int, ...], np.dtype[Any]] | None = None
        self._stamp: tuple[int, ...] | None = None

    def __repr__(self) -> str:
        return f"H5Source({self.filename!r}, {self.key!r})"

    def _get_dataset(self) -> Any:
        """Return this process's dataset handle, opening the file if needed."""
        pid = os.getpid()
        if self._dataset is not None and self._pid == pid:
            return self._dataset
        with self._lock:
            if self._dataset is None or self._pid != pid:
                # A handle from another process is dropped, never closed: closing it
                # here could flush or invalidate state the other process still uses.
                self._stamp = _file_stamp(self.filename)
                handle = h5py.File(self.filename, "r")
                dataset = handle[self.key]
                if not isinstance(dataset, h5py.Dataset):
                    handle.close()
                    raise TypeError(
                        f"Expected key to name an HDF5 dataset in {self.filename!r}. "
                        f"Got {self.key!r}, a {type(dataset).__name__}, instead."
                    )
                self._file, self._dataset, self._pid = handle, dataset, pid
                self._meta = (tuple(dataset.shape), dataset.dtype)
            return self._dataset

    def _get_meta(self) -> tuple[tuple[int, ...], np.dtype[Any]]:
        if self._meta is None:
            self._get_dataset()
        assert self._meta is not None
        return self._meta

    @property
    def shape(self) -> tuple[int, ...]:
        """The dataset's shape."""
        return self._get_meta()[0]

    @property
    def dtype(self) -> np.dtype[Any]:
        """The dataset's dtype."""
        return self._get_meta()[1]

    @property
    def ndim(self) -> int:
        """The dataset's number of dimensions."""
        return len(self.shape)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of unsized object (a scalar HDF5 dataset)")
        return self.shape[0]

    def __getitem__(self, key: Any) -> Any:
        data = self._get_dataset()[key]
        self._check_unchanged()
        return data

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> npt.NDArray[Any]:
        if copy is False:
            raise ValueError("An HDF5 read makes a new array; copy=False cannot be honoured.")
        data = np.asarray(self[()])
        return data if dtype is None else data.astype(dtype, copy=False)

    def _check_unchanged(self) -> None:
        """Raise if the file was replaced, resized, rewritten or deleted since it was opened.

        HDF5 reads a truncated or overwritten file's uncompressed data as zeros or garbage
        without an error, so a read is trusted only if the file is still the one opened.
        """
        try:
            now: tuple[int, ...] | None = _file_stamp(self.filename)
        except FileNotFoundError:
            now = None
        if now != self._stamp:
            with self._lock:
                # Dropped, not closed: another thread may be reading through it.
                self._file = self._dataset = self._pid = None
            change = "was deleted" if now is None else "changed"
            raise SourceChangedError(
                f"HDF5 file {self.filename!r} {change} while open; the data read from it "
                "cannot be trusted. Restore the file, or restart the reader."
            )

    def close(self) -> None:
        """Close this process's handle, if open; the next read reopens the file."""
        with self._lock:
            if self._file is not None and self._pid == os.getpid():
                self._file.close()
            self._file = self._dataset = self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        return {"filename": self.filename, "key": self.key, "meta": self._meta}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.filename = state["filename"]
        self.key = state["key"]
        self._init_handle_state()
        self._meta = state["meta"]


def _file_stamp(path: str) -> tuple[int, ...]:
    """What identifies a file's content cheaply: device, inode, size, modification time."""
    stat = os.stat(path)
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def as_picklable(arr: Any) -> Any:
    """Return a picklable equivalent of a source array.

    An ``h5py.Dataset`` becomes ``H5Source(arr.file.filename, arr.name)``; anything else
    (numpy arrays, zarr arrays, which pickle in zarr v3, ``H5Source``, views) is returned
    unchanged.

    Args:
        arr: The source array.

    Returns:
        ``arr`` itself, or an ``H5Source`` describing it.
    """
    if isinstance(arr, h5py.Dataset):
        return H5Source(arr.file.filename, arr.name)
    return arr

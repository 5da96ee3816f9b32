"""Picklable, read-only stand-ins for array sources that hold open file handles."""

from __future__ import annotations

import math
import os
import threading
import zlib
from dataclasses import dataclass
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
    ``read_chunk`` reads one storage chunk, decoding gzip chunks outside the GIL.

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
        self._meta: _Meta | None = None
        self._stamp: tuple[int, ...] | None = None
        # The dataset handle the plan was made for, and how read_chunk decodes its chunks.
        self._plan: tuple[Any, _InflatePlan | None] | None = None

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
                chunks = None if dataset.chunks is None else tuple(dataset.chunks)
                self._meta = (tuple(dataset.shape), dataset.dtype, chunks)
            return self._dataset

    def _get_meta(self) -> _Meta:
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
    def chunks(self) -> tuple[int, ...] | None:
        """The dataset's storage chunk shape, or None if it is not chunked."""
        return self._get_meta()[2]

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

    def read_chunk(self, number: int) -> npt.NDArray[Any]:
        """Read the rows of storage chunk ``number`` along the first axis.

        The rows are ``[number * chunks[0], (number + 1) * chunks[0])``, fewer in the last
        chunk. A chunk that spans every later axis whole, stored gzip-compressed (deflate,
        after shuffle or not) with no filter skipped, is read raw (only that I/O holds h5py's
        global lock and the GIL) and decompressed by ``zlib``, which releases the GIL, so
        threads reading different chunks decode them in parallel. Any other chunk (other
        filters such as lzf or fletcher32, chunks split along a later axis, a chunk never
        written, which reads as the fill value) is read through h5py. Both give the same
        array, bit for bit, with the dataset's dtype (big-endian included).

        Args:
            number: The chunk's position along the first axis, from 0.

        Returns:
            The chunk's rows; the array may be read-only.

        Raises:
            TypeError: The dataset is not chunked.
            IndexError: No chunk has that number.
            OSError: The chunk cannot be decoded (a corrupt or truncated file); the message
                names the file, the dataset and the chunk.
            SourceChangedError: The file changed or was deleted since it was opened.
        """
        dataset = self._get_dataset()
        shape, _, chunks = self._get_meta()
        if chunks is None:
            raise TypeError(f"HDF5 dataset {self.key!r} in {self.filename!r} is not chunked.")
        start = number * chunks[0]
        if not 0 <= start < shape[0]:
            raise IndexError(f"chunk {number} is out of range for HDF5 dataset {self.key!r}")
        stop = min(start + chunks[0], shape[0])
        plan = self._plan
        if plan is None or plan[0] is not dataset:
            plan = self._plan = (dataset, _inflate_plan(dataset))
        data = None if plan[1] is None else self._inflate(dataset, plan[1], number, start, stop)
        if data is None:
            data = dataset[start:stop]
        self._check_unchanged()
        return data

    def _inflate(
        self, dataset: Any, plan: _InflatePlan, number: int, start: int, stop: int
    ) -> npt.NDArray[Any] | None:
        """The chunk at row ``start`` read raw and decompressed, or None to read it via h5py."""
        offset = (start,) + (0,) * (len(plan.chunks) - 1)
        if dataset.id.get_chunk_info_by_coord(offset).byte_offset is None:
            return None  # never written: h5py reads it as the fill value
        filter_mask, raw = dataset.id.read_direct_chunk(offset)
        if filter_mask:
            return None  # a filter was skipped when this chunk was written
        try:
            return _decode(raw, plan)[: stop - start]
        except zlib.error as error:
            raise OSError(
                f"Can't read chunk {number} (rows {start} to {stop - 1}) of HDF5 dataset "
                f"{self.key!r} in {self.filename!r}: filter returned failure during read "
                f"(zlib: {error})"
            ) from error

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


_Meta = tuple[tuple[int, ...], np.dtype[Any], tuple[int, ...] | None]  # shape, dtype, chunks


@dataclass(frozen=True)
class _InflatePlan:
    """How ``H5Source.read_chunk`` decodes a dataset's chunks itself: zlib, then unshuffle."""

    chunks: tuple[int, ...]
    dtype: np.dtype[Any]
    shuffled: bool


def _inflate_plan(dataset: Any) -> _InflatePlan | None:
    """The plan for ``dataset``, or None if h5py must decode its chunks.

    Chunks are decoded here only if each spans every later axis whole, the dtype is a
    plain number (or bool), and the filters are exactly deflate or shuffle then deflate.
    """
    chunks, dtype = dataset.chunks, dataset.dtype
    if chunks is None or chunks[1:] != dataset.shape[1:] or dtype.kind not in "biuf":
        return None
    plist = dataset.id.get_create_plist()
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    codes = tuple(code for code, *_ in filters)
    shuffle, deflate = h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_DEFLATE
    if codes == (deflate,):
        return _InflatePlan(tuple(chunks), dtype, shuffled=False)
    # Shuffle's one parameter is the element size it shuffled by.
    if codes == (shuffle, deflate) and tuple(filters[0][2]) == (dtype.itemsize,):
        return _InflatePlan(tuple(chunks), dtype, shuffled=True)
    return None


def _decode(raw: bytes, plan: _InflatePlan) -> npt.NDArray[Any]:
    """A whole chunk from its stored bytes; zlib.error if they do not decompress to it."""
    nbytes = plan.dtype.itemsize * math.prod(plan.chunks)
    decoded = zlib.decompress(raw, bufsize=nbytes)  # releases the GIL while it inflates
    if len(decoded) != nbytes:
        raise zlib.error(f"{len(decoded)} bytes decompressed, {nbytes} expected")
    data = np.frombuffer(decoded, np.uint8)
    if plan.shuffled:  # shuffle stored byte 0 of every element, then byte 1, ...
        data = np.ascontiguousarray(data.reshape(plan.dtype.itemsize, -1).T).reshape(-1)
    return data.view(plan.dtype).reshape(plan.chunks)


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

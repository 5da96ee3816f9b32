"""Buffered array writers: batch-wise writes to numpy, HDF5, zarr and bcolz arrays.

Data passed to ``buffered_write`` in pieces of any size is collected in a buffer of
``batch_size`` elements; whole batches go to the storage array (for HDF5 and zarr,
one chunk each), so the stored array always equals the concatenation of the pieces.

Completion marker. A file writer never leaves an array that looks complete unless it
was closed cleanly. Each HDF5 dataset, zarr array and bcolz carray it writes carries
the attribute ``data_tools_complete``: the writer sets it to ``False`` (and persists
that) before writing anything, and to ``True`` as the very last step of ``close()``.
``is_complete(path, array_name)`` is the check readers use. Consequently:

- a process killed mid-write (SIGKILL) leaves the flag ``False``, or a file that
  cannot be opened at all; ``is_complete`` is ``False`` either way;
- an exception inside a ``with`` block flushes nothing more and closes the storage
  without setting the flag; the partial data stays on disk, unmarked (it is not
  deleted: when appending, the array holds data from earlier, complete runs);
- a writer that is garbage collected without ``close()`` flushes its buffer (as the
  reference says) but is not marked complete: it may be the debris of an exception;
- appending to a complete array clears its flag until that writer closes.

A per-array flag was chosen over writing to ``<name>.partial`` and renaming in
``close()`` because several writers may fill different arrays of one HDF5 file or
zarr store at the same time (``patches.create_dataset`` writes one array per class),
and because appending to an existing array cannot rename anything. A flag works the
same for every backend, for one or many arrays per file, and for appends.

Several arrays in one file: open the first writer with ``append=False`` (which
creates, and truncates, the HDF5 file or zarr store) and the others with
``append=True``; they may stay open together in one process.

Writers are not thread-safe; use one writer per thread.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Self

import h5py
import numpy as np

from data_tools._chunk_checks import COMPLETE_ATTRIBUTE
from data_tools._parse import (
    parse_bool,
    parse_dtype,
    parse_non_negative_int,
    parse_path,
    parse_positive_int,
    parse_shape,
)
from data_tools.errors import WriterClosedError, WriterError, WriterOverflowError

if TYPE_CHECKING:
    from types import TracebackType

    import numpy.typing as npt

__all__ = [
    "bcolz_array_writer",
    "buffered_array_writer",
    "h5py_array_writer",
    "is_complete",
    "zarr_array_writer",
]

_log = logging.getLogger(__name__)


def _parse_element_args(
    data_element_shape: Any, dtype: Any, batch_size: Any, length: Any
) -> tuple[tuple[int, ...], np.dtype[Any], int, int | None]:
    shape = parse_shape("data_element_shape", data_element_shape)
    dtype_ = parse_dtype("dtype", dtype)
    batch = parse_positive_int("batch_size", batch_size)
    limit = None if length is None else parse_non_negative_int("length", length)
    return shape, dtype_, batch, limit


def _parse_array_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip("/"):
        raise TypeError(f"Expected array_name to be a non-empty string. Got {value!r} instead.")
    return value


def _parse_kwargs(value: Any, reserved: frozenset[str]) -> dict[str, Any]:
    """Return a copy of ``value`` (None means {}) after refusing keys the writer sets."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"Expected kwargs to be a dict or None. Got {value!r} instead.")
    clash = sorted(reserved.intersection(value))
    if clash:
        raise ValueError(
            f"Expected kwargs without the keys the writer sets itself ({sorted(reserved)}). "
            f"Got {clash} instead."
        )
    return dict(value)


def _check_existing(kind: str, array: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
    """Refuse to append to an array whose element shape or dtype differs."""
    if tuple(array.shape[1:]) != shape:
        raise ValueError(
            f"Expected data_element_shape to match the existing {kind}'s element shape "
            f"{tuple(array.shape[1:])}. Got {shape} instead."
        )
    if np.dtype(array.dtype) != dtype:
        raise TypeError(
            f"Expected dtype to match the existing {kind}'s dtype {np.dtype(array.dtype)}. "
            f"Got {dtype} instead."
        )


def _storage_capacity(storage: Any) -> int | None:
    """Most elements ``storage`` can hold: its length, its maxshape, or None (unbounded)."""
    if isinstance(storage, np.ndarray) or not callable(getattr(storage, "resize", None)):
        return int(storage.shape[0])
    maxshape = getattr(storage, "maxshape", None)
    return None if maxshape is None or maxshape[0] is None else int(maxshape[0])


def _h5py_dataset(
    file: h5py.File,
    name: str,
    appending: bool,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    options: dict[str, Any],
) -> h5py.Dataset:
    """Return the dataset to continue (appending, when it exists) or a new, empty one."""
    dataset = file.get(name) if appending else None
    if dataset is None:
        return file.create_dataset(
            name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, **options
        )
    if not isinstance(dataset, h5py.Dataset):
        raise TypeError(f"Expected array_name to name a dataset in {file.filename}. Got a group.")
    _check_existing("HDF5 dataset", dataset, shape, dtype)
    return dataset


class buffered_array_writer:
    """Writes data given in pieces of any size to an array, one batch at a time.

    Data is collected in a buffer of ``batch_size`` elements; whenever the buffer is
    full, it is written to ``storage_array``. A piece that spans several batches is
    written in one call, without passing through the buffer. The buffer is flushed
    when it is full, on ``flush_buffer()``, on ``close()``, on leaving a ``with`` block
    without an exception, and when the writer is garbage collected.

    Writing starts at index 0 of ``storage_array``. A storage array with a ``resize``
    method that takes a shape (h5py datasets, zarr arrays) is grown as needed, up to
    its maxshape; any other array (a numpy array) must already be long enough.

    Args:
        storage_array: The array to write into (numpy array, h5py dataset, zarr array
            or anything that supports slice assignment along axis 0).
        data_element_shape: Shape of one element (an int or a sequence of ints >= 0).
        dtype: numpy dtype of the elements. Written data must cast to it under numpy's
            ``same_kind`` rule (float64 -> float32 is accepted, float -> int is not).
        batch_size: Number of elements per write to the storage array (>= 1).
        length: The most elements the array may hold (>= 0). Default None: as many as
            the storage array can hold (unbounded when it can grow).

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``batch_size`` < 1, ``length`` < 0, or ``length`` exceeds what a
            storage array that cannot grow holds.
    """

    def __init__(
        self,
        storage_array: Any,
        data_element_shape: Any,
        dtype: npt.DTypeLike,
        batch_size: int,
        length: int | None = None,
    ) -> None:
        shape, dtype_, batch, limit = _parse_element_args(
            data_element_shape, dtype, batch_size, length
        )
        capacity = _storage_capacity(storage_array)
        if limit is not None and capacity is not None and limit > capacity:
            raise ValueError(
                f"Expected length to be at most {capacity}, the number of elements "
                f"storage_array can hold. Got {limit} instead."
            )
        self.storage_array = storage_array
        self.data_element_shape = shape
        self.dtype = dtype_
        self.batch_size = batch
        self.length = limit
        self._limit: int | None
        if limit is not None:
            self._limit, self._limit_reason = limit, f"length={limit}"
        elif capacity is not None:
            self._limit, self._limit_reason = capacity, "the storage array's capacity"
        else:
            self._limit, self._limit_reason = None, ""
        self._buffer = np.empty((batch, *shape), dtype=dtype_)
        self._fill = 0  # elements waiting in the buffer
        self._position = 0  # storage index of the next element written
        self._failure: BaseException | None = None
        self._closed = False

    # ------------------------------------------------------------------ public API

    def buffered_write(self, data: npt.ArrayLike) -> None:
        """Write ``data`` through the buffer.

        Args:
            data: One element (shape ``data_element_shape``) or a batch of any number
                of elements (shape ``(n, *data_element_shape)``, n >= 0).

        Raises:
            WriterClosedError: The writer is closed.
            WriterError: An earlier write to the storage array failed, or this one did.
            ValueError: ``data`` has neither shape.
            TypeError: ``data``'s dtype does not cast to ``dtype`` (same_kind).
            WriterOverflowError: The write would take the array past ``length``;
                nothing of this call is written.
        """
        self._check_usable()
        batch = self._as_batch(data)
        count = len(batch)
        if self._limit is not None and self._position + self._fill + count > self._limit:
            raise WriterOverflowError(
                f"Expected at most {self._limit} elements in the array ({self._limit_reason}). "
                f"Got a write of {count} elements after {self._position + self._fill} "
                f"instead; nothing of this write was written."
            )
        taken = 0
        if self._fill:
            taken = min(self.batch_size - self._fill, count)
            self._buffer[self._fill : self._fill + taken] = batch[:taken]
            self._fill += taken
            if self._fill == self.batch_size:
                self._write_buffer()
        if self._fill == 0:
            whole = (count - taken) // self.batch_size * self.batch_size
            if whole:
                self._write(batch[taken : taken + whole])
            rest = batch[taken + whole :]
            self._buffer[: len(rest)] = rest
            self._fill = len(rest)

    def flush_buffer(self) -> None:
        """Write every buffered element to the storage array and persist it.

        Raises:
            WriterClosedError: The writer is closed.
            WriterError: An earlier write failed, or this one did.
        """
        self._check_usable()
        self._write_buffer()
        self._guard("Persisting the storage array", self._sync)

    def close(self) -> None:
        """Flush the buffer, mark the array complete and release the storage.

        Idempotent: a second call does nothing.

        Raises:
            WriterError: Flushing failed now or earlier; the storage is released
                and the array is not marked complete.
        """
        if self._closed:
            return
        try:
            if self._failure is None:
                self._write_buffer()
                self._guard("Persisting the storage array", self._sync)
                self._guard("Marking the array complete", self._mark_complete)
        finally:
            self._closed = True
            self._guard("Releasing the storage array", self._release)
        if self._failure is not None:
            raise WriterError(
                "The array was not marked complete because a write failed."
            ) from self._failure

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        # An exception escaped the block: what was written is incomplete, so flush
        # nothing more and never mark the array complete.
        self._closed = True
        self._fill = 0
        try:
            self._guard("Releasing the storage array", self._release)
        except WriterError:
            _log.exception("Releasing %s after an exception failed", type(self).__name__)

    def __del__(self) -> None:
        # A collected writer flushes (as the reference says) but is not marked complete.
        if getattr(self, "_closed", True):
            return
        self._closed = True
        try:
            if self._failure is None:
                self._write_buffer()
                self._guard("Persisting the storage array", self._sync)
        except WriterError:
            _log.exception("Flushing %s on garbage collection failed", type(self).__name__)
        try:
            self._guard("Releasing the storage array", self._release)
        except WriterError:
            _log.exception("Releasing %s on garbage collection failed", type(self).__name__)

    # ------------------------------------------------------------------ internals

    def _check_usable(self) -> None:
        if self._closed:
            raise WriterClosedError(f"This {type(self).__name__} is closed.")
        if self._failure is not None:
            raise WriterError(
                "An earlier write to the storage array failed; this writer cannot continue."
            ) from self._failure

    def _as_batch(self, data: npt.ArrayLike) -> np.ndarray[Any, Any]:
        array = np.asarray(data)
        shape = self.data_element_shape
        if array.shape == shape:
            array = array[np.newaxis]
        elif array.shape[1:] != shape or array.ndim != len(shape) + 1:
            raise ValueError(
                f"Expected data to be one element of shape {shape} or a batch of shape "
                f"(n, *{shape}). Got shape {array.shape} instead."
            )
        if not np.can_cast(array.dtype, self.dtype, casting="same_kind"):
            raise TypeError(
                f"Expected data of a dtype that casts to {self.dtype} (numpy same_kind rule). "
                f"Got {array.dtype} instead."
            )
        return array.astype(self.dtype, copy=False)

    def _write_buffer(self) -> None:
        if self._fill:
            self._write(self._buffer[: self._fill])
            self._fill = 0

    def _write(self, block: np.ndarray[Any, Any]) -> None:
        self._guard(
            f"Writing {len(block)} elements at index {self._position}",
            lambda: self._store(self._position, block),
        )
        self._position += len(block)

    def _guard(self, what: str, action: Callable[[], None]) -> None:
        """Run a storage action; a failure is kept so that no later call pretends success."""
        try:
            action()
        except Exception as error:
            self._failure = error
            raise WriterError(f"{what} failed: {error}") from error

    def _continue_from(self, position: int) -> None:
        """Start writing after ``position`` existing elements (append mode)."""
        if self._limit is not None and position > self._limit:
            raise ValueError(
                f"Expected length to be at least the {position} elements the existing array "
                f"holds. Got {self._limit} instead."
            )
        self._position = position

    # Backend hooks: the generic writer assigns slices and has no file to finish.

    def _store(self, start: int, block: np.ndarray[Any, Any]) -> None:
        end = start + len(block)
        if end > self.storage_array.shape[0]:
            self.storage_array.resize((end, *self.data_element_shape))
        self.storage_array[start:end] = block

    def _sync(self) -> None:
        """Persist what was stored (no-op for the generic writer)."""

    def _mark_complete(self) -> None:
        """Record that the array is complete (no-op for the generic writer)."""

    def _release(self) -> None:
        """Release file handles (no-op for the generic writer)."""


class h5py_array_writer(buffered_array_writer):
    """Writes data given in pieces of any size to an HDF5 dataset, one batch at a time.

    See ``buffered_array_writer`` for buffering and flushing, and the module docstring
    for the ``data_tools_complete`` attribute set on the dataset by ``close()``.

    Args:
        data_element_shape: Shape of one element.
        dtype: numpy dtype of the dataset.
        batch_size: Elements per write (>= 1); also the chunk length.
        filename: The HDF5 file.
        array_name: Path of the dataset in the file (created if missing).
        length: The most elements the dataset may hold (>= 0). Default None: unbounded.
            The dataset grows as data is written (its maxshape is unlimited either way).
        append: Default False: open the file in write mode, truncating it. True: open
            it in append mode and continue ``array_name`` if it exists (its element
            shape and dtype must match), else create it.
        kwargs: Arguments for ``h5py.Group.create_dataset``, overriding the defaults
            ``compression="lzf"`` and ``chunks=(batch_size, *data_element_shape)``.
            Default None: the defaults. May not set name, shape, maxshape, dtype, data.

    Raises:
        TypeError: An argument has the wrong type, or the existing dataset's dtype differs.
        ValueError: ``batch_size`` < 1, ``length`` < 0 or shorter than the existing
            dataset, the existing element shape differs, or kwargs sets a reserved key.
        OSError: The file cannot be opened.
    """

    def __init__(
        self,
        data_element_shape: Any,
        dtype: npt.DTypeLike,
        batch_size: int,
        filename: str | os.PathLike[str],
        array_name: str,
        length: int | None = None,
        append: bool = False,
        kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        shape, dtype_, batch, limit = _parse_element_args(
            data_element_shape, dtype, batch_size, length
        )
        path = parse_path("filename", filename)
        name = _parse_array_name(array_name)
        appending = parse_bool("append", append)
        options: dict[str, Any] = {"chunks": (batch, *shape), "compression": "lzf"}
        options |= _parse_kwargs(kwargs, frozenset({"name", "shape", "maxshape", "dtype", "data"}))
        file = h5py.File(path, "a" if appending else "w")
        try:
            dataset = _h5py_dataset(file, name, appending, shape, dtype_, options)
            super().__init__(dataset, shape, dtype_, batch, limit)
            self._continue_from(dataset.shape[0])
            self._file = file
            self._set_flag(False)
        except BaseException:
            self._closed = True
            file.close()
            raise

    def _set_flag(self, complete: bool) -> None:
        self.storage_array.attrs[COMPLETE_ATTRIBUTE] = complete
        self._file.flush()

    def _sync(self) -> None:
        self._file.flush()

    def _mark_complete(self) -> None:
        self._set_flag(True)

    def _release(self) -> None:
        self._file.close()


class zarr_array_writer(buffered_array_writer):
    """Writes data given in pieces of any size to a zarr (v3) array, one batch at a time.

    See ``buffered_array_writer`` for buffering and flushing, and the module docstring
    for the ``data_tools_complete`` attribute set on the array by ``close()``.

    Args:
        data_element_shape: Shape of one element.
        dtype: numpy dtype of the array.
        batch_size: Elements per write (>= 1); also the chunk length.
        filename: The zarr store (a directory holding a group).
        array_name: Path of the array in the group (created if missing).
        length: The most elements the array may hold (>= 0). Default None: unbounded.
            The array grows as data is written.
        append: Default False: open the group in write mode, deleting what the store
            held. True: open it in append mode and continue ``array_name`` if it exists
            (its element shape and dtype must match), else create it.
        kwargs: Arguments for ``zarr.Group.create_array``, overriding the defaults
            ``compressors=BloscCodec(cname="lz4", clevel=5)``,
            ``chunks=(batch_size, *data_element_shape)`` and
            ``config={"write_empty_chunks": True}`` (every chunk is stored, so a reader can
            tell a lost chunk of a complete array from fill). Default None: the defaults.
            May not set name, shape, dtype, data.

    Raises:
        TypeError: An argument has the wrong type, or the existing array's dtype differs.
        ValueError: ``batch_size`` < 1, ``length`` < 0 or shorter than the existing
            array, the existing element shape differs, or kwargs sets a reserved key.
    """

    def __init__(
        self,
        data_element_shape: Any,
        dtype: npt.DTypeLike,
        batch_size: int,
        filename: str | os.PathLike[str],
        array_name: str,
        length: int | None = None,
        append: bool = False,
        kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        import zarr  # optional backend: imported only when used
        from zarr.codecs import BloscCodec

        shape, dtype_, batch, limit = _parse_element_args(
            data_element_shape, dtype, batch_size, length
        )
        path = parse_path("filename", filename)
        name = _parse_array_name(array_name)
        appending = parse_bool("append", append)
        options: dict[str, Any] = {
            "chunks": (batch, *shape),
            "compressors": BloscCodec(cname="lz4", clevel=5),
            # Every chunk stored, even one of fill values only: a reader can then tell a
            # lost chunk of a complete array from fill (data_tools._chunk_checks).
            "config": {"write_empty_chunks": True},
        } | _parse_kwargs(kwargs, frozenset({"name", "shape", "dtype", "data"}))
        group = zarr.open_group(path, mode="a" if appending else "w")
        array = group.get(name) if appending else None
        if array is None:
            array = group.create_array(name, shape=(0, *shape), dtype=dtype_, **options)
        elif not isinstance(array, zarr.Array):
            raise TypeError(f"Expected array_name to name an array in {path}. Got a group instead.")
        _check_existing("zarr array", array, shape, dtype_)
        super().__init__(array, shape, dtype_, batch, limit)
        self._continue_from(array.shape[0])
        self._mark(False)

    def _mark(self, complete: bool) -> None:
        self.storage_array.attrs[COMPLETE_ATTRIBUTE] = complete

    def _mark_complete(self) -> None:
        self._mark(True)


class bcolz_array_writer(buffered_array_writer):
    """Writes data given in pieces of any size to a bcolz carray, one batch at a time.

    See ``buffered_array_writer`` for buffering and flushing, and the module docstring
    for the ``data_tools_complete`` attribute set on the carray by ``close()``. Full
    batches are appended to the carray; ``flush_buffer()`` and ``close()`` also flush
    the carray's own last, partly filled chunk to disk.

    Args:
        data_element_shape: Shape of one element.
        dtype: numpy dtype of the carray.
        batch_size: Elements per write (>= 1).
        save_path: Directory of the carray.
        length: The most elements the carray may hold (>= 0). Default None: unbounded.
        append: Default False: create the carray, deleting ``save_path`` if it exists.
            True: continue the carray at ``save_path`` if it exists (its element shape
            and dtype must match), else create it.
        kwargs: Arguments for ``bcolz.carray``, overriding the defaults
            ``cparams=bcolz.cparams(clevel=5, shuffle=bcolz.SHUFFLE, cname="lz4")``
            (blosc) and ``expectedlen=length`` (``batch_size`` when length is None),
            from which bcolz derives the chunk length. Default {}: the defaults.
            May not set array, rootdir, mode, dtype. The mapping is copied, never changed.

    Raises:
        TypeError: An argument has the wrong type, or the existing carray's dtype differs.
        ValueError: ``batch_size`` < 1, ``length`` < 0 or shorter than the existing
            carray, the existing element shape differs, or kwargs sets a reserved key.
    """

    def __init__(
        self,
        data_element_shape: Any,
        dtype: npt.DTypeLike,
        batch_size: int,
        save_path: str | os.PathLike[str],
        length: int | None = None,
        append: bool = False,
        kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        import bcolz  # optional backend: imported only when used

        shape, dtype_, batch, limit = _parse_element_args(
            data_element_shape, dtype, batch_size, length
        )
        path = parse_path("save_path", save_path)
        appending = parse_bool("append", append)
        options: dict[str, Any] = {
            "cparams": bcolz.cparams(clevel=5, shuffle=bcolz.SHUFFLE, cname="lz4"),
            "expectedlen": batch if limit is None else limit,
        } | _parse_kwargs(kwargs, frozenset({"array", "rootdir", "mode", "dtype"}))
        if appending and os.path.exists(path):
            carray = bcolz.open(path, mode="a")
            if not isinstance(carray, bcolz.carray):
                raise TypeError(
                    f"Expected save_path to hold a bcolz carray. Got {type(carray).__name__}."
                )
        else:
            empty = np.empty((0, *shape), dtype=dtype_)
            carray = bcolz.carray(empty, rootdir=path, mode="w", **options)
        _check_existing("bcolz carray", carray, shape, dtype_)
        super().__init__(carray, shape, dtype_, batch, limit)
        self._continue_from(len(carray))
        self._mark(False)

    def _mark(self, complete: bool) -> None:
        self.storage_array.attrs[COMPLETE_ATTRIBUTE] = complete

    def _store(self, start: int, block: np.ndarray[Any, Any]) -> None:
        self.storage_array.append(block)

    def _sync(self) -> None:
        self.storage_array.flush()

    def _mark_complete(self) -> None:
        self._mark(True)


def is_complete(path: str | os.PathLike[str], array_name: str | None = None) -> bool:
    """Whether a writer of this module finished the array(s) at ``path`` cleanly.

    Readers (the patch builder, the data node) call this before trusting an array:
    it is True only when ``close()`` of the array's writer returned normally.

    Args:
        path: An HDF5 file, a zarr store directory, or a bcolz carray directory (or a
            directory holding bcolz carrays, when ``array_name`` is given).
        array_name: The dataset/array path inside the HDF5 file or zarr store, or the
            carray's subdirectory for bcolz. Default None: every array in the HDF5 file
            or zarr store (at least one) must be complete; for bcolz, ``path`` itself
            is the carray.

    Returns:
        False when ``path`` or the array does not exist, cannot be read (a file left
        by a killed writer may not open), or is not marked complete; else True.
    """
    location = os.fspath(path)
    if os.path.isfile(location):
        return _is_hdf5_complete(location, array_name)
    if os.path.isfile(os.path.join(location, "zarr.json")):
        return _is_zarr_complete(location, array_name)
    if os.path.isdir(location):
        carray_dir = location if array_name is None else os.path.join(location, array_name)
        return _is_bcolz_complete(carray_dir)
    return False


def _flag_set(attributes: Mapping[str, Any]) -> bool:
    return bool(attributes.get(COMPLETE_ATTRIBUTE, False))


# Whatever makes an array unreadable (a truncated file, a lock held by a live writer,
# corrupt metadata) means "not complete"; these are the errors h5py, zarr and bcolz raise then.
_UNREADABLE = (OSError, ValueError, KeyError, RuntimeError, TypeError)


def _is_hdf5_complete(path: str, array_name: str | None) -> bool:
    try:
        with h5py.File(path, "r") as file:
            if array_name is None:
                datasets: list[h5py.Dataset] = []
                file.visititems(
                    lambda _, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None
                )
            else:
                found = file.get(array_name)
                datasets = [found] if isinstance(found, h5py.Dataset) else []
            return bool(datasets) and all(_flag_set(d.attrs) for d in datasets)
    except _UNREADABLE:
        return False


def _is_zarr_complete(path: str, array_name: str | None) -> bool:
    import zarr

    try:
        group = zarr.open_group(path, mode="r")
        if array_name is None:
            arrays = [m for _, m in group.members(max_depth=None) if isinstance(m, zarr.Array)]
        else:
            found = group.get(array_name)
            arrays = [found] if isinstance(found, zarr.Array) else []
        return bool(arrays) and all(_flag_set(a.attrs) for a in arrays)
    except _UNREADABLE:
        return False


def _is_bcolz_complete(path: str) -> bool:
    import bcolz

    if not os.path.isdir(os.path.join(path, "meta")):
        return False
    try:
        return _flag_set(bcolz.open(path, mode="r").attrs.getall())
    except _UNREADABLE:
        return False

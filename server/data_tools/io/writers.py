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

import numpy as np

from data_tools._parse import (
    parse_bool,
    parse_dtype,
    parse_non_negative_int,
    parse_path,
    parse_positive_int,
    parse_shape,
)
from data_tools.errors import WriterClosedError, WriterError, WriterOverflowError
from data_tools.storage import backend, format_of_path
from data_tools.storage.base import ArrayTarget

if TYPE_CHECKING:
    from types import TracebackType

    import numpy.typing as npt

    from data_tools.storage import StorageBackend, WriteTarget

__all__ = [
    "bcolz_array_writer",
    "buffered_array_writer",
    "format_writer",
    "h5py_array_writer",
    "is_complete",
    "set_container_attrs",
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
        self._target: WriteTarget = ArrayTarget(storage_array)
        capacity = self._target.capacity()
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

    def _open(
        self,
        storage: StorageBackend,
        path: str,
        name: str | None,
        element: tuple[tuple[int, ...], np.dtype[Any], int, int | None],
        append: bool,
        kwargs: Any,
    ) -> None:
        """Set up a file format's writer: its array created (or continued) and marked incomplete."""
        shape, dtype, batch, limit = element
        options = storage.default_options(batch, shape, limit)
        options |= _parse_kwargs(kwargs, storage.reserved_options)
        target = storage.create(path, name, shape, dtype, append, options)
        try:
            buffered_array_writer.__init__(self, target.array, shape, dtype, batch, limit)
            self._target = target
            self._continue_from(target.array.shape[0])
            target.mark(False)
        except BaseException:
            self._closed = True
            target.release()
            raise

    # The storage's part, by its backend's write target.

    def _store(self, start: int, block: np.ndarray[Any, Any]) -> None:
        self._target.store(start, block)

    def _sync(self) -> None:
        self._target.sync()

    def _mark_complete(self) -> None:
        self._target.mark(True)

    def _release(self) -> None:
        self._target.release()


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
        element = _parse_element_args(data_element_shape, dtype, batch_size, length)
        path = parse_path("filename", filename)
        name = _parse_array_name(array_name)
        appending = parse_bool("append", append)
        self._open(backend("hdf5"), path, name, element, appending, kwargs)


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
        element = _parse_element_args(data_element_shape, dtype, batch_size, length)
        path = parse_path("filename", filename)
        name = _parse_array_name(array_name)
        appending = parse_bool("append", append)
        self._open(backend("zarr"), path, name, element, appending, kwargs)


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
        element = _parse_element_args(data_element_shape, dtype, batch_size, length)
        path = parse_path("save_path", save_path)
        appending = parse_bool("append", append)
        self._open(backend("bcolz"), path, None, element, appending, kwargs)


def format_writer(
    file_format: str,
    container: str,
    name: str,
    data_element_shape: Any,
    dtype: npt.DTypeLike,
    batch_size: int,
    length: int | None = None,
    append: bool = False,
    kwargs: Mapping[str, Any] | None = None,
) -> buffered_array_writer:
    """A writer of array ``name`` of ``container``, in any format ``data_tools`` writes.

    As ``h5py_array_writer``, ``zarr_array_writer`` or ``bcolz_array_writer``, with the array
    where the format keeps it (``StorageBackend.array_location``: a key in an HDF5 file or
    zarr store, a carray directory ``container/name`` for bcolz).

    Args:
        file_format: "hdf5", "zarr" or "bcolz" (``data_tools.storage.WRITABLE_FORMATS``).
        container: The file, store or directory holding the arrays.
        name: The array's name in it.
        data_element_shape, dtype, batch_size, length, append, kwargs: As the writers'.

    Raises:
        As the format's writer.
    """
    storage = backend(file_format)
    path, key = storage.array_location(container, name)
    writer = buffered_array_writer.__new__(buffered_array_writer)
    element = _parse_element_args(data_element_shape, dtype, batch_size, length)
    writer._open(storage, path, key, element, append, kwargs)
    return writer


def set_container_attrs(writer: buffered_array_writer, attrs: Mapping[str, str]) -> None:
    """Set ``attrs`` on the file or store holding the array ``writer`` writes (HDF5 file
    attributes, the zarr store's root group attributes).

    Raises:
        TypeError: ``writer`` writes a caller's array, not a file format.
    """
    writer._target.set_root_attrs(attrs)


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
    found = format_of_path(location)
    return found is not None and backend(found).is_complete(location, array_name)

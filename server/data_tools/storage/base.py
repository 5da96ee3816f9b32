"""The storage backend protocol, and the registry of backends by format name.

One module per stored format implements :class:`StorageBackend` (as zarr-python's
``abc/store.py`` has one implementation per store): ``hdf5``, ``zarr``, ``bcolz``, ``numpy``
(in-memory arrays) and ``sitk`` (medical images read with SimpleITK). Everything the rest
of the library and the node do differently per format goes through a backend: opening
read-only (confined to a root, from a picklable description that each process reopens),
reading rows, the chunk layout along the first axis and single chunks (what the chunk
cache decodes), creating, appending to and completing arrays (the writers), and checking
content for confinement.

A backend's module is imported on first use only, and an array's backend is found from
the module of its type, without importing any format library: a process that reads HDF5
never imports zarr or bcolz.
"""

from __future__ import annotations

import functools
import importlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeGuard

import numpy as np

from data_tools._indexing import as_slice

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Mapping
    from pathlib import Path

    import numpy.typing as npt

    from data_tools.errors import SourceChangedError
    from data_tools.storage.confine import Root

__all__ = [
    "COMPLETE_ATTRIBUTE",
    "FORMATS",
    "PARALLEL_FORMATS",
    "UNREADABLE",
    "WRITABLE_FORMATS",
    "ArrayTarget",
    "Format",
    "RowSource",
    "StorageBackend",
    "WriteTarget",
    "backend",
    "backend_of",
    "check_existing",
    "container_names",
    "format_of_path",
    "read_rows",
    "row_reader",
    "row_taker",
    "take_rows",
]

#: The attribute ``data_tools.io`` writers set to True on an array once every element
#: (and, for zarr, every chunk) is written, and to False before writing anything.
COMPLETE_ATTRIBUTE = "data_tools_complete"
# Whatever makes an array unreadable (a truncated file, a lock held by a live writer,
# corrupt metadata) means "not complete"; these are the errors h5py, zarr and bcolz raise then.
UNREADABLE = (OSError, ValueError, KeyError, RuntimeError, TypeError)


class WriteTarget(Protocol):
    """One array open for writing, as a backend's ``create`` returns it.

    Attributes:
        array: The storage array written (an ``h5py.Dataset``, zarr array, bcolz carray
            or numpy array); the writers expose it as ``storage_array``.
    """

    array: Any

    def store(self, start: int, block: npt.NDArray[Any]) -> None:
        """Write ``block`` at rows ``[start, start + len(block))``, growing the array."""

    def sync(self) -> None:
        """Persist what was stored."""

    def mark(self, complete: bool) -> None:
        """Set (and persist) the array's completion flag, :data:`COMPLETE_ATTRIBUTE`."""

    def release(self) -> None:
        """Release the file handles; nothing more is written."""

    def set_root_attrs(self, attrs: Mapping[str, str]) -> None:
        """Set attributes on the file or store that holds the array."""


class RowSource(Protocol):
    """An array-like that reads its own rows (views, sources read through a chunk cache).

    Readers above storage (``io``'s batches, a view reading its sources) ask
    ``row_taker``/``row_reader`` how to read a source once and then call the source itself,
    so storage never calls back into the layers that wrap it. Told by the method on the
    source's type (an ``isinstance`` check on a protocol would cost more than a small read).
    """

    def take_rows(
        self, indices: npt.NDArray[np.intp], trailing: tuple[Any, ...] = ()
    ) -> npt.NDArray[Any]:
        """Rows ``indices`` (in range, any order, repeats allowed), each restricted to
        ``trailing``, as a new array the caller may modify."""
        ...


class ArrayTarget:
    """An array given to a writer directly (numpy, or an h5py dataset or zarr array), written
    by slice assignment: grown with ``resize(shape)`` where it has one, never marked."""

    def __init__(self, array: Any) -> None:
        self.array = array

    def capacity(self) -> int | None:
        """Most elements the array can hold: its length, its maxshape, or None (unbounded)."""
        array = self.array
        # numpy's own resize takes no shape: a numpy array holds what it holds.
        if isinstance(array, np.ndarray) or not callable(getattr(array, "resize", None)):
            return int(array.shape[0])
        maxshape = getattr(array, "maxshape", None)
        return None if maxshape is None or maxshape[0] is None else int(maxshape[0])

    def store(self, start: int, block: npt.NDArray[Any]) -> None:
        end = start + len(block)
        if end > self.array.shape[0]:
            self.array.resize((end, *self.array.shape[1:]))
        self.array[start:end] = block

    def sync(self) -> None:
        """Nothing to persist: the array is the caller's."""

    def mark(self, complete: bool) -> None:
        """Not marked: the array is the caller's."""

    def release(self) -> None:
        """Nothing to release: the array is the caller's."""

    def set_root_attrs(self, attrs: Mapping[str, str]) -> None:
        raise TypeError("Expected a writer of a file format. Got one of a caller's array.")


class StorageBackend(ABC):
    """What one stored format provides; one subclass (and one instance) per format.

    Sources are the objects ``open`` returns (or a library's own arrays of the format,
    such as an ``h5py.Dataset`` or a ``zarr.Array``); each method takes one and does what
    the format needs. Defaults suit an array-like without storage chunks.
    """

    name: ClassVar[str]
    #: Options of ``create`` a writer sets itself; ``kwargs`` may not set them.
    reserved_options: ClassVar[frozenset[str]] = frozenset()
    #: The writer options a data node request may set (layout and compression only).
    request_options: ClassVar[frozenset[str]] = frozenset()

    def __repr__(self) -> str:
        return f"<{self.name} storage backend>"

    # ---------------------------------------------------------------- reading

    @abstractmethod
    def open(self, path: Path, key: str | None, root: Root | None) -> Any:
        """Open the array ``key`` at ``path`` read-only, confined to ``root`` by name and content.

        The result is picklable (a path and key, not a handle) and opens its storage again
        in each process that uses it.

        Raises:
            ConfinementError: The storage reads from outside ``root``.
            FileNotFoundError, OSError, KeyError, TypeError: It cannot be opened.
        """

    def as_picklable(self, source: Any) -> Any:
        """``source`` as an equivalent that pickles to a description (default: itself)."""
        return source

    def chunk_rows(self, source: Any) -> int | None:
        """Rows per storage chunk along the first axis, or None if ``source`` is not chunked.

        Chunk ``n`` holds rows ``[n * rows, (n + 1) * rows)`` (fewer in the last one), and
        is decoded whole on any read of one of its rows.
        """
        return None

    def read_chunk(self, source: Any, number: int) -> npt.NDArray[Any]:
        """The rows of chunk ``number`` along the first axis, decoded (may be read-only)."""
        rows = self.chunk_rows(source) or int(source.shape[0])
        return np.asarray(source[number * rows : (number + 1) * rows])

    def read_rows(
        self, source: Any, rows: npt.NDArray[np.intp], trailing: tuple[Any, ...] = ()
    ) -> npt.NDArray[Any]:
        """Rows ``rows`` (sorted, unique, in range) of ``source``, each restricted to ``trailing``."""
        return np.asarray(source[(rows, *trailing)])

    def take(self, source: Any, indices: npt.NDArray[np.intp]) -> npt.NDArray[Any]:
        """``source[indices]`` (any order, repeats allowed) as a new array the caller may modify.

        Each distinct row is read once, in increasing order (as h5py requires), by
        ``read_rows``.
        """
        return _take_distinct(source, indices)

    def location(self, source: Any) -> tuple[Hashable, ...]:
        """What tells ``source``'s storage apart from others' (its file and key...)."""
        return (id(source),)

    def version(self, source: Any) -> Hashable | None:
        """What changes when the stored content is rewritten (None: never checked).

        Raises:
            SourceChangedError: The storage was deleted after ``source`` opened it.
        """
        return None

    def changed(self, source: Any) -> SourceChangedError:
        """The error for a ``source`` whose ``version`` changed while a chunk was read."""
        from data_tools.errors import SourceChangedError

        return SourceChangedError(f"{source!r} changed while a chunk was read from it.")

    def close(self, source: Any) -> None:  # noqa: B027 - most formats hold no handle
        """Release this process's handle on ``source`` (the next read reopens it)."""

    def check_content(self, path: Path, key: str | None, root: Root) -> None:
        """Check that nothing the array ``key`` at ``path`` reads lies outside ``root``.

        Raises:
            ConfinementError: Something it reads resolves outside ``root``.
            FileNotFoundError, OSError, KeyError, TypeError: It cannot be opened.
        """
        source = self.open(path, key, root)
        try:
            source.shape  # noqa: B018 - opening is lazy for some formats; make it check now
        finally:
            self.close(source)

    # ---------------------------------------------------------------- writing

    def default_options(
        self, batch_size: int, element_shape: tuple[int, ...], length: int | None
    ) -> dict[str, Any]:
        """The writers' default ``create`` options (layout and compression)."""
        return {}

    def options_from_json(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``create`` options from JSON-decoded ones: JSON has no tuples, ``chunks`` becomes one."""
        kwargs = dict(options)
        if isinstance(kwargs.get("chunks"), list):
            kwargs["chunks"] = tuple(kwargs["chunks"])
        return kwargs

    def create(
        self,
        path: str,
        name: str | None,
        element_shape: tuple[int, ...],
        dtype: np.dtype[Any],
        append: bool,
        options: dict[str, Any],
    ) -> WriteTarget:
        """Open array ``name`` at ``path`` for writing (the writer then marks it incomplete).

        Args:
            path: The file, store or directory.
            name: The array inside it (None for formats with one array per directory).
            element_shape: Shape of one element.
            dtype: The array's dtype.
            append: Continue the array if it exists (its element shape and dtype must
                match), else create it; False: replace what ``path`` held.
            options: ``default_options`` updated by the caller's own.

        Raises:
            TypeError: The format is not written, or the existing array's dtype differs.
            ValueError: The existing array's element shape differs.
        """
        raise TypeError(f"Expected a storage format that data_tools writes. Got {self.name!r}.")

    def create_sized(
        self,
        path: str,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        append: bool,
        options: dict[str, Any],
    ) -> WriteTarget:
        """Create array ``name`` at ``path`` at its final ``shape``, marked incomplete, for
        processes to fill by chunks at once (``Format.parallel_writes`` formats only).

        Args:
            path: The file or store.
            name: The array inside it; one that exists is replaced.
            shape: The array's final shape.
            dtype: The array's dtype.
            append: Keep the other arrays at ``path``; False: replace what ``path`` held.
            options: ``default_options`` updated by the caller's own.

        Raises:
            TypeError: The format is not written by parallel processes.
        """
        raise TypeError(
            f"Expected a storage format written by parallel processes. Got {self.name!r}."
        )

    def open_rows(self, path: str, name: str) -> WriteTarget:
        """The existing array ``name`` at ``path``, to write rows in place (``store``) or
        ``mark`` it; never creates it, so a writer of a removed store fails.

        Raises:
            TypeError: The format is not written by parallel processes.
            FileNotFoundError, KeyError: There is no such array.
        """
        raise TypeError(
            f"Expected a storage format written by parallel processes. Got {self.name!r}."
        )

    def array_location(self, container: str, name: str) -> tuple[str, str | None]:
        """Where array ``name`` of a container of several arrays lives: (path, key)."""
        return container, name

    def new_container(self, container: str) -> None:  # noqa: B027 - most need nothing
        """Prepare ``container`` for a new set of arrays (default: nothing; the first
        writer, with ``append=False``, replaces the file or store)."""

    def is_container_complete(self, container: str) -> bool:
        """Whether every array of ``container`` (at least one) was finished cleanly."""
        return self.holds(container) and self.is_complete(container, None)

    def holds(self, path: str) -> bool:
        """Whether ``path`` looks like storage of this format (to tell formats apart)."""
        return False

    def is_complete(self, path: str, array_name: str | None) -> bool:
        """Whether a writer finished the array(s) at ``path`` cleanly (see ``writers.is_complete``)."""
        return False

    def read_root_attrs(self, path: str) -> Mapping[str, Any]:
        """The attributes of the file or store at ``path`` (``WriteTarget.set_root_attrs``)."""
        raise TypeError(f"Expected a storage format with attributes. Got {self.name!r}.")


def check_existing(kind: str, array: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
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


@dataclass(frozen=True)
class Format:
    """A format's registry entry: known without importing its backend.

    Attributes:
        name: The format's name, e.g. "hdf5".
        module: The module holding its backend (``BACKEND``).
        type_modules: Top-level modules of the array types it reads (h5py's datasets...).
        suffixes: File or directory suffixes that name the format.
        writable: Whether ``data_tools`` writers write it.
        key: Whether its arrays are named by a key inside the file: "required",
            "optional" or "none" (then one array per directory, and no attributes of a
            container of several arrays).
        noun: What messages call one of its arrays, e.g. "HDF5 dataset".
        parallel_writes: Whether separate processes may write disjoint whole chunks of one
            array at once (``StorageBackend.create_sized`` and ``open_rows``): what a
            build's Dask tasks need.
    """

    name: str
    module: str
    type_modules: tuple[str, ...]
    suffixes: tuple[str, ...] = ()
    writable: bool = False
    key: str = "none"
    noun: str = "array"
    parallel_writes: bool = False


FORMATS: dict[str, Format] = {
    entry.name: entry
    for entry in (
        Format(
            "bcolz",
            "data_tools.storage.bcolz",
            ("bcolz", "data_tools.storage.bcolz"),
            (".bcolz",),
            writable=True,
            noun="bcolz carray",
        ),
        Format(
            "hdf5",
            "data_tools.storage.hdf5",
            ("h5py", "data_tools.storage.hdf5"),
            (".h5", ".hdf5"),
            writable=True,
            key="required",
            noun="HDF5 dataset",
        ),
        Format("numpy", "data_tools.storage.numpy", ("numpy",), (".npy",), noun="numpy array"),
        Format(
            "sitk",
            "data_tools.storage.sitk",
            ("data_tools.storage.sitk",),
            (".mha", ".mhd", ".nii", ".nii.gz", ".nrrd"),
            noun="medical image",
        ),
        Format(
            "zarr",
            "data_tools.storage.zarr",
            ("zarr", "data_tools.storage.zarr"),
            (".zarr",),
            writable=True,
            key="optional",
            noun="zarr array",
            parallel_writes=True,
        ),
    )
}
#: The formats data_tools writers write, sorted.
WRITABLE_FORMATS = tuple(name for name, entry in FORMATS.items() if entry.writable)
#: The formats whose arrays separate processes may write at once (``Format.parallel_writes``).
PARALLEL_FORMATS = tuple(name for name, entry in FORMATS.items() if entry.parallel_writes)
# The order storage is told apart in (``format_of_path``): a zarr store before a directory.
_DETECTION_ORDER = ("hdf5", "zarr", "bcolz")
_BY_TYPE_MODULE = {
    module: entry.name for entry in FORMATS.values() for module in entry.type_modules
}
# Type -> its format, found once per type (a dict's reads and writes are atomic).
_TYPE_FORMATS: dict[type[Any], str | None] = {}


def container_names(stem: str, *, keyed: bool = False) -> dict[str, str]:
    """File format -> the name of a container ``stem`` of several arrays, for each writable format.

    The name is ``stem`` and the format's first suffix (``patches.h5``, ``patches.zarr``...).

    Args:
        stem: The container's name without suffix.
        keyed: Only the formats that name arrays by key inside one file or store, which
            can also hold the container's attributes (not bcolz: one carray per directory).
    """
    return {
        name: stem + FORMATS[name].suffixes[0]
        for name in WRITABLE_FORMATS
        if not keyed or FORMATS[name].key != "none"
    }


def read_rows(source: Any, rows: npt.NDArray[np.intp], trailing: tuple[Any, ...] = ()) -> Any:
    """Rows ``rows`` (sorted, unique, in range) of ``source``, each restricted to ``trailing``.

    Evenly spaced rows are read as one slice; others as ``source``'s backend reads them
    fastest (HDF5: per contiguous run; zarr: one orthogonal selection), or by indexing.
    """
    evenly_spaced = as_slice(rows)
    if evenly_spaced is not None:
        return source[(evenly_spaced, *trailing)]
    found = backend_of(source)
    if found is None:
        return source[(rows, *trailing)]
    return found.read_rows(source, rows, trailing)


def take_rows(source: Any, indices: npt.NDArray[np.intp]) -> npt.NDArray[Any]:
    """``source[indices]`` (any order, repeats allowed) as a new array the caller may modify,
    read as ``source``'s backend reads it (``StorageBackend.take``), or as a ``RowSource``
    reads itself."""
    if _reads_itself(source):
        return source.take_rows(indices)
    found = backend_of(source)
    return _take_distinct(source, indices) if found is None else found.take(source, indices)


def row_taker(source: Any) -> Callable[[npt.NDArray[np.intp]], npt.NDArray[Any]]:
    """How to read ``source``'s rows for ``take_rows``: its own method (a ``RowSource``), else
    ``take_rows`` on it. Called once per read; the read itself then calls the source."""
    if _reads_itself(source):
        return source.take_rows
    return functools.partial(take_rows, source)


def row_reader(
    source: Any,
) -> Callable[[npt.NDArray[np.intp], tuple[Any, ...]], npt.NDArray[Any]]:
    """How to read sorted, unique rows of ``source`` restricted to trailing keys: its own
    ``take_rows`` (a ``RowSource``), else ``read_rows`` on it."""
    if _reads_itself(source):
        return source.take_rows
    return functools.partial(read_rows, source)


def _reads_itself(source: Any) -> TypeGuard[RowSource]:
    """Whether ``source`` is a ``RowSource``."""
    return hasattr(type(source), "take_rows")


def _take_distinct(source: Any, indices: npt.NDArray[np.intp]) -> npt.NDArray[Any]:
    unique, inverse = np.unique(indices, return_inverse=True)
    rows = np.asarray(read_rows(source, unique.astype(np.intp)))
    if unique.size != indices.size or not np.array_equal(unique, indices):
        return rows[inverse]
    # A source may hand back a view of memory it keeps; the caller may write.
    return rows if rows.flags.owndata else rows.copy()


def backend(name: str) -> StorageBackend:
    """The backend of format ``name`` (a key of ``FORMATS``), its module imported on first use.

    Raises:
        KeyError: No such format.
    """
    found: StorageBackend = importlib.import_module(FORMATS[name].module).BACKEND
    return found


def backend_of(source: Any) -> StorageBackend | None:
    """The backend that reads ``source``, by the module of its type; None for other array-likes."""
    name = _format_of_type(type(source))
    return None if name is None else backend(name)


def _format_of_type(kind: type[Any]) -> str | None:
    if kind not in _TYPE_FORMATS:
        found = None
        for cls in kind.__mro__:
            module = cls.__module__
            found = _BY_TYPE_MODULE.get(module) or _BY_TYPE_MODULE.get(module.partition(".")[0])
            if found is not None:
                break
        _TYPE_FORMATS[kind] = found
    known: str | None = _TYPE_FORMATS[kind]
    return known


def format_of_path(path: str | os.PathLike[str]) -> str | None:
    """The writable format of the storage at ``path`` (an HDF5 file, zarr store, bcolz
    directory), or None when nothing is there."""
    location = os.fspath(path)
    return next((name for name in _DETECTION_ORDER if backend(name).holds(location)), None)

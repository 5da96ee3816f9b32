"""Storage backends: one module per stored format behind one protocol (``StorageBackend``).

``hdf5`` (h5py), ``zarr``, ``bcolz``, ``numpy`` (in-memory arrays, ``.npy`` files) and
``sitk`` (medical images read with SimpleITK) each implement ``base.StorageBackend``;
``backend(name)`` finds one by format name and ``backend_of(array)`` by the array's type.
A backend's module, and its format's library, is imported on first use only.

The functions here are what the rest of the library and the data node call instead of
switching on formats: open a source from its description, read rows, the chunk layout
along the first axis (``chunk_rows``) and single chunks, tell whether stored arrays are
complete. Confinement to a root directory lives in ``data_tools.storage.confine``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from data_tools.storage.base import (
    COMPLETE_ATTRIBUTE,
    FORMATS,
    PARALLEL_FORMATS,
    WRITABLE_FORMATS,
    Format,
    RowSource,
    StorageBackend,
    WriteTarget,
    backend,
    backend_of,
    container_names,
    format_of_path,
    read_rows,
    row_reader,
    row_taker,
    take_rows,
)
from data_tools.storage.confine import Root

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "COMPLETE_ATTRIBUTE",
    "FORMATS",
    "PARALLEL_FORMATS",
    "WRITABLE_FORMATS",
    "Format",
    "Root",
    "RowSource",
    "StorageBackend",
    "WriteTarget",
    "as_picklable",
    "backend",
    "backend_of",
    "chunk_rows",
    "close_source",
    "container_names",
    "format_of_path",
    "open_source",
    "read_rows",
    "row_reader",
    "row_taker",
    "take_rows",
]


def open_source(file_format: str, path: Path, key: str | None, root: Root | None) -> Any:
    """Open the array ``key`` of the ``file_format`` storage at ``path``, confined to ``root``.

    Args:
        file_format: A key of ``FORMATS``: "hdf5", "zarr", "bcolz", "numpy" or "sitk".
        path: The file or store directory, inside ``root``.
        key: The array inside it (required for HDF5; "" or None: a zarr store's root
            array; ignored for the other formats).
        root: The directory every read must stay inside; None: not confined.

    Returns:
        A picklable array-like (an ``H5Source``, a zarr array on a ``ConfinedStore``, a
        ``BcolzSource``...); each process that unpickles it opens the storage itself.

    Raises:
        ConfinementError: The storage reads from outside ``root``.
        FileNotFoundError, OSError, KeyError, TypeError: From the format's library.
    """
    return backend(file_format).open(path, key, root)


def as_picklable(source: Any) -> Any:
    """A picklable equivalent of ``source``: an ``h5py.Dataset`` becomes an ``H5Source``
    (file name and key); anything else (numpy and zarr arrays, sources, views) is itself."""
    found = backend_of(source)
    return source if found is None else found.as_picklable(source)


def chunk_rows(source: Any) -> int | None:
    """Rows per storage chunk along the first axis of ``source``; None if it has no chunks.

    Chunk ``n`` holds rows ``[n * rows, (n + 1) * rows)`` (fewer in the last one) and is
    decoded whole whenever any of its rows is read: the unit a reader should plan its
    reads in. None for contiguous HDF5 datasets, in-memory arrays and array-likes of no
    known format (views). A wrapper that knows its layout (``CachedSource``) answers for
    itself through its ``chunk_rows()`` method.
    """
    found = backend_of(source)
    if found is not None:
        return found.chunk_rows(source)
    own = getattr(source, "chunk_rows", None)
    return own() if callable(own) else None


def close_source(source: Any) -> None:
    """Release this process's file handle on ``source``, if its format keeps one."""
    found = backend_of(source)
    if found is not None:
        found.close(source)

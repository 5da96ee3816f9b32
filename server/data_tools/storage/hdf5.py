"""The HDF5 storage backend (h5py): picklable, confined sources, chunk decoding, writing.

``H5Source`` stands in for an ``h5py.Dataset``, which holds an open file handle and cannot
be pickled; it opens the file confined to a root directory by name and by content (see
``data_tools.storage.confine``). ``BACKEND`` is the format's ``StorageBackend``.
"""

from __future__ import annotations

import math
import os
import posixpath
import threading
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import numpy.typing as npt

from data_tools.errors import SourceChangedError
from data_tools.storage.base import (
    COMPLETE_ATTRIBUTE,
    UNREADABLE,
    ArrayTarget,
    StorageBackend,
    check_existing,
)
from data_tools.storage.confine import fd_path, open_confined

if TYPE_CHECKING:
    from collections.abc import Hashable, Mapping
    from pathlib import Path

    from data_tools.storage.confine import Root

__all__ = ["BACKEND", "H5Source", "HDF5Backend"]


class H5Source:
    """A read-only HDF5 dataset described by its file name and key, safe to pickle.

    An ``h5py.Dataset`` cannot be pickled, and a handle inherited across ``fork`` shares
    HDF5 library state with the parent. An ``H5Source`` instead opens the file itself, in
    mode ``"r"``, on first use, and caches the handle per process: a process that did not
    open the cached handle (a forked child, or anything that unpickled the source) opens
    its own, as fsspec's ``_Cached`` does with its pid check. Pickling drops the handle.

    Indexing delegates to the dataset, so it accepts whatever ``h5py.Dataset`` accepts.
    ``read_chunk`` reads one storage chunk, decoding gzip chunks outside the GIL.

    With a ``root``, every opening (the first, and each process's own) is confined to it
    (see ``data_tools.storage.confine``): the file is opened first and the open descriptor checked
    to lie inside the root, h5py then opens that very descriptor, and the dataset is
    refused if reaching or reading it would leave the file: an external link on the way to
    ``key``, a virtual dataset, or external raw storage.

    Args:
        filename: Path of the HDF5 file.
        key: Path of the dataset inside the file (for example ``"/images"``).
        root: The directory the file and everything it reads must lie in. Default None:
            not confined (a library user's own files).

    Raises:
        TypeError: On first use, if ``key`` names a group rather than a dataset.
        FileNotFoundError, OSError, KeyError: On first use, from h5py, if the file or the
            key does not exist.
        ConfinementError: On any opening with a ``root``, if the file or its content
            would read from outside it.
    """

    def __init__(
        self, filename: str | os.PathLike[str], key: str, root: Root | None = None
    ) -> None:
        self.filename = os.fspath(filename)
        self.key = key
        self.root = root
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
        root = "" if self.root is None else f", root={self.root!r}"
        return f"H5Source({self.filename!r}, {self.key!r}{root})"

    def _get_dataset(self) -> Any:
        """Return this process's dataset handle, opening the file if needed."""
        pid = os.getpid()
        if self._dataset is not None and self._pid == pid:
            return self._dataset
        with self._lock:
            if self._dataset is None or self._pid != pid:
                # A handle from another process is dropped, never closed: closing it
                # here could flush or invalidate state the other process still uses.
                handle, self._stamp = self._open_file()
                try:
                    dataset = self._open_dataset(handle)
                except BaseException:
                    handle.close()
                    raise
                self._file, self._dataset, self._pid = handle, dataset, pid
                chunks = None if dataset.chunks is None else tuple(dataset.chunks)
                self._meta = (tuple(dataset.shape), dataset.dtype, chunks)
            return self._dataset

    def _open_file(self) -> tuple[Any, tuple[int, ...]]:
        """The open file and the stamp of what was opened (checked against the path later)."""
        if self.root is None:
            return h5py.File(self.filename, "r"), _file_stamp(self.filename)
        fd = open_confined(self.root, self.filename)
        try:
            # h5py opens the verified descriptor itself (its magic link), not the path.
            return h5py.File(fd_path(fd), "r"), _stamp(os.fstat(fd))
        finally:
            os.close(fd)  # h5py holds its own descriptor of the same file

    def _open_dataset(self, handle: Any) -> Any:
        if self.root is None:
            dataset = handle[self.key]
        else:
            dataset = _confined_dataset(handle, self.key, self.root, self.filename)
        if not isinstance(dataset, h5py.Dataset):
            raise TypeError(
                f"Expected key to name an HDF5 dataset in {self.filename!r}. "
                f"Got {self.key!r}, a {type(dataset).__name__}, instead."
            )
        return dataset

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
        return {"filename": self.filename, "key": self.key, "root": self.root, "meta": self._meta}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.filename = state["filename"]
        self.key = state["key"]
        self.root = state["root"]
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
    return _stamp(os.stat(path))


def _stamp(stat: os.stat_result) -> tuple[int, ...]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


# HDF5 itself stops after this many soft links on one path (H5L_NUM_LINKS).
_MAX_SOFT_LINKS = 16


def _confined_dataset(handle: Any, key: str, root: Root, filename: str) -> Any:
    """The object at ``key``, refused if reaching or reading it would leave ``handle``'s file.

    The path is walked link by link, so an external link is refused before HDF5 would
    open (or block on) the file it names; soft links are followed inside the file. The
    dataset found may not be virtual nor keep its raw data in external files.
    """
    found = _walk_links(handle, key, root, filename, hops=0)
    if isinstance(found, h5py.Dataset):
        if found.is_virtual:
            raise root.refuse(filename, f"{key!r}, an HDF5 virtual dataset,")
        if found.external:
            raise root.refuse(filename, f"{key!r}, a dataset stored in external raw files,")
    return found


def _walk_links(handle: Any, key: str, root: Root, filename: str, *, hops: int) -> Any:
    node = handle["/"]
    for name in (part for part in key.split("/") if part and part != "."):
        if not isinstance(node, h5py.Group):
            raise KeyError(f"Unable to open object ({node.name!r} is not a group) in {key!r}")
        link = node.get(name, getlink=True)
        if link is None:
            raise KeyError(f"Unable to open object (object {name!r} doesn't exist) in {key!r}")
        if isinstance(link, h5py.SoftLink):
            if hops == _MAX_SOFT_LINKS:
                raise KeyError(f"Unable to open object (too many soft links) in {key!r}")
            target = posixpath.join(node.name, link.path)
            node = _walk_links(handle, target, root, filename, hops=hops + 1)
        elif isinstance(link, h5py.HardLink):
            node = node[name]
        else:  # an external link, or a user-defined kind HDF5 resolves by its own rules
            raise root.refuse(filename, f"an HDF5 external link at {key!r}")
    return node


class _H5Target(ArrayTarget):
    """An HDF5 dataset open for writing in its file (``HDF5Backend.create``)."""

    def __init__(self, file: Any, array: Any) -> None:
        super().__init__(array)
        self.file = file

    def sync(self) -> None:
        self.file.flush()

    def mark(self, complete: bool) -> None:
        self.array.attrs[COMPLETE_ATTRIBUTE] = complete
        self.file.flush()

    def release(self) -> None:
        self.file.close()

    def set_root_attrs(self, attrs: Mapping[str, str]) -> None:
        self.file.attrs.update(attrs)


def _dataset_to_write(
    file: Any,
    name: str,
    element_shape: tuple[int, ...],
    dtype: np.dtype[Any],
    append: bool,
    options: dict[str, Any],
) -> Any:
    """The dataset to continue (appending, when it exists) or a new, empty one."""
    dataset = file.get(name) if append else None
    if dataset is None:
        return file.create_dataset(
            name, shape=(0, *element_shape), maxshape=(None, *element_shape), dtype=dtype, **options
        )
    if not isinstance(dataset, h5py.Dataset):
        raise TypeError(f"Expected array_name to name a dataset in {file.filename}. Got a group.")
    check_existing("HDF5 dataset", dataset, element_shape, dtype)
    return dataset


class HDF5Backend(StorageBackend):
    """HDF5 files read and written with h5py; arrays are datasets named by their key."""

    name = "hdf5"
    reserved_options = frozenset({"name", "shape", "maxshape", "dtype", "data"})
    request_options = frozenset(
        {"chunks", "compression", "compression_opts", "shuffle", "fletcher32", "scaleoffset"}
    )

    def open(self, path: Path, key: str | None, root: Root | None) -> H5Source:
        if key is None:
            raise TypeError("Expected the HDF5 dataset's key. Got None instead.")
        return H5Source(path, key, root)

    def as_picklable(self, source: Any) -> Any:
        """An ``h5py.Dataset`` becomes ``H5Source(file name, dataset name)``."""
        if isinstance(source, h5py.Dataset):
            return H5Source(source.file.filename, source.name)
        return source

    def chunk_rows(self, source: Any) -> int | None:
        chunks = source.chunks
        return None if chunks is None else int(chunks[0])

    def read_chunk(self, source: Any, number: int) -> npt.NDArray[Any]:
        if isinstance(source, H5Source):
            return source.read_chunk(number)  # gzip decoded outside the GIL
        return super().read_chunk(source, number)

    def read_rows(
        self, source: Any, rows: npt.NDArray[np.intp], trailing: tuple[Any, ...] = ()
    ) -> npt.NDArray[Any]:
        # Separate reads per contiguous run: multi-run selections of chunked datasets are slower.
        from data_tools._indexing import contiguous_runs

        return np.concatenate([source[(run, *trailing)] for run in contiguous_runs(rows)])

    def location(self, source: Any) -> tuple[Hashable, ...]:
        return (os.path.abspath(source.filename), source.key)

    def version(self, source: Any) -> Hashable | None:
        try:
            return _file_stamp(source.filename)
        except FileNotFoundError:
            # The source raises SourceChangedError if it had the file open, as uncached.
            source[:0]
            raise

    def changed(self, source: Any) -> SourceChangedError:
        return SourceChangedError(
            f"HDF5 file {source.filename!r} changed while open (while a chunk was read from "
            "it); the data read cannot be trusted. Read again once the file is complete."
        )

    def close(self, source: Any) -> None:
        if isinstance(source, H5Source):
            source.close()

    def default_options(
        self, batch_size: int, element_shape: tuple[int, ...], length: int | None
    ) -> dict[str, Any]:
        return {"chunks": (batch_size, *element_shape), "compression": "lzf"}

    def create(
        self,
        path: str,
        name: str | None,
        element_shape: tuple[int, ...],
        dtype: np.dtype[Any],
        append: bool,
        options: dict[str, Any],
    ) -> _H5Target:
        assert name is not None
        file = h5py.File(path, "a" if append else "w")
        try:
            dataset = _dataset_to_write(file, name, element_shape, dtype, append, options)
        except BaseException:
            file.close()
            raise
        return _H5Target(file, dataset)

    def holds(self, path: str) -> bool:
        return os.path.isfile(path)

    def is_complete(self, path: str, array_name: str | None) -> bool:
        try:
            with h5py.File(path, "r") as file:
                if array_name is None:
                    datasets: list[h5py.Dataset] = []
                    file.visititems(
                        lambda _, obj: (
                            datasets.append(obj) if isinstance(obj, h5py.Dataset) else None
                        )
                    )
                else:
                    found = file.get(array_name)
                    datasets = [found] if isinstance(found, h5py.Dataset) else []
                return bool(datasets) and all(
                    bool(d.attrs.get(COMPLETE_ATTRIBUTE, False)) for d in datasets
                )
        except UNREADABLE:
            return False

    def read_root_attrs(self, path: str) -> Mapping[str, Any]:
        with h5py.File(path, "r") as file:
            return dict(file.attrs)


BACKEND = HDF5Backend()

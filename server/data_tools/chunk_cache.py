"""A bounded, thread-safe LRU cache of decoded storage chunks, and sources that read through it.

Several readers of one chunked source in one process (the io threads of the streams of a
data node) decode each storage chunk once while it stays cached, instead of once per
reader. ``cached(source, cache)`` wraps an HDF5 dataset, zarr array or bcolz carray in a
``CachedSource``, which answers every read by assembling rows from whole chunks along the
first axis, each fetched from the ``ChunkCache``.

Scope: one process. A ``CachedSource`` pickles to its bare source, so worker processes
that read for themselves (``data_flow(nb_proc_workers > 0)``) read uncached and the cache's
budget is never multiplied by the number of processes; with ``shared_reads=True`` data_flow
reads in this process, through the cache, and the workers only preprocess.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass
from numbers import Integral
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from data_tools._parse import parse_non_negative_int, parse_positive_int
from data_tools.storage import as_picklable, backend_of

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Hashable

__all__ = ["CacheStats", "CachedSource", "ChunkCache", "cached"]

# Tells apart the sources wrapped in this process, so that a store rewritten at the same
# path and opened again (a rebuilt job output) never meets the chunks of the old one.
_OPENS = itertools.count()


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a cache's counters.

    Attributes:
        hits: Chunk lookups served from the cache (or by waiting for another thread that
            was reading the same chunk).
        misses: Chunk lookups that read and decoded the chunk from storage.
        evictions: Chunks dropped to stay within ``max_bytes``.
        nbytes: Bytes of decoded chunks held now.
        max_bytes: The budget.
    """

    hits: int
    misses: int
    evictions: int
    nbytes: int
    max_bytes: int


class _Load:
    """A chunk one thread is reading; the threads missing it meanwhile wait for ``done``."""

    __slots__ = ("chunk", "done")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.chunk: npt.NDArray[Any] | None = None  # None once done: the read failed


class ChunkCache:
    """Decoded chunks of any number of sources, within ``max_bytes``, least recently used out.

    ``get(key, load)`` returns the chunk cached under ``key`` or calls ``load()`` to read
    it. Reads are single-flight: when several threads miss the same key at once, one reads
    and the others wait for its chunk. No lock is held while a chunk is read, so different
    chunks are read in parallel. Cached chunks are read-only arrays. A chunk larger than the
    whole budget is returned but not kept. Safe to use from any number of threads.

    Args:
        max_bytes: Bytes of decoded chunks kept, >= 0. With 0 nothing is kept (reads of the
            same chunk at the same time are still shared).

    Raises:
        TypeError: ``max_bytes`` is not an integer.
        ValueError: ``max_bytes`` is negative.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = parse_non_negative_int("max_bytes", max_bytes)
        # Guards every attribute below; never held while a chunk is read or awaited.
        self._lock = threading.Lock()
        self._chunks: OrderedDict[Hashable, npt.NDArray[Any]] = OrderedDict()
        self._loading: dict[Hashable, _Load] = {}
        self._hits = self._misses = self._evictions = self._nbytes = 0

    def __repr__(self) -> str:
        return f"ChunkCache(max_bytes={self.max_bytes})"

    def get(self, key: Hashable, load: Callable[[], npt.ArrayLike]) -> npt.NDArray[Any]:
        """Return the chunk cached under ``key``, reading it with ``load()`` on a miss.

        Args:
            key: What identifies the chunk among every source using this cache.
            load: Reads and decodes the chunk; called by at most one thread at a time per
                key, without any lock held.

        Returns:
            The chunk, read-only. Never modify it through another reference.

        Raises:
            Exception: Whatever ``load()`` raises, in the thread that called it; threads
                that were waiting for that read try again.
        """
        while True:
            with self._lock:
                chunk = self._chunks.get(key)
                if chunk is not None:
                    self._chunks.move_to_end(key)
                    self._hits += 1
                    return chunk
                pending = self._loading.get(key)
                if pending is None:
                    pending = self._loading[key] = _Load()
                    self._misses += 1
                    break
            pending.done.wait()
            if pending.chunk is not None:
                with self._lock:
                    self._hits += 1
                return pending.chunk
        try:
            chunk = np.asarray(load())
            chunk.flags.writeable = False
        except BaseException:
            with self._lock:
                del self._loading[key]
            pending.done.set()
            raise
        with self._lock:
            del self._loading[key]
            self._keep(key, chunk)
        pending.chunk = chunk
        pending.done.set()
        return chunk

    def _lookup(self, keys: list[Hashable]) -> list[npt.NDArray[Any] | None]:
        """The chunks cached under ``keys`` (None where not cached), in one lock round trip.

        Each chunk found counts as a hit and becomes the most recently used; look up the
        others with ``get``.
        """
        with self._lock:
            found = [self._chunks.get(key) for key in keys]
            for key, chunk in zip(keys, found, strict=True):
                if chunk is not None:
                    self._chunks.move_to_end(key)
                    self._hits += 1
        return found

    def _keep(self, key: Hashable, chunk: npt.NDArray[Any]) -> None:
        """Cache ``chunk`` and evict least recently used ones down to the budget (lock held)."""
        if chunk.nbytes > self.max_bytes:
            return
        self._chunks[key] = chunk
        self._nbytes += chunk.nbytes
        while self._nbytes > self.max_bytes:
            _, evicted = self._chunks.popitem(last=False)
            self._nbytes -= evicted.nbytes
            self._evictions += 1

    def discard(self, sources: Collection[Hashable]) -> int:
        """Drop every cached chunk of the sources whose ``CachedSource.key`` is in ``sources``.

        Returns:
            The number of chunks dropped.
        """
        with self._lock:
            # Keys of CachedSource chunks are (source key, version, chunk number).
            doomed = [k for k in self._chunks if isinstance(k, tuple) and k[0] in sources]
            for key in doomed:
                self._nbytes -= self._chunks.pop(key).nbytes
        return len(doomed)

    def stats(self) -> CacheStats:
        """The counters now."""
        with self._lock:
            return CacheStats(
                self._hits, self._misses, self._evictions, self._nbytes, self.max_bytes
            )


class CachedSource:
    """An array-like that reads a chunked source through a ``ChunkCache``, whole chunks at a time.

    Every read is assembled from the source's chunks along the first axis (rows
    ``[n * chunk_length, (n + 1) * chunk_length)`` form chunk ``n``), each fetched from the
    cache under ``(key, version, n)`` and read from the source on a miss (an ``H5Source``
    chunked by ``chunk_length`` rows reads it with ``H5Source.read_chunk``, so io threads
    missing different gzip chunks decompress them in parallel). It accepts the
    keys views and data_flow use: an integer, a slice or a 1-D integer array (sorted or
    not, repeats allowed) on the first axis, then integers, slices or an Ellipsis on the
    others. Any other key (a boolean mask, an index array on a later axis) is numpy's,
    applied to the whole array read at once. Reads return new, writable arrays.

    Changed HDF5 files: each read takes the file's stamp (device, inode, size, mtime) once,
    hits included, and uses it as the ``version`` in its chunk keys; a chunk is cached only
    if the file still has that stamp after the chunk was read. So a file replaced or
    rewritten while served never meets its old chunks: the next read misses, reads through
    the ``H5Source``, which raises ``SourceChangedError`` once and then serves the new
    file, as uncached reads do. A deleted file raises ``SourceChangedError`` (or
    ``FileNotFoundError`` if the source never opened it).

    Pickling yields the bare source: a copy in a worker process reads uncached, so the
    budget is spent once per process that holds the cache, never per worker.

    Attributes:
        source: The source read on a miss.
        cache: The cache.
        key: What identifies the source's chunks in the cache.
        chunk_length: Rows per chunk (the storage chunk's first-axis length).

    Args:
        source: An ``H5Source``, zarr array, bcolz carray or anything with ``shape``,
            ``dtype`` and slicing along the first axis.
        cache: The cache to read through.
        key: Hashable; unique among the sources sharing ``cache``.
        chunk_length: Rows per chunk, >= 1.

    Raises:
        TypeError: ``chunk_length`` is not an integer.
        ValueError: ``chunk_length`` is less than 1.
    """

    def __init__(self, source: Any, cache: ChunkCache, key: Hashable, chunk_length: int) -> None:
        self.source = source
        self.cache = cache
        self.key = key
        self.chunk_length = parse_positive_int("chunk_length", chunk_length)
        self._backend = backend_of(source)

    def __repr__(self) -> str:
        return f"CachedSource({self.source!r}, chunk_length={self.chunk_length})"

    @property
    def shape(self) -> tuple[int, ...]:
        """The source's shape."""
        return tuple(int(size) for size in self.source.shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The source's dtype."""
        dtype: np.dtype[Any] = np.dtype(self.source.dtype)
        return dtype

    @property
    def ndim(self) -> int:
        """The source's number of dimensions."""
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def chunk_rows(self) -> int:
        """Rows per chunk: ``chunk_length`` (what ``data_tools.storage.chunk_rows`` answers)."""
        return self.chunk_length

    def __reduce__(self) -> tuple[Callable[[Any], Any], tuple[Any]]:
        return _bare, (self.source,)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> npt.NDArray[Any]:
        if copy is False:
            raise ValueError("A cached read makes a new array; copy=False cannot be honoured.")
        data = self._read_range(0, len(self), ())
        return data if dtype is None else data.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> Any:
        items = key if isinstance(key, tuple) else (key,)
        if items and all(_is_basic(item) for item in items[1:]):
            first, trailing = items[0], items[1:]
            length = len(self)
            if isinstance(first, slice):
                start, stop, step = first.indices(length)
                if step == 1:
                    return self._read_range(start, max(start, stop), trailing)
                return self._read_rows(np.arange(start, stop, step), trailing)
            if _is_integer(first):
                row = _in_bounds(np.array([first], dtype=np.intp), length)[0]
                return self._read_range(row, row + 1, trailing)[0]
            rows = _as_index_array(first)
            if rows is not None:
                return self._read_rows(_in_bounds(rows, length), trailing)
        return self._read_range(0, len(self), ())[key]

    def _read_range(self, start: int, stop: int, trailing: tuple[Any, ...]) -> npt.NDArray[Any]:
        """Rows ``[start, stop)`` (``start <= stop``), each restricted to ``trailing``."""
        version = self._version()
        size = self.chunk_length
        pieces = []
        for number in range(start // size, -(-stop // size) if start < stop else 0):
            base = number * size
            rows = slice(max(start, base) - base, min(stop, base + size) - base)
            pieces.append(self._chunk(number, version)[(rows, *trailing)])
        return self._joined(pieces, trailing)

    def _read_rows(self, rows: npt.NDArray[np.intp], trailing: tuple[Any, ...]) -> npt.NDArray[Any]:
        """Rows ``rows`` (in range, any order, repeats allowed), each restricted to ``trailing``.

        Each chunk the rows touch is fetched once and its rows are gathered straight into
        the result, in row order, then put in the order asked if that is another.
        """
        version = self._version()
        if not len(rows):
            return self._joined([], trailing)
        in_order = bool((rows[1:] >= rows[:-1]).all())
        order = None if in_order else np.argsort(rows, kind="stable")
        ordered = rows if order is None else rows[order]
        numbers = ordered // self.chunk_length
        local = ordered - numbers * self.chunk_length
        starts = [0, *(np.flatnonzero(numbers[1:] != numbers[:-1]) + 1).tolist()]
        chunks = self._chunks(numbers[starts].tolist(), version)
        gathered: npt.NDArray[Any] | None = None
        for begin, end, chunk in zip(starts, [*starts[1:], len(rows)], chunks, strict=True):
            part = chunk[(slice(None), *trailing)] if trailing else chunk
            if gathered is None:
                gathered = np.empty((len(rows), *part.shape[1:]), part.dtype)
            # "clip" (the rows are in range) lets take write into ``out`` unbuffered.
            part.take(local[begin:end], axis=0, out=gathered[begin:end], mode="clip")
        assert gathered is not None
        if order is None:
            return gathered
        result = np.empty_like(gathered)
        result[order] = gathered
        return result

    def _joined(
        self, pieces: list[npt.NDArray[Any]], trailing: tuple[Any, ...]
    ) -> npt.NDArray[Any]:
        """One new array of ``pieces`` (parts of cached chunks) along the first axis."""
        if not pieces:
            empty: npt.NDArray[Any] = np.empty((0, *self.shape[1:]), self.dtype)
            return empty[(slice(None), *trailing)]
        # A writable piece is a copy (fancy indexing); a read-only one views a cached chunk.
        if len(pieces) == 1 and pieces[0].flags.writeable:
            return pieces[0]
        # The dtype as stored: numpy would make a big-endian one native.
        return np.concatenate(pieces, dtype=pieces[0].dtype)

    def _chunks(self, numbers: list[int], version: Hashable | None) -> list[npt.NDArray[Any]]:
        """Chunks ``numbers``: the cached ones looked up at once, then the others read."""
        found = self.cache._lookup([(self.key, version, number) for number in numbers])
        return [
            self._chunk(number, version) if chunk is None else chunk
            for number, chunk in zip(numbers, found, strict=True)
        ]

    def _chunk(self, number: int, version: Hashable | None) -> npt.NDArray[Any]:
        return self.cache.get(
            (self.key, version, number), lambda: self._load_chunk(number, version)
        )

    def _load_chunk(self, number: int, version: Hashable | None) -> npt.NDArray[Any]:
        source, found = self.source, self._backend
        data: npt.NDArray[Any]
        if found is not None and found.chunk_rows(source) == self.chunk_length:
            data = found.read_chunk(source, number)  # HDF5: gzip decoded outside the GIL
        else:
            start = number * self.chunk_length
            data = np.asarray(source[start : start + self.chunk_length])
        if version is not None and self._version() != version:
            assert found is not None
            raise found.changed(source)
        return data

    def _version(self) -> Hashable | None:
        """The stored content's version now (an HDF5 file's stamp), or None if not checked.

        Raises:
            SourceChangedError: The file was deleted after the source opened it.
            FileNotFoundError: The file does not exist (and the source never opened it).
        """
        return None if self._backend is None else self._backend.version(self.source)


def _bare(source: Any) -> Any:
    """Unpickle a ``CachedSource`` as its bare source."""
    return source


def _is_integer(item: Any) -> bool:
    return isinstance(item, Integral) and not isinstance(item, bool | np.bool_)


def _is_basic(item: Any) -> bool:
    """Whether ``item`` indexes a later axis without fancy indexing: an int, slice or Ellipsis."""
    return item is Ellipsis or isinstance(item, slice) or _is_integer(item)


def _as_index_array(item: Any) -> npt.NDArray[np.intp] | None:
    """``item`` as a 1-D integer index array, or None if it is not one."""
    if not isinstance(item, list | np.ndarray):
        return None
    rows = np.asarray(item)
    if rows.ndim == 1 and (rows.dtype.kind in "iu" or (isinstance(item, list) and not item)):
        return rows.astype(np.intp)
    return None


def _in_bounds(rows: npt.NDArray[np.intp], length: int) -> npt.NDArray[np.intp]:
    """``rows`` with negative indices counted from ``length``; IndexError if out of range."""
    bad = (rows < -length) | (rows >= length)
    if bad.any():
        raise IndexError(
            f"index {int(rows[bad][0])} is out of bounds for axis 0 with size {length}"
        )
    return np.where(rows < 0, rows + length, rows)


def cached(source: Any, cache: ChunkCache) -> Any:
    """Return ``source`` reading through ``cache``, or ``source`` itself if nothing is decoded.

    A source whose storage backend reports a chunk layout (``data_tools.storage``:
    ``chunk_rows``, ``read_chunk``) becomes a ``CachedSource`` whose chunk length is the
    storage chunk's first-axis length: chunked HDF5 datasets (``h5py.Dataset`` or
    ``H5Source``; a ``h5py.Dataset`` is reopened as an ``H5Source``), zarr arrays (the inner
    chunk of a sharded array), bcolz carrays, medical images (one chunk: the image).
    Contiguous HDF5 datasets, numpy arrays and anything else are returned unchanged. Each
    call wraps afresh: its chunks are keyed by the store's location (the backend's
    ``location``: file and dataset key, store and array path, rootdir) and a number unique
    to the call, so two wrappings
    of one array never share chunks, and a store rewritten in place is not served from
    the chunks of its earlier opening.

    Args:
        source: The array to read through the cache.
        cache: The cache.

    Returns:
        A ``CachedSource`` or ``source``.

    Raises:
        FileNotFoundError, OSError, KeyError, TypeError: From opening an ``H5Source``
            that does not name an HDF5 dataset.
    """
    source = as_picklable(source)
    found = backend_of(source)
    rows = None if found is None else found.chunk_rows(source)
    if found is None or rows is None:
        return source
    location = (found.name, *found.location(source))
    return CachedSource(source, cache, (*location, next(_OPENS)), rows)

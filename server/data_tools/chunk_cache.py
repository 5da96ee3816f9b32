"""A bounded, thread-safe cache of decoded storage chunks, and sources that read through it.

Several readers of one chunked source in one process (the io threads of the streams of a
data node) decode each storage chunk once while it stays cached, instead of once per
reader. ``cached(source, cache)`` wraps an HDF5 dataset, zarr array or bcolz carray in a
``CachedSource``, which answers every read by assembling rows from whole chunks along the
first axis, each fetched from the ``ChunkCache``.

Known future: a stream whose order is known ahead (a data_flow's is a pure function of its
plan) registers the chunk reads it will make (``following_reads``); the cache then evicts
the chunk whose next use over all registered streams is farthest away (Belady's rule)
rather than the least recently used one, and decodes chunks ahead of need on idle threads.
Without registered streams it is an LRU cache.

Scope: one process. A ``CachedSource`` pickles to its bare source, so worker processes
that read for themselves (``data_flow(nb_proc_workers > 0)``) read uncached and the cache's
budget is never multiplied by the number of processes; with ``shared_reads=True`` data_flow
reads in this process, through the cache, and the workers only preprocess.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from numbers import Integral
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from data_tools._known_future import DEFAULT_HORIZON, StreamReads, optimal_decodes
from data_tools._parse import parse_non_negative_int, parse_positive_int
from data_tools.storage import as_picklable, backend_of
from data_tools.wrap import delayed_view

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Iterator, Sequence

__all__ = [
    "CacheStats",
    "CachedSource",
    "ChunkCache",
    "ChunkKey",
    "ChunkRead",
    "StreamReads",
    "cache_of",
    "cached",
    "chunk_reads",
    "following_reads",
    "optimal_decodes",
    "reading_for",
]

# Tells apart the sources wrapped in this process, so that a store rewritten at the same
# path and opened again (a rebuilt job output) never meets the chunks of the old one.
_OPENS = itertools.count()


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a cache's counters.

    Attributes:
        hits: Chunk lookups served from the cache (or by waiting for another thread that
            was reading the same chunk).
        misses: Chunks read and decoded from storage: by a lookup that missed, or ahead
            of need (``decoded_ahead``).
        evictions: Chunks dropped to stay within ``max_bytes``.
        nbytes: Bytes of decoded chunks held now.
        max_bytes: The budget.
        decoded_ahead: Of ``misses``, the chunks decoded ahead of need for a registered
            stream (a lookup waiting for one counts as a hit). Default 0.
    """

    hits: int
    misses: int
    evictions: int
    nbytes: int
    max_bytes: int
    decoded_ahead: int = 0


class ChunkKey(NamedTuple):
    """The cache key of a ``CachedSource``'s chunk: which source, which version, which chunk."""

    source: Hashable
    version: Hashable | None
    number: int

    @property
    def chunk_id(self) -> tuple[Hashable, int]:
        """The chunk whatever the version: what a stream's foreseen reads name."""
        return self.source, self.number


class _Load:
    """A chunk one thread is reading; the threads missing it meanwhile wait for ``done``."""

    __slots__ = ("chunk", "done")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.chunk: npt.NDArray[Any] | None = None  # None once done: the read failed


_NEVER = math.inf
# Foreseen reads a decode-ahead thread looks through, per stream, for a chunk to decode.
_AHEAD_SCAN = 4096
_AHEAD_JOIN_S = 2.0
_AHEAD_POLL_S = 0.1
# Decode-ahead threads run at this niceness (Linux): they take the cores the readers leave.
_AHEAD_NICENESS = 10
# Errors of decodes ahead kept for the reads of their chunks; while this many wait, nothing
# more is decoded ahead (readers then decode, and meet any error, themselves).
_MAX_FAILED = 64
logger = logging.getLogger(__name__)


# Rows and batches whose chunk reads are found at once, as a stream's window moves (a few
# milliseconds).
_PLAN_ROWS = 2048
_PLAN_BATCHES = 64
_Held = TypeVar("_Held", npt.NDArray[Any], _Load, Exception)


def _chunk_id(key: Hashable) -> Hashable:
    return key.chunk_id if isinstance(key, ChunkKey) else key


class ChunkCache:
    """Decoded chunks of any number of sources, within ``max_bytes``.

    ``get(key, load)`` returns the chunk cached under ``key`` or calls ``load()`` to read
    it. Reads are single-flight: when several threads miss the same key at once, one reads
    and the others wait for its chunk. No lock is held while a chunk is read, so different
    chunks are read in parallel. Cached chunks are read-only arrays. A chunk larger than the
    whole budget is returned but not kept. Safe to use from any number of threads.

    Eviction: with no stream registered, the least recently used chunk goes first. While
    streams are registered (``register``, or ``following_reads``), the chunk whose next
    foreseen read over all of them is farthest away goes first (Belady's rule), a chunk no
    stream foresees before any other (least recently used first among them); a chunk just
    read is not kept when every cached chunk is needed sooner. Meanwhile ``decode_ahead``
    threads (niced, so they use idle cores) decode the chunks the streams will read next,
    soonest first, and only when that evicts nothing needed sooner than what they decode.
    A decode ahead that fails keeps its error for the next ``get`` of that chunk (any
    version, any reader), which raises it rather than decoding: an error a source raises
    only once (an HDF5 file replaced while open) reaches a reader, never the thread alone.

    Args:
        max_bytes: Bytes of decoded chunks kept, >= 0. With 0 nothing is kept (reads of the
            same chunk at the same time are still shared).
        decode_ahead: Threads that decode chunks ahead of need while streams are
            registered, >= 0. Default 0: none. They start with the first stream registered
            and stop when the last one leaves.

    Raises:
        TypeError: ``max_bytes`` or ``decode_ahead`` is not an integer.
        ValueError: ``max_bytes`` or ``decode_ahead`` is negative.
    """

    def __init__(self, max_bytes: int, *, decode_ahead: int = 0) -> None:
        self.max_bytes = parse_non_negative_int("max_bytes", max_bytes)
        self.decode_ahead = parse_non_negative_int("decode_ahead", decode_ahead)
        # Guards every attribute below; never held while a chunk is read or awaited.
        # Decode-ahead threads wait on ``_wake`` (same lock) for work.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._chunks: OrderedDict[Hashable, npt.NDArray[Any]] = OrderedDict()
        self._loading: dict[Hashable, _Load] = {}
        # Errors of decodes ahead, by chunk id, until a read of the chunk raises them.
        self._failed: dict[Hashable, Exception] = {}
        self._hits = self._misses = self._evictions = self._nbytes = self._ahead = 0
        self._streams: list[StreamReads] = []
        self._ahead_threads: list[threading.Thread] = []
        self._ahead_stop = threading.Event()
        self._ahead_nbytes = 0  # bytes being decoded ahead now, reserved in the budget
        # How many entries of _chunks and _loading each chunk id has (any version).
        self._present: dict[Hashable, int] = {}

    def __repr__(self) -> str:
        return f"ChunkCache(max_bytes={self.max_bytes})"

    def get(
        self,
        key: Hashable,
        load: Callable[[], npt.ArrayLike],
        reads: StreamReads | None = None,
    ) -> npt.NDArray[Any]:
        """Return the chunk cached under ``key``, reading it with ``load()`` on a miss.

        Args:
            key: What identifies the chunk among every source using this cache.
            load: Reads and decodes the chunk; called by at most one thread at a time per
                key, without any lock held.
            reads: The registered stream making this read, or None (default): the read
                then moves no stream along its foreseen reads.

        Returns:
            The chunk, read-only. Never modify it through another reference.

        Raises:
            Exception: Whatever ``load()`` raises, in the thread that called it; threads
                that were waiting for that read try again. Or what decoding this chunk
                ahead raised (once: the read after this one decodes it).
        """
        with self._lock:
            self._consume(reads, key)
        while True:
            with self._lock:
                if _chunk_id(key) in self._failed:
                    raise self._unmark(self._failed, _chunk_id(key))
                chunk = self._chunks.get(key)
                if chunk is not None:
                    self._chunks.move_to_end(key)
                    self._hits += 1
                    return chunk
                pending = self._loading.get(key)
                if pending is None:
                    pending = self._mark(self._loading, key, _Load())
                    self._misses += 1
                    break
            pending.done.wait()
            if pending.chunk is not None:
                with self._lock:
                    self._hits += 1
                return pending.chunk
        return self._load(key, load, pending, reads)

    def _load(
        self,
        key: Hashable,
        load: Callable[[], npt.ArrayLike],
        pending: _Load,
        reads: StreamReads | None,
        reserved: int | None = None,
    ) -> npt.NDArray[Any]:
        """Read the chunk ``pending`` stands for, keep it and wake its waiters.

        ``reserved``: decoding ahead, the bytes of the budget set aside for it, freed here;
        an error is then also kept for the chunk's next read, before its waiters wake.
        """
        try:
            chunk = np.asarray(load())
            chunk.flags.writeable = False
        except BaseException as error:
            with self._lock:
                self._ahead_nbytes -= reserved or 0
                self._unmark(self._loading, key)
                if reserved is not None and isinstance(error, Exception):
                    self._mark(self._failed, _chunk_id(key), error)
            pending.done.set()
            raise
        with self._lock:
            self._ahead_nbytes -= reserved or 0
            self._unmark(self._loading, key)
            self._keep(key, chunk)
            if reads is not None:
                reads.decoded_bytes += chunk.nbytes
        pending.chunk = chunk
        pending.done.set()
        return chunk

    def _lookup(
        self, keys: list[Hashable], reads: StreamReads | None = None
    ) -> list[npt.NDArray[Any] | None]:
        """The chunks cached under ``keys`` (None where not cached), in one lock round trip.

        Each chunk found counts as a hit, as a read of ``reads`` and becomes the most
        recently used; look up the others with ``get``.
        """
        with self._lock:
            found = [self._chunks.get(key) for key in keys]
            for key, chunk in zip(keys, found, strict=True):
                if chunk is not None:
                    self._consume(reads, key)
                    self._chunks.move_to_end(key)
                    self._hits += 1
        return found

    def _consume(self, reads: StreamReads | None, key: Hashable) -> None:
        """Move ``reads`` past its read of ``key``, and wake decode-ahead (lock held)."""
        if reads is not None and reads.read(_chunk_id(key)):
            self._wake.notify()

    def _next_use(self, key: Hashable) -> float:
        """Reads until any registered stream reads ``key`` again; inf: none foresees it."""
        chunk_id = _chunk_id(key)
        uses = [use for s in self._streams if (use := s.next_use(chunk_id)) is not None]
        return min(uses, default=_NEVER)

    def _keep(self, key: Hashable, chunk: npt.NDArray[Any]) -> None:
        """Cache ``chunk`` and evict down to the budget (lock held)."""
        if chunk.nbytes > self.max_bytes:
            return
        self._mark(self._chunks, key, chunk)
        self._nbytes += chunk.nbytes
        while self._nbytes + self._ahead_nbytes > self.max_bytes and self._chunks:
            victim = self._farthest() if self._streams else next(iter(self._chunks))
            self._nbytes -= self._unmark(self._chunks, victim).nbytes
            # The chunk just read, needed later than all the others, was never really kept.
            self._evictions += victim != key

    def _mark(self, table: dict[Hashable, _Held], key: Hashable, value: _Held) -> _Held:
        """``table[key] = value``, counting the chunk as present (lock held)."""
        table[key] = value
        chunk_id = _chunk_id(key)
        self._present[chunk_id] = self._present.get(chunk_id, 0) + 1
        return value

    def _unmark(self, table: dict[Hashable, _Held], key: Hashable) -> _Held:
        """Remove and return ``table[key]``, counting the chunk as present once less."""
        value = table.pop(key)
        chunk_id = _chunk_id(key)
        left = self._present.pop(chunk_id) - 1
        if left:
            self._present[chunk_id] = left
        return value

    def _farthest(self) -> Hashable:
        """The cached key needed farthest away (least recently used among ties; lock held)."""
        victim: Hashable = None
        farthest = -1.0
        for key in self._chunks:  # least recently used first: ties keep the first
            use = self._next_use(key)
            if use > farthest:
                victim, farthest = key, use
                if use == _NEVER:
                    break
        return victim

    @property
    def registered(self) -> int:
        """Streams registered now (whose foreseen reads eviction follows)."""
        with self._lock:
            return len(self._streams)

    def register(self, reads: StreamReads) -> None:
        """Let eviction and decode-ahead follow ``reads`` until ``unregister(reads)``."""
        with self._lock:
            self._streams.append(reads)
            if self.decode_ahead and not self._ahead_threads:
                self._ahead_stop = threading.Event()
                self._ahead_threads = [
                    threading.Thread(
                        target=self._decode_ahead,
                        args=(self._ahead_stop,),
                        name=f"data_tools-decode-ahead-{index}",
                        daemon=True,
                    )
                    for index in range(self.decode_ahead)
                ]
                for thread in self._ahead_threads:
                    thread.start()
            self._wake.notify_all()

    def unregister(self, reads: StreamReads) -> None:
        """Forget ``reads`` (idempotent); the last one leaving stops the decode-ahead threads."""
        with self._lock:
            if reads in self._streams:
                self._streams.remove(reads)
            if self._streams:
                return
            threads, self._ahead_threads = self._ahead_threads, []
            self._ahead_stop.set()
            self._wake.notify_all()
        deadline = time.monotonic() + _AHEAD_JOIN_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.warning("thread %s did not stop within %.1f s", thread.name, _AHEAD_JOIN_S)

    def _decode_ahead(self, stop: threading.Event) -> None:
        """A decode-ahead thread: decode the soonest-needed chunk worth keeping, until ``stop``."""
        with contextlib.suppress(AttributeError, OSError):  # Linux: niceness is per thread
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _AHEAD_NICENESS)
        while not stop.is_set():
            with self._lock:
                job = self._ahead_job()
                if job is None:
                    self._wake.wait(_AHEAD_POLL_S)
                    continue
                reads, key, load, nbytes = job
                pending = self._mark(self._loading, key, _Load())
                self._ahead_nbytes += nbytes
                self._ahead += 1
                self._misses += 1
            with contextlib.suppress(Exception):  # kept for the chunk's next read
                self._load(key, load, pending, reads, nbytes)

    def _ahead_job(
        self,
    ) -> tuple[StreamReads, ChunkKey, Callable[[], Any], int] | None:
        """The chunk to decode ahead now, or None: none worth it (lock held).

        The soonest foreseen read, over the registered streams, of a chunk neither cached
        nor being read (nor failed), if the budget holds it beside what is cached, or what
        it would evict is all needed later than it.
        """
        if len(self._failed) >= _MAX_FAILED:
            return None
        best: tuple[int, StreamReads, CachedSource, int] | None = None
        for reads in self._streams:
            for distance, chunk_id, (source, number) in reads.upcoming(_AHEAD_SCAN):
                if best is not None and distance >= best[0]:
                    break
                if chunk_id not in self._present:
                    best = distance, reads, source, number
                    break
        if best is None:
            return None
        distance, reads, source, number = best
        nbytes = source.chunk_nbytes
        free = self.max_bytes - self._nbytes - self._ahead_nbytes
        if free < nbytes:
            later = sum(c.nbytes for k, c in self._chunks.items() if self._next_use(k) > distance)
            if later < nbytes - free:
                return None
        try:
            version = source._version()
        except OSError as error:  # maybe raised only once: kept for the chunk's read
            self._mark(self._failed, (source.key, number), error)
            return None
        key = ChunkKey(source.key, version, number)
        return reads, key, lambda: source._load_chunk(number, version), nbytes

    def discard(self, sources: Collection[Hashable]) -> int:
        """Drop every cached chunk of the sources whose ``CachedSource.key`` is in ``sources``.

        The errors kept from decoding their chunks ahead go too.

        Returns:
            The number of chunks dropped.
        """
        with self._lock:
            # Keys of CachedSource chunks are ChunkKeys (source key, version, chunk number),
            # those of failed ones chunk ids (source key, chunk number).
            doomed = [k for k in self._chunks if isinstance(k, tuple) and k[0] in sources]
            for key in doomed:
                self._nbytes -= self._unmark(self._chunks, key).nbytes
            for chunk_id in [k for k in self._failed if isinstance(k, tuple) and k[0] in sources]:
                self._unmark(self._failed, chunk_id)
        return len(doomed)

    def stats(self) -> CacheStats:
        """The counters now."""
        with self._lock:
            return CacheStats(
                self._hits,
                self._misses,
                self._evictions,
                self._nbytes,
                self.max_bytes,
                self._ahead,
            )


class CachedSource:
    """An array-like that reads a chunked source through a ``ChunkCache``, whole chunks at a time.

    Every read is assembled from the source's chunks along the first axis (rows
    ``[n * chunk_length, (n + 1) * chunk_length)`` form chunk ``n``), each fetched from the
    cache under ``ChunkKey(key, version, n)`` and read from the source on a miss (an ``H5Source``
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
        self._reads: StreamReads | None = None  # the stream whose reads this copy makes

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

    @property
    def chunk_nbytes(self) -> int:
        """Bytes of one decoded chunk (a whole one: ``chunk_length`` rows)."""
        return self.chunk_length * math.prod(self.shape[1:]) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def reading_for(self, reads: StreamReads) -> CachedSource:
        """A copy of this source whose reads are those of the stream ``reads`` foresees."""
        copy = object.__new__(CachedSource)
        copy.__dict__.update(self.__dict__)
        copy._reads = reads
        return copy

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

    def take_rows(
        self, indices: npt.NDArray[np.intp], trailing: tuple[Any, ...] = ()
    ) -> npt.NDArray[Any]:
        """Rows ``indices`` (any order, repeats allowed), each restricted to ``trailing`` (basic
        keys), as a new array (``data_tools.storage.RowSource``)."""
        rows = _in_bounds(np.asarray(indices, dtype=np.intp), len(self))
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
            return self._read_range(int(rows[0]), int(rows[-1]) + 1, trailing)
        return self._read_rows(rows, trailing)

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
        found = self.cache._lookup(
            [ChunkKey(self.key, version, number) for number in numbers], self._reads
        )
        return [
            self._chunk(number, version) if chunk is None else chunk
            for number, chunk in zip(numbers, found, strict=True)
        ]

    def _chunk(self, number: int, version: Hashable | None) -> npt.NDArray[Any]:
        return self.cache.get(
            ChunkKey(self.key, version, number),
            lambda: self._load_chunk(number, version),
            self._reads,
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


ChunkRead = tuple[tuple[Hashable, int], tuple[CachedSource, int]]
"""One foreseen chunk read: ``(chunk id, (source, chunk number))``."""


def _leaves(array: Any) -> list[CachedSource]:
    """The ``CachedSource``s under ``array``, depth first (one per occurrence)."""
    if isinstance(array, CachedSource):
        return [array]
    if isinstance(array, delayed_view):
        return [leaf for source in array._sources for leaf in _leaves(source)]
    return []


def _leaf_chunks(
    array: Any, rows: npt.NDArray[np.intp]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """For each row of ``array``, which of its ``_leaves`` holds it (-1: none), in which chunk."""
    if isinstance(array, CachedSource):
        return np.zeros(len(rows), np.int64), rows.astype(np.int64) // array.chunk_length
    leaf = np.full(len(rows), -1, np.int64)
    number = np.zeros(len(rows), np.int64)
    if isinstance(array, delayed_view):
        pairs = array.index_pairs[rows]
        offset = 0
        for position, source in enumerate(array._sources):
            mine = np.flatnonzero(pairs[:, 0] == position)
            inner_leaf, inner_number = _leaf_chunks(source, pairs[mine, 1].astype(np.intp))
            held = inner_leaf >= 0
            leaf[mine[held]] = inner_leaf[held] + offset
            number[mine[held]] = inner_number[held]
            offset += len(_leaves(source))
    return leaf, number


def _batch_reads(
    arrays: Sequence[Any], batches: Sequence[npt.NDArray[np.integer[Any]]]
) -> list[list[ChunkRead]]:
    """The chunk reads of each of ``batches`` of ``arrays``, found for all of them at once.

    A batch reads each array in turn, each source of a view in increasing order, each
    source's chunks once, in increasing order.
    """
    leaves = [_leaves(array) for array in arrays]
    flat = [leaf for array_leaves in leaves for leaf in array_leaves]
    if not flat:
        return [[] for _ in batches]
    chunks_per_leaf = max(-(-len(leaf) // leaf.chunk_length) for leaf in flat)
    span = len(flat) * chunks_per_leaf
    rows = np.concatenate(batches).astype(np.intp)
    batch_of = np.repeat(np.arange(len(batches), dtype=np.int64), [len(b) for b in batches])
    codes = []
    base = 0
    for array, array_leaves in zip(arrays, leaves, strict=True):
        leaf, number = _leaf_chunks(array, rows)
        held = leaf >= 0
        codes.append(batch_of[held] * span + (leaf[held] + base) * chunks_per_leaf + number[held])
        base += len(array_leaves)
    unique = np.unique(np.concatenate(codes))
    batch_ids, code = np.divmod(unique, span)
    leaf_ids, numbers = np.divmod(code, chunks_per_leaf)
    bounds = np.searchsorted(batch_ids, np.arange(len(batches) + 1))
    reads: list[ChunkRead] = [
        ((flat[leaf_id].key, number), (flat[leaf_id], number))
        for leaf_id, number in zip(leaf_ids.tolist(), numbers.tolist(), strict=True)
    ]
    return [reads[start:stop] for start, stop in itertools.pairwise(bounds.tolist())]


def chunk_reads(array: Any, rows: npt.NDArray[np.integer[Any]]) -> list[ChunkRead]:
    """The chunks reading ``array[rows]`` reads through a cache, in the order it reads them.

    ``array`` is a ``CachedSource`` or a view (``delayed_view``, ``multi_source_array``,
    nested) whose sources are; chunks of other sources are not cached and not listed. Each
    chunk is listed once, as a read of the rows reads it once.
    """
    return _batch_reads([array], [np.asarray(rows)])[0]


def _planned_reads(
    arrays: Sequence[Any], batches: Iterable[npt.NDArray[np.integer[Any]]]
) -> Iterator[list[ChunkRead]]:
    """The chunk reads of each of ``batches``, found a group of batches at a time."""
    pending = iter(batches)
    while group := list(itertools.islice(pending, 1)):
        rows = len(group[0])
        while (
            rows < _PLAN_ROWS
            and len(group) < _PLAN_BATCHES
            and (more := next(pending, None)) is not None
        ):
            group.append(more)
            rows += len(more)
        yield from _batch_reads(arrays, group)


def reading_for(array: Any, reads: StreamReads) -> Any:
    """``array`` with every ``CachedSource`` under it replaced by its ``reading_for(reads)``."""
    if isinstance(array, CachedSource):
        return array.reading_for(reads)
    if isinstance(array, delayed_view):
        copy = object.__new__(type(array))
        copy.__dict__.update(array.__dict__)
        copy._sources = tuple(reading_for(source, reads) for source in array._sources)
        return copy
    return array


def cache_of(arrays: Iterable[Any]) -> ChunkCache | None:
    """The cache some ``CachedSource`` in or under ``arrays`` (views) reads through, or None."""
    for array in arrays:
        if isinstance(array, CachedSource):
            return array.cache
        if isinstance(array, delayed_view) and (cache := cache_of(array._sources)) is not None:
            return cache
    return None


@contextlib.contextmanager
def following_reads(
    arrays: Sequence[Any],
    batches: Iterable[npt.NDArray[np.integer[Any]]],
    *,
    horizon: int = DEFAULT_HORIZON,
) -> Iterator[tuple[list[Any], StreamReads | None]]:
    """Register with their cache the reads of a stream of ``batches`` of ``arrays``.

    Within the ``with`` block, the cache evicts and decodes ahead knowing the stream's
    future reads; the stream must read through the arrays yielded, which move its
    position along as they read. Leaving the block (the stream ended, failed or was
    cancelled) unregisters it.

    Args:
        arrays: The arrays the stream reads, in the order a batch reads them.
        batches: The rows of each batch, in stream order (read lazily; may be endless).
        horizon: Reads foreseen ahead of the stream. Default ``DEFAULT_HORIZON``.

    Yields:
        The arrays to read (bound to the stream), and its ``StreamReads`` (its
        ``decoded_bytes``); ``(list(arrays), None)`` if no array reads through a cache.
    """
    cache = cache_of(arrays)
    if cache is None:
        yield list(arrays), None
        return
    reads = StreamReads(_planned_reads(arrays, batches), horizon=horizon)
    cache.register(reads)
    try:
        yield [reading_for(array, reads) for array in arrays], reads
    finally:
        cache.unregister(reads)

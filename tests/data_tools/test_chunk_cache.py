"""Tests for data_tools.chunk_cache: ChunkCache and the sources that read through it.

Matrix:
- ChunkCache: LRU order and the byte bound (evictions, nbytes), a chunk larger than the
  budget (returned, not kept), a zero budget, read-only chunks, a failed load (raised,
  not cached, retried), single-flight (8 threads missing one chunk -> 1 read), different
  chunks read in parallel, bad max_bytes; discard drops exactly the named sources' chunks.
- CachedSource over a counting in-memory source: exact hits/misses for a scripted access
  pattern; index-array reads refresh the chunks they hit (LRU); every key form against
  numpy; hypothesis index sets (unsorted, repeated, empty) through getitem and data_flow's
  read_rows, and with trailing keys (ints, slices, Ellipsis) x little/big-endian dtypes
  (values, dtype, one lookup per chunk); data_flow with replacement and io threads against
  the same flow over numpy.
- cached(): which sources are wrapped (chunked HDF5 / h5py.Dataset / zarr / bcolz) and
  which are not (contiguous HDF5, numpy); chunk lengths; separate wrappings never share.
- Pickling: a CachedSource and a view over one pickle to the bare source.
- Changed HDF5 files: replaced while every chunk is cached -> SourceChangedError once,
  then the new contents; deleted -> SourceChangedError.
- ViewContract (tests/view_contract.py) over cached HDF5 (lzf and shuffle+gzip, roomy
  cache) and cached zarr (a cache holding one chunk, so reads evict constantly).
- H5Source.read_chunk, gzip chunks decoded by zlib: bit-identical to h5py's read (values
  and dtype) for deflate and shuffle+deflate x uint8/int16/float32/float64/bool, little-
  and big-endian, with an edge chunk (length not a multiple of the chunk), zlib used for
  every chunk; the h5py fallback (same data, zlib never used) for lzf, fletcher32,
  scale-offset, a chunk split along a later axis, a never-written chunk (fill value) and
  a chunk stored with its deflate skipped (filter mask); a corrupted chunk raises OSError
  naming file, dataset and chunk (as h5py's own read raises OSError); a file truncated
  while open raises; 4 threads missing 4 chunks are inside zlib at the same time (no lock
  held around the decode); the chunks property (also after pickling) and read_chunk's
  argument errors.
"""

from __future__ import annotations

import itertools
import os
import pickle
import re
import threading
import time
import zlib

import bcolz
import h5py
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from view_contract import ViewContract

from data_tools.chunk_cache import CachedSource, CacheStats, ChunkCache, cached
from data_tools.errors import SourceChangedError
from data_tools.io import data_flow
from data_tools.storage import take_rows
from data_tools.storage.hdf5 import H5Source
from data_tools.wrap import delayed_view

CHUNK = 3


class CountingSource:
    """An in-memory array that counts (and optionally slows down) its reads."""

    def __init__(self, data, delay=0.0, on_read=None):
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.delay = delay
        self.on_read = on_read
        self.reads = []
        self._lock = threading.Lock()

    def __getitem__(self, key):
        with self._lock:
            self.reads.append(key)
        if self.on_read is not None:
            self.on_read(key)
        time.sleep(self.delay)
        return self.data[key].copy()


def array(n=20, dtype=np.float32):
    return np.arange(n * 6, dtype=dtype).reshape(n, 2, 3)


def chunk_of(size):
    return np.zeros(size, dtype=np.uint8)


# ---------------------------------------------------------------- ChunkCache


def test_lru_order_and_byte_bound():
    cache = ChunkCache(300)
    loads = []

    def get(key):
        return cache.get(key, lambda: loads.append(key) or chunk_of(100))

    for key in "abc":
        get(key)
    get("a")  # a is now the most recently used; b the least
    get("d")  # 400 bytes > 300: evict b
    assert cache.stats() == CacheStats(hits=1, misses=4, evictions=1, nbytes=300, max_bytes=300)
    get("a")
    get("c")
    get("d")
    assert loads == list("abcd")
    get("b")  # back, evicting a (least recently used of a, c, d)
    get("a")
    assert loads == [*"abcd", "b", "a"]
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.evictions, stats.nbytes) == (4, 6, 3, 300)


def test_discard_drops_the_chunks_of_the_sources_named():
    cache = ChunkCache(1000)
    kept, dropped = (
        CachedSource(np.zeros(8), cache, "kept", 2),
        CachedSource(np.ones(8), cache, "dropped", 2),
    )
    kept[:], dropped[:]
    assert cache.stats().nbytes == 128
    assert cache.discard({"dropped", "never cached"}) == 4
    assert cache.stats().nbytes == 64
    misses = cache.stats().misses
    np.testing.assert_array_equal(kept[:], np.zeros(8))
    assert cache.stats().misses == misses  # kept: still cached
    np.testing.assert_array_equal(dropped[:], np.ones(8))
    assert cache.stats().misses == misses + 4  # dropped: read again


def test_chunk_larger_than_budget_is_returned_not_kept():
    cache = ChunkCache(50)
    first = cache.get("big", lambda: chunk_of(51))
    assert first.nbytes == 51
    cache.get("big", lambda: chunk_of(51))
    assert cache.stats() == CacheStats(hits=0, misses=2, evictions=0, nbytes=0, max_bytes=50)


def test_zero_budget_keeps_nothing():
    cache = ChunkCache(0)
    for _ in range(3):
        cache.get("a", lambda: chunk_of(1))
    assert cache.stats() == CacheStats(hits=0, misses=3, evictions=0, nbytes=0, max_bytes=0)


def test_cached_chunks_are_read_only():
    cache = ChunkCache(100)
    chunk = cache.get("a", lambda: chunk_of(10))
    assert not chunk.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        chunk[0] = 1
    assert cache.get("a", lambda: chunk_of(10)) is chunk


def test_failed_load_raises_and_is_not_cached():
    cache = ChunkCache(100)

    def failing():
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        cache.get("a", failing)
    assert cache.get("a", lambda: chunk_of(10)).nbytes == 10
    assert cache.stats().misses == 2


def test_single_flight_one_read_for_eight_threads():
    source = CountingSource(array(), delay=0.2)
    view = CachedSource(source, ChunkCache(10**6), "counting", CHUNK)
    barrier = threading.Barrier(8)
    results = [None] * 8

    def read(i):
        barrier.wait()
        results[i] = view[4]

    threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(source.reads) == 1
    for result in results:
        np.testing.assert_array_equal(result, source.data[4])
    assert (view.cache.stats().misses, view.cache.stats().hits) == (1, 7)


def test_failed_load_lets_waiting_threads_retry():
    attempts = []
    started = threading.Event()

    def load():
        attempts.append(1)
        if len(attempts) == 1:
            started.set()
            time.sleep(0.2)
            raise OSError("first read fails")
        return chunk_of(4)

    cache = ChunkCache(100)
    outcome = {}

    def waiter():
        started.wait(30)
        outcome["chunk"] = cache.get("a", load)

    thread = threading.Thread(target=waiter)
    thread.start()
    with pytest.raises(OSError, match="first read fails"):
        cache.get("a", load)
    thread.join(30)
    assert outcome["chunk"].nbytes == 4
    assert len(attempts) == 2


def test_different_chunks_are_read_in_parallel():
    # Each chunk's read waits until the other one has started: a cache that held its
    # lock while reading would make the first wait time out.
    started = {0: threading.Event(), 3: threading.Event()}
    overlapped = []

    def on_read(key):
        start = key.start
        started[start].set()
        overlapped.append(started[3 - start].wait(30))

    view = CachedSource(CountingSource(array(), on_read=on_read), ChunkCache(10**6), "p", CHUNK)
    threads = [threading.Thread(target=view.__getitem__, args=(row,)) for row in (0, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlapped == [True, True]


@pytest.mark.parametrize(("value", "error"), [(-1, ValueError), (1.5, TypeError)])
def test_bad_max_bytes(value, error):
    with pytest.raises(error, match="max_bytes"):
        ChunkCache(value)


# ---------------------------------------------------------------- CachedSource reads


def test_scripted_hits_and_misses():
    source = CountingSource(array(20))
    view = CachedSource(source, ChunkCache(10**6), "scripted", 5)
    view[2:7]  # chunks 0, 1: two misses
    view[[0, 4, 12]]  # chunk 0 hit, chunk 2 miss
    view[19]  # chunk 3 miss
    view[:]  # four hits
    view[[12, 0, 12]]  # unsorted, repeated: chunks 0 and 2, two hits
    stats = view.cache.stats()
    assert (stats.misses, stats.hits) == (4, 7)
    assert source.reads == [slice(0, 5), slice(5, 10), slice(10, 15), slice(15, 20)]


def test_index_array_reads_refresh_the_chunks_they_hit():
    source = CountingSource(array(20))  # chunks of 3 rows: 72 bytes
    view = CachedSource(source, ChunkCache(150), "refresh", CHUNK)  # holds two chunks
    view[[0, 3]]  # chunks 0, 1: two misses
    view[[2, 1]]  # chunk 0 hit: now the most recently used
    view[[7]]  # chunk 2 miss evicts chunk 1, the least recently used
    view[[0, 8]]  # chunks 0, 2: two hits
    stats = view.cache.stats()
    assert (stats.misses, stats.hits, stats.evictions) == (3, 3, 1)
    assert source.reads == [slice(0, 3), slice(3, 6), slice(6, 9)]


KEYS = [
    5,
    -1,
    np.int64(7),
    slice(None),
    slice(2, 13),
    slice(1, None, 4),
    slice(None, None, -3),
    slice(15, 3, -2),
    slice(7, 7),
    [4, 0, 4, 19],
    np.array([-1, 2, 2, -20]),
    [],
    np.array([], dtype=np.int64),
    (slice(3, 11), 1),
    (slice(3, 11), slice(None), slice(None, None, -1)),
    (np.array([9, 1]), 0, 2),
    (4, ...),
    (..., 1),
    (),
    ...,
    np.arange(20) % 3 == 0,
    (slice(None), [1, 0]),
    ([1, 5], [0, 1]),
]


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_keys_read_as_numpy(key):
    data = array(20)
    view = CachedSource(CountingSource(data), ChunkCache(10**6), "keys", CHUNK)
    result = view[key]
    expected = data[key]
    assert np.shape(result) == np.shape(expected)
    np.testing.assert_array_equal(result, expected)
    if isinstance(result, np.ndarray) and result.size:
        result.flat[0] = -1  # a new, writable array: the cache is untouched
        np.testing.assert_array_equal(view[key], expected)


@pytest.mark.parametrize("key", [20, -21, [0, 20], (slice(None), 5)])
def test_out_of_range_keys(key):
    view = CachedSource(CountingSource(array(20)), ChunkCache(10**6), "oob", CHUNK)
    with pytest.raises(IndexError):
        view[key]


@settings(max_examples=40)
@given(
    rows=st.lists(st.integers(0, 22), max_size=30),
    chunk_length=st.integers(1, 9),
    budget=st.sampled_from([0, 200, 10**6]),
)
def test_drawn_index_sets_equal_the_source(rows, chunk_length, budget):
    data = array(23, dtype=np.int32)
    view = CachedSource(CountingSource(data), ChunkCache(budget), "drawn", chunk_length)
    indices = np.array(rows, dtype=np.int64)
    np.testing.assert_array_equal(view[indices], data[indices])
    read = take_rows(view, indices)
    np.testing.assert_array_equal(read, data[indices])
    assert read.flags.writeable


TRAILING = [(), (1,), (slice(None), 2), (..., 0), (0, ...), (slice(None, None, -1), slice(1, 3))]


@settings(max_examples=40)
@given(
    rows=st.lists(st.integers(-23, 22), max_size=30),
    trailing=st.sampled_from(TRAILING),
    chunk_length=st.integers(1, 9),
    dtype=st.sampled_from(["<i4", ">i4", "<f8", ">u2"]),
)
def test_index_arrays_with_trailing_keys_gather_like_numpy(rows, trailing, chunk_length, dtype):
    data = array(23, dtype=np.dtype(dtype))
    view = CachedSource(CountingSource(data), ChunkCache(10**6), "gather", chunk_length)
    key = (np.array(rows, dtype=np.int64), *trailing)
    result = view[key]
    expected = data[key]
    assert result.shape == expected.shape
    assert result.dtype == expected.dtype  # the dtype as stored: big-endian stays big-endian
    np.testing.assert_array_equal(result, expected)
    # One lookup per chunk touched, whatever the order and repeats of the rows.
    stats = view.cache.stats()
    assert stats.hits + stats.misses == len({row % 23 // chunk_length for row in rows})
    if result.size:
        result.flat[0] = 99  # a new, writable array: the cached chunks are untouched
        np.testing.assert_array_equal(view[key], expected)


def test_data_flow_with_replacement_matches_numpy():
    data = array(50, dtype=np.int32)
    view = delayed_view(
        CachedSource(CountingSource(data), ChunkCache(400), "flow", 4)  # holds a few chunks
    )
    options = {
        "batch_size": 7,
        "loop_forever": False,
        "sample_random": True,
        "sample_with_replacement": True,
        "seed": 3,
    }
    with data_flow([view], nb_io_workers=3, **options) as flow:
        got = list(flow.flow_with_info())
    with data_flow([data], nb_io_workers=0, **options) as flow:
        expected = list(flow.flow_with_info())
    assert len(got) == len(expected)
    assert any(len(np.unique(info.indices)) < len(info.indices) for info in got)
    for mine, theirs in zip(got, expected, strict=True):
        np.testing.assert_array_equal(mine.indices, theirs.indices)
        np.testing.assert_array_equal(mine.arrays[0], theirs.arrays[0])


def test_attributes_follow_the_source():
    data = array(20)
    view = CachedSource(CountingSource(data), ChunkCache(10), "attrs", CHUNK)
    assert (view.shape, view.dtype, view.ndim, len(view)) == ((20, 2, 3), np.float32, 3, 20)
    np.testing.assert_array_equal(np.asarray(view, dtype=np.float64), data)
    with pytest.raises(ValueError, match="copy=False"):
        np.asarray(view, copy=False)
    with pytest.raises(ValueError, match="chunk_length"):
        CachedSource(CountingSource(data), ChunkCache(10), "attrs", 0)


# ---------------------------------------------------------------- cached()


def write_h5(path, data, **options):
    with h5py.File(path, "w") as handle:
        handle.create_dataset("data", data=data, **options)
    return H5Source(path, "data")


def test_cached_wraps_chunked_sources(tmp_path):
    cache = ChunkCache(10**6)
    data = array(20)
    chunked = cached(write_h5(tmp_path / "c.h5", data, chunks=(4, 2, 3), compression="gzip"), cache)
    assert isinstance(chunked, CachedSource)
    assert chunked.chunk_length == 4
    contiguous = write_h5(tmp_path / "plain.h5", data)
    assert cached(contiguous, cache) is contiguous
    assert cached(data, cache) is data

    with h5py.File(tmp_path / "c.h5", "r") as handle:
        from_dataset = cached(handle["data"], cache)
    assert isinstance(from_dataset.source, H5Source)
    np.testing.assert_array_equal(from_dataset[:], data)

    stored = zarr.create_array(store=str(tmp_path / "z.zarr"), data=data, chunks=(6, 2, 3))
    wrapped = cached(zarr.open_array(str(tmp_path / "z.zarr"), mode="r"), cache)
    assert (type(wrapped), wrapped.chunk_length) == (CachedSource, 6)
    np.testing.assert_array_equal(wrapped[[19, 0]], stored[[19, 0]])

    carray = bcolz.carray(data, rootdir=str(tmp_path / "b"), mode="w", chunklen=8)
    carray.flush()
    wrapped = cached(bcolz.open(rootdir=str(tmp_path / "b"), mode="r"), cache)
    assert (type(wrapped), wrapped.chunk_length) == (CachedSource, 8)
    np.testing.assert_array_equal(wrapped[5:17], data[5:17])


def test_separate_wrappings_do_not_share_chunks(tmp_path):
    cache = ChunkCache(10**6)
    source = write_h5(tmp_path / "c.h5", array(20), chunks=(4, 2, 3))
    first, second = cached(source, cache), cached(source, cache)
    assert first.key != second.key
    first[0]
    second[0]
    assert cache.stats().misses == 2


# ---------------------------------------------------------------- pickling


def test_pickles_to_the_bare_source(tmp_path):
    cache = ChunkCache(10**6)
    data = array(20)
    view = cached(write_h5(tmp_path / "c.h5", data, chunks=(4, 2, 3)), cache)
    view[:]
    clone = pickle.loads(pickle.dumps(view))
    assert type(clone) is H5Source
    assert (clone.filename, clone.key) == (view.source.filename, "data")
    delayed = pickle.loads(pickle.dumps(delayed_view(view)))
    assert type(delayed.arr) is H5Source
    np.testing.assert_array_equal(delayed[:], data)
    zarr.create_array(store=str(tmp_path / "z.zarr"), data=data, chunks=(6, 2, 3))
    wrapped = cached(zarr.open_array(str(tmp_path / "z.zarr"), mode="r"), cache)
    assert isinstance(pickle.loads(pickle.dumps(wrapped)), zarr.Array)


# ---------------------------------------------------------------- changed files


def test_replaced_file_raises_once_then_serves_the_new_file(tmp_path):
    path = tmp_path / "c.h5"
    old, new = array(20), array(20) + 1000
    view = cached(write_h5(path, old, chunks=(4, 2, 3), compression="gzip"), ChunkCache(10**6))
    np.testing.assert_array_equal(view[:], old)  # every chunk cached
    write_h5(tmp_path / "next.h5", new, chunks=(4, 2, 3), compression="gzip")
    os.replace(tmp_path / "next.h5", path)
    with pytest.raises(SourceChangedError, match="changed"):
        view[[0, 5]]
    np.testing.assert_array_equal(view[[0, 5]], new[[0, 5]])
    np.testing.assert_array_equal(view[:], new)


def test_deleted_file_raises(tmp_path):
    path = tmp_path / "c.h5"
    view = cached(write_h5(path, array(20), chunks=(4, 2, 3)), ChunkCache(10**6))
    view[:]
    path.unlink()
    with pytest.raises(SourceChangedError, match="deleted"):
        view[0]


def test_missing_file_never_opened_raises_file_not_found(tmp_path):
    path = tmp_path / "c.h5"
    source = write_h5(path, array(20), chunks=(4, 2, 3))
    view = cached(source, ChunkCache(10**6))
    source.close()
    path.unlink()
    with pytest.raises(FileNotFoundError):
        view[0]


# ---------------------------------------------------------------- the view contract


class TestCachedH5View(ViewContract):
    max_examples = 20

    @pytest.fixture
    def store(self, tmp_path):
        counter = itertools.count()
        cache = ChunkCache(10**6)

        def store(array):
            path = tmp_path / f"source{next(counter)}.h5"
            chunks = (CHUNK, *array.shape[1:])
            return cached(write_h5(path, array, chunks=chunks, compression="lzf"), cache)

        return store


class TestCachedZarrView(ViewContract):
    max_examples = 10

    @pytest.fixture
    def store(self, tmp_path):
        counter = itertools.count()
        cache = ChunkCache(CHUNK * 12 * 4)  # one float32 chunk: reads evict all the time

        def store(array):
            path = str(tmp_path / f"source{next(counter)}.zarr")
            zarr.create_array(store=path, data=array, chunks=(CHUNK, *array.shape[1:]))
            return cached(zarr.open_array(path, mode="r"), cache)

        return store


class TestCachedGzipH5View(ViewContract):
    max_examples = 20

    @pytest.fixture
    def store(self, tmp_path):
        counter = itertools.count()
        cache = ChunkCache(10**6)

        def store(array):
            path = tmp_path / f"source{next(counter)}.h5"
            chunks = (CHUNK, *array.shape[1:])
            options = {"chunks": chunks, "compression": "gzip", "shuffle": True}
            return cached(write_h5(path, array, **options), cache)

        return store


# ---------------------------------------------------------------- gzip chunks through zlib


@pytest.fixture
def inflations(monkeypatch):
    """Count zlib.decompress calls (H5Source.read_chunk's decodes)."""
    calls = []
    decompress = zlib.decompress

    def counting(*args, **kwargs):
        calls.append(1)
        return decompress(*args, **kwargs)

    monkeypatch.setattr(zlib, "decompress", counting)
    return calls


def sample(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        data = rng.normal(0, 1e3, shape).round(1)  # compressible, but not constant
        data.flat[::7] = np.nan
    elif dtype.kind == "b":
        data = rng.random(shape) < 0.3
    else:
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, shape, endpoint=True) // 3
    return data.astype(dtype)


def chunk_rows(source):
    length = source.chunks[0]
    return [slice(start, start + length) for start in range(0, len(source), length)]


def assert_identical(got, expected):
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("shuffle", [False, True], ids=["deflate", "shuffle+deflate"])
@pytest.mark.parametrize("dtype", ["u1", "<i2", ">i2", "<f4", ">f4", "<f8", ">f8", "?"])
def test_gzip_chunks_decode_bit_identical_to_h5py(tmp_path, inflations, dtype, shuffle):
    data = sample(dtype, (23, 2, 5))  # 6 chunks of 4 rows, the last one 3 rows long
    options = {"chunks": (4, 2, 5), "compression": "gzip", "shuffle": shuffle}
    source = write_h5(tmp_path / "g.h5", data, **options)
    with h5py.File(tmp_path / "g.h5", "r") as handle:
        expected = handle["data"][...]
    assert expected.dtype == np.dtype(dtype)
    for number, rows in enumerate(chunk_rows(source)):
        assert_identical(source.read_chunk(number), expected[rows])
    assert len(inflations) == 6
    view = cached(source, ChunkCache(10**6))
    assert_identical(view[:], expected)
    assert_identical(view[[22, 0, 13]], expected[[22, 0, 13]])


def write_fill_gaps(path, data):
    """Chunks 1 and 3 of 5 never written; the rest, gzip."""
    with h5py.File(path, "w") as handle:
        dataset = handle.create_dataset(
            "data", data.shape, data.dtype, chunks=(4, 3), compression="gzip", fillvalue=-7
        )
        for start in (0, 8, 16):
            dataset[start : start + 4] = data[start : start + 4]


def write_skipped_deflate(path, data):
    """Chunk 1 stored raw, its deflate marked skipped in the filter mask; the rest, gzip."""
    with h5py.File(path, "w") as handle:
        dataset = handle.create_dataset("data", data=data, chunks=(4, 3), compression="gzip")
        dataset.id.write_direct_chunk((4, 0), data[4:8].tobytes(), filter_mask=1)


@pytest.mark.parametrize(
    ("write", "decoded_by_zlib"),
    [
        (lambda path, data: write_h5(path, data, chunks=(4, 3), compression="lzf"), 0),
        (
            lambda path, data: write_h5(
                path, data, chunks=(4, 3), compression="gzip", fletcher32=True
            ),
            0,
        ),
        (
            lambda path, data: write_h5(
                path, data, chunks=(4, 3), compression="gzip", scaleoffset=0
            ),
            0,
        ),
        (lambda path, data: write_h5(path, data, chunks=(4, 1), compression="gzip"), 0),
        (write_fill_gaps, 3),
        (write_skipped_deflate, 4),
    ],
    ids=["lzf", "fletcher32", "scaleoffset", "split-along-axis-1", "never-written", "skipped"],
)
def test_other_chunks_fall_back_to_h5py(tmp_path, inflations, write, decoded_by_zlib):
    path = tmp_path / "f.h5"
    write(path, sample("<i4", (18, 3)))  # 5 chunks of 4 rows, the last one 2 rows long
    with h5py.File(path, "r") as handle:
        expected = handle["data"][...]
    source = H5Source(path, "data")
    for number, rows in enumerate(chunk_rows(source)):
        assert_identical(source.read_chunk(number), expected[rows])
    assert len(inflations) == decoded_by_zlib
    assert_identical(cached(source, ChunkCache(10**6))[:], expected)


def chunk_address(path, number):
    with h5py.File(path, "r") as handle:
        dataset = handle["data"]
        info = dataset.id.get_chunk_info_by_coord((number * dataset.chunks[0], 0, 0))
        return info.byte_offset, info.size


def test_a_corrupted_chunk_raises_naming_file_dataset_and_chunk(tmp_path):
    path = tmp_path / "c.h5"
    data = sample("<f4", (20, 2, 3))
    write_h5(path, data, chunks=(4, 2, 3), compression="gzip")
    offset, size = chunk_address(path, 2)
    with open(path, "r+b") as file:  # flip the bits of the chunk's second half
        file.seek(offset + size // 2)
        tail = file.read(size - size // 2)
        file.seek(offset + size // 2)
        file.write(bytes(byte ^ 0xFF for byte in tail))
    with h5py.File(path, "r") as handle, pytest.raises(OSError, match="filter returned failure"):
        handle["data"][8:12]  # h5py's own read raises OSError too
    view = cached(H5Source(path, "data"), ChunkCache(10**6))
    np.testing.assert_array_equal(view[:8], data[:8])
    message = re.escape(f"chunk 2 (rows 8 to 11) of HDF5 dataset 'data' in '{path}': filter")
    for _ in range(2):  # a failed chunk is not cached
        with pytest.raises(OSError, match=message) as caught:
            view[[1, 9]]
        assert isinstance(caught.value.__cause__, zlib.error)


def test_a_file_truncated_while_open_raises(tmp_path):
    path = tmp_path / "t.h5"
    data = sample("<f4", (40, 2, 3))
    view = cached(write_h5(path, data, chunks=(4, 2, 3), compression="gzip"), ChunkCache(10**6))
    np.testing.assert_array_equal(view[:4], data[:4])
    offset, _ = chunk_address(path, 9)
    os.truncate(path, offset)
    with pytest.raises(OSError, match=r"filter returned failure|t\.h5' changed while open"):
        view[36:]


def test_threads_missing_different_chunks_decode_at_the_same_time(tmp_path, monkeypatch):
    # Each decode waits until all four are under way: a lock held around it (ours or
    # h5py's) would break the barrier.
    data = sample("<f4", (16, 8, 8))
    view = cached(
        write_h5(tmp_path / "p.h5", data, chunks=(4, 8, 8), compression="gzip"), ChunkCache(10**6)
    )
    barrier = threading.Barrier(4, timeout=30)
    decompress = zlib.decompress

    def meeting(*args, **kwargs):
        barrier.wait()
        return decompress(*args, **kwargs)

    monkeypatch.setattr(zlib, "decompress", meeting)
    results = {}

    def read(row):
        results[row] = view[row]

    threads = [threading.Thread(target=read, args=(row,)) for row in (0, 5, 10, 15)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not barrier.broken
    for row in (0, 5, 10, 15):
        np.testing.assert_array_equal(results[row], data[row])
    assert view.cache.stats().misses == 4


def test_chunks_property_and_read_chunk_errors(tmp_path):
    chunked = write_h5(tmp_path / "c.h5", array(10), chunks=(4, 1, 3))
    assert chunked.chunks == (4, 1, 3)
    assert pickle.loads(pickle.dumps(chunked)).chunks == (4, 1, 3)
    with pytest.raises(IndexError, match="chunk 3"):
        chunked.read_chunk(3)
    with pytest.raises(IndexError, match="chunk -1"):
        chunked.read_chunk(-1)
    contiguous = write_h5(tmp_path / "plain.h5", array(10))
    assert contiguous.chunks is None
    with pytest.raises(TypeError, match="not chunked"):
        contiguous.read_chunk(0)

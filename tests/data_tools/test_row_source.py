"""Sources that read their own rows (``storage.RowSource``): views and cached sources.

A batch's rows are read by asking ``storage.row_taker`` how to read each source once, then
calling the source itself: storage never calls back into the view that wraps it.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_tools import storage
from data_tools.chunk_cache import CachedSource, ChunkCache
from data_tools.io._batch import read_batch
from data_tools.storage import base
from data_tools.wrap import delayed_view, multi_source_array


def data(n=23):
    return np.arange(n * 6, dtype=np.int32).reshape(n, 2, 3)


def test_row_taker_is_the_sources_own_method_or_take_rows():
    view = delayed_view(data())
    cached = CachedSource(data(), ChunkCache(10**6), "c", 4)
    assert storage.row_taker(view) == view.take_rows
    assert storage.row_taker(cached) == cached.take_rows
    plain = data()
    rows = np.array([3, 1, 3])
    np.testing.assert_array_equal(storage.row_taker(plain)(rows), plain[rows])
    assert storage.row_reader(view) == view.take_rows


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.integers(0, 22), max_size=30), chunk_length=st.integers(1, 9))
def test_take_rows_of_views_and_cached_sources_equal_numpy(rows, chunk_length):
    expected = data()
    indices = np.array(rows, dtype=np.intp)
    cached = CachedSource(data(), ChunkCache(200), "drawn", chunk_length)
    sources = [
        cached,
        delayed_view(data()),
        multi_source_array([data()[:10], cached.take_rows(np.arange(10, 23))]),
    ]
    for source in sources:
        read = source.take_rows(indices)
        np.testing.assert_array_equal(read, expected[indices])
        assert read.flags.writeable
        assert not np.shares_memory(read, expected)
        trailed = source.take_rows(indices, (slice(None), slice(1, 3)))
        np.testing.assert_array_equal(trailed, expected[indices][:, :, 1:3])


def test_cached_take_rows_refuses_rows_out_of_range():
    cached = CachedSource(data(), ChunkCache(10**6), "c", 4)
    with pytest.raises(IndexError, match="out of bounds"):
        cached.take_rows(np.array([0, 23]))


def test_a_batch_of_views_never_goes_through_storage_with_the_view(monkeypatch):
    cache = ChunkCache(10**6)
    view = multi_source_array([CachedSource(data(), cache, "a", 5), data()])
    view.shuffle(3)
    handed = []
    for name in ("read_rows", "take_rows"):
        real = getattr(base, name)

        def recording(source, *args, real=real):
            handed.append(source)
            return real(source, *args)

        monkeypatch.setattr(base, name, recording)
    indices = np.array([7, 2, 40, 2, 19])
    (rows,), _ = read_batch([view], indices)
    np.testing.assert_array_equal(rows, data()[view.index_pairs[indices, 1]])
    assert handed  # the plain array's rows were read through storage
    assert not any(isinstance(source, delayed_view) for source in handed)

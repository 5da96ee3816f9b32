"""Tests for data_tools.wrap: delayed_view and multi_source_array.

Matrix: ViewContract (tests/view_contract.py) x backends {numpy, HDF5 via h5py (chunked,
lzf, opened read-only), zarr v3 (chunked, opened read-only), mixed numpy/h5py/zarr
sources}; then, on numpy sources: the reference's examples (shuffle flag and method,
seeds, maxlen with and without shuffle, labels with and without class_list, the
index_pairs "direct hack"), dtype promotion, views of views, H5Source sources, and every
bad argument of both constructors, of index_pairs and of shuffle().
"""

from __future__ import annotations

import itertools
import pickle

import h5py
import numpy as np
import pytest
import zarr
from view_contract import ViewContract, assert_same_as_numpy

from data_tools.storage.hdf5 import H5Source
from data_tools.wrap import delayed_view, multi_source_array

CHUNK = 3


@pytest.fixture
def h5_store(tmp_path):
    counter = itertools.count()
    handles = []

    def store(array):
        path = tmp_path / f"source{next(counter)}.h5"
        with h5py.File(path, "w") as handle:
            chunks = (CHUNK, *array.shape[1:]) if len(array) else None
            handle.create_dataset("data", data=array, chunks=chunks, compression="lzf")
        handles.append(h5py.File(path, "r"))
        return handles[-1]["data"]

    yield store
    for handle in handles:
        handle.close()


@pytest.fixture
def zarr_store(tmp_path):
    counter = itertools.count()

    def store(array):
        path = str(tmp_path / f"source{next(counter)}.zarr")
        written = zarr.create_array(
            store=path, shape=array.shape, dtype=array.dtype, chunks=(CHUNK, *array.shape[1:])
        )
        written[...] = array
        return zarr.open_array(path, mode="r")

    return store


class TestNumpyView(ViewContract):
    @pytest.fixture
    def store(self):
        return np.copy


class TestH5pyView(ViewContract):
    max_examples = 25

    @pytest.fixture
    def store(self, h5_store):
        return h5_store


class TestZarrView(ViewContract):
    max_examples = 10

    @pytest.fixture
    def store(self, zarr_store):
        return zarr_store


class TestMixedSourcesView(ViewContract):
    max_examples = 15

    @pytest.fixture
    def store(self, h5_store, zarr_store):
        backends = itertools.cycle([np.copy, h5_store, zarr_store])
        return lambda array: next(backends)(array)


# ---------------------------------------------------------------- reference behaviour


@pytest.fixture
def arrays():
    return [np.arange(n * 2).reshape(n, 2) + 100 * i for i, n in enumerate([5, 3, 6])]


def test_delayed_view_reference_example(arrays):
    some_arr = arrays[2]
    view = delayed_view(some_arr, shuffle=True, idx_max=int(0.5 * len(some_arr)))
    assert len(view) == 3
    assert sorted(view[:, 0].tolist()) == some_arr[:3, 0].tolist()
    assert view.shuffled


def test_delayed_view_defaults(arrays):
    view = delayed_view(arrays[0])
    assert (view.idx_min, view.idx_max, view.shuffled) == (0, 5, False)
    assert view.arr is arrays[0]
    assert_same_as_numpy(view[:], arrays[0])


def test_delayed_view_shuffle_method(arrays):
    view = delayed_view(arrays[2], idx_min=1, idx_max=5)
    assert not view.shuffled
    view.shuffle(3)
    assert view.shuffled
    assert sorted(view.index_pairs[:, 1].tolist()) == [1, 2, 3, 4]
    orders = set()
    for _ in range(20):
        view.shuffle()
        orders.add(tuple(view.index_pairs[:, 1]))
    assert len(orders) > 1


def test_shuffle_flag_does_not_shadow_method(arrays):
    view = multi_source_array(arrays, shuffle=True)
    assert callable(view.shuffle)
    assert view.shuffled


def test_concatenation_in_order(arrays):
    msarr = multi_source_array(source_list=arrays)
    assert len(msarr) == 14
    assert msarr.shape == (14, 2)
    assert_same_as_numpy(msarr[:], np.concatenate(arrays))
    assert msarr.get_labels().tolist() == [0] * 5 + [1] * 3 + [2] * 6
    assert msarr.source_list == arrays


def test_shuffle_across_sources(arrays):
    msarr = multi_source_array(source_list=arrays, shuffle=True)
    rows = msarr[:]
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, np.concatenate(arrays).tolist()))
    assert np.unique(msarr.index_pairs, axis=0).shape == (14, 2)


def test_same_seed_same_view(arrays):
    first = multi_source_array(arrays, maxlen=2)
    second = multi_source_array(arrays, maxlen=2)
    first.shuffle(1234)
    second.shuffle(1234)
    np.testing.assert_array_equal(first.index_pairs, second.index_pairs)
    np.testing.assert_array_equal(first[:], second[:])
    second.shuffle(4321)
    assert not np.array_equal(first.index_pairs, second.index_pairs)


def test_shuffle_accepts_generator(arrays):
    first = multi_source_array(arrays)
    second = multi_source_array(arrays)
    first.shuffle(np.random.default_rng(5))
    second.shuffle(5)
    np.testing.assert_array_equal(first.index_pairs, second.index_pairs)


def test_maxlen_without_shuffle_takes_leading_elements(arrays):
    msarr = multi_source_array(arrays, maxlen=4)
    assert len(msarr) == 4 + 3 + 4
    assert_same_as_numpy(msarr[:], np.concatenate([a[:4] for a in arrays]))


def test_maxlen_with_shuffle_redraws_subsets(arrays):
    msarr = multi_source_array(arrays, maxlen=2, shuffle=True)
    assert len(msarr) == 6
    assert np.bincount(msarr.index_pairs[:, 0]).tolist() == [2, 2, 2]
    subsets = set()
    for seed in range(20):
        msarr.shuffle(seed)
        subsets.add(tuple(sorted(msarr.index_pairs[msarr.index_pairs[:, 0] == 2, 1])))
    assert len(subsets) > 1
    msarr.shuffle(7)
    assert_same_as_numpy(msarr[:], _lookup(arrays, msarr.index_pairs))


def test_maxlen_zero_gives_empty_view(arrays):
    msarr = multi_source_array(arrays, maxlen=0, shuffle=True)
    assert len(msarr) == 0
    assert msarr[:].shape == (0, 2)
    assert msarr.get_labels().shape == (0,)
    assert list(msarr) == []


def test_labels_follow_class_list_and_order(arrays):
    msarr = multi_source_array(arrays, class_list=[0, 0, 1], shuffle=True)
    labels = msarr.get_labels()
    assert labels.dtype == np.int64
    expected = np.array([0, 0, 1])[msarr.index_pairs[:, 0]]
    np.testing.assert_array_equal(labels, expected)
    rows = msarr[:]
    np.testing.assert_array_equal(rows[:, 0] >= 200, labels == 1)


def test_index_pairs_direct_hack(arrays):
    a1, a2, a3 = arrays[0], arrays[0] + 1, arrays[0] + 2
    msarr_1 = multi_source_array(source_list=[a1, a2], shuffle=True)
    msarr_2 = multi_source_array(source_list=[a2, a3])
    msarr_2.index_pairs = msarr_1.index_pairs
    np.testing.assert_array_equal(msarr_2.index_pairs, msarr_1.index_pairs)
    assert_same_as_numpy(msarr_2[:], msarr_1[:] + 1)
    np.testing.assert_array_equal(msarr_2.get_labels(), msarr_1.get_labels())


def test_index_pairs_accepts_list_of_tuples_and_copies(arrays):
    msarr = multi_source_array(arrays)
    pairs = [(2, 5), (0, 0), (2, 5)]
    msarr.index_pairs = pairs
    pairs[0] = (1, 1)
    assert len(msarr) == 3
    assert msarr.shape == (3, 2)
    assert_same_as_numpy(msarr[:], np.stack([arrays[2][5], arrays[0][0], arrays[2][5]]))
    with pytest.raises(ValueError, match="read-only"):
        msarr.index_pairs[0, 0] = 1
    msarr.index_pairs = []
    assert len(msarr) == 0


def test_dtype_is_numpy_result_type():
    msarr = multi_source_array([np.zeros((2, 1), np.uint8), np.ones((2, 1), np.int8)])
    assert msarr.dtype == np.result_type(np.uint8, np.int8) == np.int16
    assert msarr[:].dtype == np.int16
    assert msarr[[3, 0]].tolist() == [[1], [0]]


def test_view_of_views(arrays):
    inner = multi_source_array(arrays, shuffle=True)
    outer = delayed_view(inner, shuffle=True, idx_min=2, idx_max=12)
    inner_rows = inner[:]
    expected = inner_rows[outer.index_pairs[:, 1]]
    assert_same_as_numpy(outer[:], expected)
    assert_same_as_numpy(outer[[4, 0, 4], 1], expected[[4, 0, 4], 1])
    assert_same_as_numpy(pickle.loads(pickle.dumps(outer))[:], expected)


def test_h5source_as_source(tmp_path, arrays):
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as handle:
        handle["x"] = arrays[2]
    source = H5Source(path, "x")
    view = delayed_view(source, shuffle=True)
    assert_same_as_numpy(view[:], arrays[2][view.index_pairs[:, 1]])
    source.close()


def test_h5py_dataset_pickles_as_h5source(h5_store, arrays):
    view = delayed_view(h5_store(arrays[0]))
    clone = pickle.loads(pickle.dumps(view))
    assert isinstance(clone.arr, H5Source)
    assert_same_as_numpy(clone[1:4], arrays[0][1:4])
    clone.arr.close()


def test_iteration_reads_in_blocks(arrays, monkeypatch):
    from data_tools import wrap

    monkeypatch.setattr(wrap, "_ITER_BLOCK_BYTES", 2 * arrays[0].itemsize * 2)
    view = multi_source_array(arrays, shuffle=True)
    assert_same_as_numpy(np.stack(list(view)), view[:])


def test_repr(arrays):
    assert repr(multi_source_array(arrays)) == (
        "multi_source_array(shape=(14, 2), dtype=int64, shuffled=False)"
    )


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"idx_min": 4, "idx_max": 2}, ValueError, "idx_min"),
        ({"idx_min": -1}, ValueError, "idx_min"),
        ({"idx_max": 6}, ValueError, "idx_max"),
        ({"idx_max": -1}, ValueError, "idx_max"),
        ({"idx_min": 1.0}, TypeError, "idx_min"),
        ({"idx_max": "3"}, TypeError, "idx_max"),
        ({"shuffle": 1}, TypeError, "shuffle"),
    ],
)
def test_delayed_view_bad_arguments(arrays, kwargs, error, match):
    with pytest.raises(error, match=match):
        delayed_view(arrays[0], **kwargs)


@pytest.mark.parametrize(
    ("arr", "error", "match"),
    [
        ([1, 2, 3], TypeError, "Expected arr to be an array"),
        (None, TypeError, "Expected arr to be an array"),
        (np.float32(3), ValueError, "arr to have at least one dimension"),
    ],
)
def test_delayed_view_non_array(arr, error, match):
    with pytest.raises(error, match=match):
        delayed_view(arr)


@pytest.mark.parametrize(
    ("make_kwargs", "error", "match"),
    [
        (lambda a: {"source_list": []}, ValueError, "source_list to hold at least one"),
        (lambda a: {"source_list": a[0]}, TypeError, "source_list to be a list"),
        (lambda a: {"source_list": "abc"}, TypeError, "source_list to be a list"),
        (lambda a: {"source_list": [a[0], [1, 2]]}, TypeError, r"source_list\[1\]"),
        (lambda a: {"source_list": [a[0], a[1][:, :1]]}, ValueError, r"source_list\[1\].*shape"),
        (
            lambda a: {"source_list": [a[0], np.zeros((1, 2), "datetime64[s]")]},
            TypeError,
            "common numpy result type",
        ),
        (lambda a: {"source_list": a, "class_list": [0, 1]}, ValueError, "class_list"),
        (lambda a: {"source_list": a, "class_list": [0, 1.5, 2]}, TypeError, r"class_list\[1\]"),
        (lambda a: {"source_list": a, "maxlen": -1}, ValueError, "maxlen"),
        (lambda a: {"source_list": a, "maxlen": 2.0}, TypeError, "maxlen"),
        (lambda a: {"source_list": a, "shuffle": "yes"}, TypeError, "shuffle"),
    ],
)
def test_multi_source_array_bad_arguments(arrays, make_kwargs, error, match):
    with pytest.raises(error, match=match):
        multi_source_array(**make_kwargs(arrays))


@pytest.mark.parametrize(
    "pairs",
    [
        [[0, 1, 2]],
        [0, 1],
        [[0.0, 1.0]],
        [[3, 0]],
        [[-1, 0]],
        [[1, 3]],
        [[0, -1]],
    ],
)
def test_bad_index_pairs(arrays, pairs):
    msarr = multi_source_array(arrays)
    with pytest.raises(ValueError, match="index_pairs"):
        msarr.index_pairs = pairs
    assert len(msarr) == 14


@pytest.mark.parametrize(
    ("seed", "error"), [(-1, ValueError), ("abc", TypeError), (1.5, TypeError)]
)
def test_bad_random_seed(arrays, seed, error):
    with pytest.raises(error, match="random_seed"):
        multi_source_array(arrays).shuffle(seed)


def _lookup(arrays, pairs):
    return np.stack([arrays[s][i] for s, i in pairs])

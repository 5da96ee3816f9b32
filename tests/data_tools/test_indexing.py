"""Tests for data_tools._indexing, the pure index arithmetic behind views.

Matrix: normalize_key against numpy on arange arrays of 1-4 dims (sizes 0-5) for
hypothesis-drawn keys (view_keys: ints, slices with negative bounds/steps, 1-D lists and
arrays, 1-D/2-D booleans, Ellipsis, bare or tuple) and hypothesis basic_indices and
integer_array_indices; the invariants of the ViewKey it returns; the reference's
nested-list rule; every rejected key kind. plan_reads against concatenated arrays for
drawn (source, index) pairs with duplicates; as_slice and contiguous_runs against the
index sets they describe.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from view_contract import assert_same_as_numpy, view_keys

from data_tools._indexing import (
    ViewKey,
    as_slice,
    contiguous_runs,
    normalize_key,
    plan_reads,
)
from data_tools.errors import UnsupportedIndexError, ViewIndexError

shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)


def apply_view_key(array, view_key: ViewKey):
    """Read the way a view does: the rows, the trailing slices, then the local key."""
    block = array[view_key.rows][(slice(None), *view_key.source_trailing)]
    assert block.shape == view_key.block_shape
    return block if view_key.takes_whole_block else block[view_key.local_key]


def check_against_numpy(array, key):
    try:
        expected = array[key]
    except IndexError:
        with pytest.raises(IndexError):
            normalize_key(key, array.shape)
        return
    view_key = normalize_key(key, array.shape)
    rows = view_key.rows
    assert rows.dtype == np.intp
    assert (np.diff(rows) > 0).all()
    assert rows.size == 0 or (rows[0] >= 0 and rows[-1] < array.shape[0])
    for read, size in zip(view_key.source_trailing, array.shape[1:], strict=True):
        assert read.step > 0
        assert 0 <= read.start <= read.stop <= size
    assert_same_as_numpy(apply_view_key(array, view_key), expected)


@given(data=st.data(), shape=shapes)
def test_drawn_keys_match_numpy(data, shape):
    array = np.arange(int(np.prod(shape))).reshape(shape)
    check_against_numpy(array, data.draw(view_keys(shape)))


@given(data=st.data(), shape=shapes)
def test_basic_indices_match_numpy(data, shape):
    array = np.arange(int(np.prod(shape))).reshape(shape)
    key = data.draw(hnp.basic_indices(shape, allow_newaxis=False, allow_ellipsis=True))
    check_against_numpy(array, key)


@given(data=st.data(), shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5))
def test_integer_array_indices_match_numpy(data, shape):
    array = np.arange(int(np.prod(shape))).reshape(shape)
    result_shape = hnp.array_shapes(min_dims=1, max_dims=1, min_side=0, max_side=6)
    key = data.draw(hnp.integer_array_indices(shape, result_shape=result_shape))
    check_against_numpy(array, key)


def test_rows_are_sorted_unique_and_local_key_restores_order():
    view_key = normalize_key([4, -1, 4, 0], (6, 2))
    np.testing.assert_array_equal(view_key.rows, [0, 4, 5])
    np.testing.assert_array_equal(view_key.local_key[0], [1, 2, 1, 0])


def test_negative_step_slices_read_forwards():
    view_key = normalize_key((slice(None, None, -2), slice(3, 0, -1)), (7, 5))
    np.testing.assert_array_equal(view_key.rows, [0, 2, 4, 6])
    assert view_key.source_trailing == (slice(1, 4, 1),)
    assert view_key.local_key == (slice(None, None, -1), slice(None, None, -1))


@pytest.mark.parametrize(
    "key",
    [
        (slice(None), 0, ..., [1, 2]),
        (slice(None), [0, 1], ..., 2),
        ([0, 1], ..., [2, 0], 1),
        (slice(None), 0, ..., np.array([False, True, True, False])),
    ],
)
def test_zero_axis_ellipsis_separates_advanced_indices(key):
    # numpy moves the broadcast axes to the front when an Ellipsis sits between advanced
    # indices, even when it stands for no axis.
    check_against_numpy(np.arange(24).reshape(2, 3, 4), key)


def test_trailing_int_and_array_read_bounding_slices():
    view_key = normalize_key((2, 1, [3, -4]), (4, 3, 6))
    assert view_key.source_trailing == (slice(1, 2, 1), slice(2, 4, 1))
    assert view_key.local_key[:2] == (0, 0)
    np.testing.assert_array_equal(view_key.local_key[2], [1, 0])


@pytest.mark.parametrize(
    ("key", "equivalent"),
    [
        ([[0, 1]], [0, 1]),
        ([[0, 1], [1, 0]], ([0, 1], [1, 0])),
        ([slice(1, 3), 0], (slice(1, 3), 0)),
        ([Ellipsis, 1], (Ellipsis, 1)),
        ((np.int64(3),), 3),
        (np.array(2), 2),
    ],
)
def test_reference_equivalent_keys(key, equivalent):
    array = np.arange(20).reshape(4, 5)
    assert_same_as_numpy(apply_view_key(array, normalize_key(key, array.shape)), array[equivalent])


@pytest.mark.parametrize(
    ("key", "match"),
    [
        (None, "None"),
        ((slice(None), None), "None"),
        ((Ellipsis, 0, Ellipsis), "one ellipsis"),
        ([[[0, 1]]], "more than one dimension"),
        (np.array([[0, 1]]), "more than one dimension"),
        (([[0], [1]], 0), "more than one dimension"),
        (True, "boolean scalar"),
        (np.bool_(False), "boolean scalar"),
        (np.array(True), "boolean scalar"),
        (1.0, "valid view indices"),
        ("0", "valid view indices"),
        ({0: 1}, "valid view indices"),
        (np.array([1.0]), "float64"),
        (np.array(["a"]), "<U1"),
        (([[0, 1], [0]],), "ragged"),
        ((0, 0, 0), "Too many indices"),
        (([0, 1], [0, 1, 2]), "broadcast"),
    ],
)
def test_unsupported_keys(key, match):
    with pytest.raises(UnsupportedIndexError, match=match):
        normalize_key(key, (4, 5))


@pytest.mark.parametrize(
    ("key", "match"),
    [
        (4, "Index 4 is out of bounds for axis 0 with size 4"),
        (-5, "Index -5 is out of bounds for axis 0"),
        ((0, 5), "Index 5 is out of bounds for axis 1 with size 5"),
        ([0, 7], "Index 7 is out of bounds for axis 0"),
        ((slice(None), np.array([-6])), "Index -6 is out of bounds for axis 1"),
        (np.ones(3, dtype=bool), r"Boolean index of shape \(3,\)"),
        (np.ones((4, 4), dtype=bool), r"Boolean index of shape \(4, 4\)"),
    ],
)
def test_out_of_range_keys(key, match):
    with pytest.raises(ViewIndexError, match=match):
        normalize_key(key, (4, 5))


def test_errors_are_index_errors():
    assert issubclass(UnsupportedIndexError, IndexError)
    assert issubclass(ViewIndexError, IndexError)


def test_slice_errors_match_numpy():
    with pytest.raises(TypeError, match="slice indices"):
        normalize_key(slice(0.5, 2), (4,))
    with pytest.raises(ValueError, match="step cannot be zero"):
        normalize_key(slice(None, None, 0), (4,))


@st.composite
def sources_and_pairs(draw):
    lengths = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
    pair = st.integers(0, len(lengths) - 1).flatmap(
        lambda s: st.tuples(st.just(s), st.integers(0, lengths[s] - 1))
    )
    pairs = draw(st.lists(pair, max_size=20))
    return lengths, np.array(pairs, dtype=np.int64).reshape(-1, 2)


@given(sources_and_pairs())
def test_plan_reads_rebuilds_the_requested_rows(case):
    lengths, pairs = case
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    arrays = [np.arange(n) + offset for n, offset in zip(lengths, offsets, strict=True)]
    block = np.full(len(pairs), -1)
    reads = plan_reads(pairs)
    assert [r.source for r in reads] == sorted({int(s) for s in pairs[:, 0]})
    for read in reads:
        assert (np.diff(read.local) > 0).all()
        data = arrays[read.source][read.local]
        block[read.dest] = data[read.gather]
    np.testing.assert_array_equal(block, offsets[pairs[:, 0]] + pairs[:, 1])


sorted_unique = st.lists(st.integers(0, 40), unique=True, max_size=12).map(
    lambda values: np.array(sorted(values), dtype=np.intp)
)


@given(sorted_unique)
def test_as_slice_describes_exactly_its_indices(local):
    found = as_slice(local)
    steps = set(np.diff(local).tolist())
    if found is None:
        assert len(local) == 0 or len(steps) > 1
    else:
        assert found.step > 0
        assert list(range(found.start, found.stop, found.step)) == local.tolist()


@given(sorted_unique)
def test_contiguous_runs_cover_indices_once(local):
    runs = contiguous_runs(local)
    covered = [i for run in runs for i in range(run.start, run.stop, run.step)]
    assert covered == local.tolist()
    assert all(run.step == 1 for run in runs)
    assert all(a.stop < b.start for a, b in itertools.pairwise(runs))

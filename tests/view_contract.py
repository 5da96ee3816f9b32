"""ViewContract: the behaviour every view must show, whatever backs its sources.

Subclasses supply only the ``store`` fixture (numpy array -> source of their backend) and,
for slow backends, a smaller ``max_examples``. The contract builds five views from the
same data (plain, sub-range, shuffled, multi-source with mixed dtypes, shuffled multi-
source with maxlen) and compares every read with numpy on the materialized data:
attributes, fixed keys of every kind, hypothesis-drawn keys, iteration, empty
selections, rejected and out-of-range keys, pickling (in-process and in a spawned
process), seeded shuffles, one sorted read per source, and unchanged source files.

Also holds the ``view_keys`` hypothesis strategy shared with tests/data_tools/test_indexing.py.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_tools import wrap
from data_tools.errors import UnsupportedIndexError, ViewIndexError
from data_tools.wrap import delayed_view, multi_source_array

ELEMENT_SHAPE = (3, 4)


@st.composite
def view_keys(draw, shape):
    """Draw numpy-style keys for an array of ``shape`` that views support.

    Every axis draws an int, a slice (negative bounds and steps included), a 1-D integer
    list or array, or a 1-D or 2-D boolean array; an Ellipsis may stand for any number
    of axes and the key may be bare rather than a tuple. Index arrays share one length
    (or 1) so that they usually broadcast; boolean arrays may not, as with numpy.
    """
    num_axes = draw(st.integers(0, len(shape)))
    array_len = draw(st.integers(0, 3))
    items = []
    axis = 0
    while axis < num_axes:
        size = shape[axis]
        kind = draw(st.sampled_from(["int", "slice", "list", "array", "bool", "bool2d"]))
        if kind == "int" and size:
            items.append(draw(st.integers(-size, size - 1)))
        elif kind in ("list", "array") and size:
            length = draw(st.sampled_from([array_len, 1]))
            values = draw(st.lists(st.integers(-size, size - 1), min_size=length, max_size=length))
            items.append(values if kind == "list" else np.array(values, dtype=np.int64))
        elif kind == "bool":
            items.append(np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size))))
        elif kind == "bool2d" and axis + 1 < num_axes:
            dims = shape[axis : axis + 2]
            flat = draw(
                st.lists(st.booleans(), min_size=dims[0] * dims[1], max_size=dims[0] * dims[1])
            )
            items.append(np.array(flat, dtype=bool).reshape(dims))
            axis += 1
        else:
            bound = st.none() | st.integers(-size - 2, size + 2)
            step = st.none() | st.integers(-3, 3).filter(bool)
            items.append(slice(draw(bound), draw(bound), draw(step)))
        axis += 1
    if draw(st.booleans()):
        items.insert(draw(st.integers(0, len(items))), Ellipsis)
    if len(items) == 1 and not isinstance(items[0], list) and draw(st.booleans()):
        return items[0]
    return tuple(items)


def numpy_key(key):
    """The key numpy needs for a view's key: a list holding sequences counts as a tuple."""
    if isinstance(key, list) and any(isinstance(k, list | tuple | np.ndarray) for k in key):
        return tuple(key)
    return key


def assert_same_as_numpy(result, expected):
    assert np.shape(result) == np.shape(expected)
    assert np.asarray(result).dtype == np.asarray(expected).dtype
    np.testing.assert_array_equal(result, expected)


FIXED_KEYS = {
    "int": lambda n: 3,
    "negative_int": lambda n: -1,
    "numpy_int": lambda n: np.int64(2),
    "slice": lambda n: slice(2, 8),
    "slice_step": lambda n: slice(1, None, 3),
    "slice_negative_bounds": lambda n: slice(-8, -2),
    "slice_negative_step": lambda n: slice(None, None, -2),
    "slice_negative_step_bounds": lambda n: slice(-2, 1, -3),
    "slice_past_end": lambda n: slice(5, n + 10),
    "list": lambda n: [4, 0, 4, 9],
    "array_negative_duplicates": lambda n: np.array([-1, 2, 2, -1]),
    "bool": lambda n: np.arange(n) % 3 == 0,
    "ellipsis": lambda n: ...,
    "ellipsis_int": lambda n: (..., 2),
    "int_ellipsis": lambda n: (1, ...),
    "int_slice": lambda n: (3, slice(0, 2)),
    "all_ints": lambda n: (4, 2, 3),
    "trailing_negative": lambda n: (slice(None), -1, slice(None, None, -1)),
    "trailing_fancy": lambda n: (slice(1, 5), [2, 0]),
    "paired_fancy": lambda n: ([1, 5], [0, 2]),
    "int_and_fancy": lambda n: (slice(None, 4), 1, [3, 0, 3]),
    "separated_fancy": lambda n: ([1, 5], slice(None), [3, 0]),
    "fancy_ellipsis_fancy": lambda n: ([2, 1], ..., [0, 3]),
    "trailing_bool": lambda n: (slice(None), np.array([True, False, True])),
    "trailing_bool_2d": lambda n: (0, np.arange(12).reshape(3, 4) % 5 == 0),
    "nested_list": lambda n: [[0, 1]],
    "nested_list_pair": lambda n: [[0, 1], [2, 0]],
    "empty_tuple": lambda n: (),
}

EMPTY_KEYS = {
    "empty_slice": lambda n: slice(0, 0),
    "reversed_bounds": lambda n: slice(5, 2),
    "empty_list": lambda n: [],
    "empty_array": lambda n: np.array([], dtype=np.intp),
    "all_false": lambda n: np.zeros(n, dtype=bool),
    "empty_trailing": lambda n: (slice(None), slice(0, 0)),
    "empty_fancy_trailing": lambda n: (2, [], slice(None)),
}

UNSUPPORTED_KEYS = {
    "none": (None, "None"),
    "newaxis_in_tuple": ((0, np.newaxis), "None"),
    "two_ellipses": ((..., 0, ...), "ellipsis"),
    "2d_int_array": (np.array([[0, 1]]), "more than one dimension"),
    "triple_nested_list": ([[[0, 1]]], "more than one dimension"),
    "bool_scalar": (True, "boolean scalar"),
    "float": (1.5, "valid view indices"),
    "string": ("a", "valid view indices"),
    "float_array": (np.array([0.5]), "dtype float64"),
    "too_many": ((0, 0, 0, 0), "Too many indices"),
    "mismatched_arrays": (([0, 1], [0, 1, 2]), "broadcast"),
}

OUT_OF_RANGE_KEYS = [
    lambda n: n,
    lambda n: -n - 1,
    lambda n: [0, n],
    lambda n: np.array([-n - 1]),
    lambda n: (0, 3),
    lambda n: (slice(None), 0, -5),
    lambda n: (0, [0, 3]),
    lambda n: np.ones(n + 1, dtype=bool),
]


class ViewContract:
    """The view behaviour every backend must show; subclasses supply ``store``."""

    max_examples = 60

    @pytest.fixture
    def store(self):
        """Return a callable turning a numpy array into a source of the backend under test."""
        raise NotImplementedError

    @pytest.fixture
    def data(self):
        rng = np.random.default_rng(7)
        return [
            rng.integers(-100, 100, size=(n, *ELEMENT_SHAPE)).astype(dtype)
            for n, dtype in [(17, np.float32), (4, np.int16), (9, np.float32)]
        ]

    @pytest.fixture(
        params=["delayed", "delayed_range", "delayed_shuffled", "multi", "multi_shuffled_maxlen"]
    )
    def case(self, request, store, data):
        """A view and the numpy array it must equal."""
        kind = request.param
        if kind.startswith("delayed"):
            options = {
                "delayed": {},
                "delayed_range": {"idx_min": 3, "idx_max": 15},
                "delayed_shuffled": {"shuffle": True},
            }[kind]
            view = delayed_view(store(data[0]), **options)
            expected = data[0][view.index_pairs[:, 1]]
        else:
            shuffled = kind == "multi_shuffled_maxlen"
            view = multi_source_array(
                [store(a) for a in data],
                class_list=[1, 0, 1],
                shuffle=shuffled,
                maxlen=6 if shuffled else None,
            )
            expected = _materialize(data, view.index_pairs, view.dtype)
        return view, expected

    def test_attributes(self, case):
        view, expected = case
        assert len(view) == len(expected)
        assert view.shape == expected.shape
        assert view.ndim == expected.ndim
        assert view.dtype == expected.dtype
        assert_same_as_numpy(np.asarray(view), expected)
        assert np.asarray(view, dtype=np.float64).dtype == np.float64
        with pytest.raises(ValueError, match="copy=False"):
            np.asarray(view, copy=False)

    # Key tables run in one test per view: one file setup per backend, not one per key.
    def test_fixed_keys(self, case):
        view, expected = case
        for name, make_key in FIXED_KEYS.items():
            key = make_key(len(view))
            try:
                assert_same_as_numpy(view[key], expected[numpy_key(key)])
            except AssertionError as error:
                raise AssertionError(f"key {name}: {key!r}") from error

    def test_drawn_keys(self, case):
        view, expected = case

        @settings(max_examples=self.max_examples)
        @given(key=view_keys(view.shape))
        def check(key):
            try:
                wanted = expected[key]
            except IndexError:
                with pytest.raises(IndexError):
                    view[key]
                return
            assert_same_as_numpy(view[key], wanted)

        check()

    def test_iteration(self, case):
        view, expected = case
        rows = list(view)
        assert len(rows) == len(expected)
        for row, wanted in zip(rows, expected, strict=True):
            assert_same_as_numpy(row, wanted)

    def test_empty_selections(self, case):
        view, expected = case
        for name, make_key in EMPTY_KEYS.items():
            key = make_key(len(view))
            result = view[key]
            assert isinstance(result, np.ndarray), name
            assert result.size == 0, name
            assert_same_as_numpy(result, expected[key])

    def test_unsupported_keys(self, case):
        view, _ = case
        for key, match in UNSUPPORTED_KEYS.values():
            with pytest.raises(UnsupportedIndexError, match=match):
                view[key]

    def test_out_of_range(self, case):
        view, expected = case
        for make_key in OUT_OF_RANGE_KEYS:
            key = make_key(len(view))
            with pytest.raises(IndexError):
                expected[key]
            with pytest.raises(ViewIndexError, match=r"out of bounds|does not match"):
                view[key]

    def test_non_integer_slice_bounds(self, case):
        view, _ = case
        with pytest.raises(TypeError, match="slice indices"):
            view[0.5:2]
        with pytest.raises(ValueError, match="step cannot be zero"):
            view[::0]

    def test_pickle_round_trip(self, case):
        view, expected = case
        clone = pickle.loads(pickle.dumps(view))
        assert_same_as_numpy(clone[:], expected)
        np.testing.assert_array_equal(clone.index_pairs, view.index_pairs)

    def test_read_in_spawned_process(self, store, data):
        view = multi_source_array([store(a) for a in data], shuffle=True)
        view[[0, 5]]  # sources opened here must not travel as open handles
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            result = pool.apply(np.asarray, (view,))
        assert_same_as_numpy(result, _materialize(data, view.index_pairs, view.dtype))

    def test_seeded_shuffle_is_reproducible(self, case):
        view, _ = case
        view.shuffle(1234)
        first, first_read = view.index_pairs.copy(), view[:]
        view.shuffle(99)
        view.shuffle(1234)
        np.testing.assert_array_equal(view.index_pairs, first)
        assert_same_as_numpy(view[:], first_read)
        assert view.shuffled

    def test_one_sorted_read_per_source(self, case, monkeypatch):
        view, expected = case
        calls = []
        real = wrap.row_reader

        def recording(source):
            reader = real(source)

            def read(local, trailing):
                calls.append((id(source), local.copy()))
                return reader(local, trailing)

            return read

        monkeypatch.setattr(wrap, "row_reader", recording)
        key = np.random.default_rng(3).integers(0, len(view), size=20)
        assert_same_as_numpy(view[key], expected[key])
        sources = [source for source, _ in calls]
        assert len(sources) == len(set(sources))
        for _, local in calls:
            assert (np.diff(local) > 0).all()

    def test_sources_never_modified(self, case, tmp_path):
        view, expected = case
        before = _digest_tree(tmp_path)
        view[:]
        view[[3, 1, 3]]
        list(view)
        pickle.loads(pickle.dumps(view))[2]
        assert _digest_tree(tmp_path) == before
        assert_same_as_numpy(view[:], expected)


def _materialize(arrays, pairs, dtype):
    offsets = np.concatenate(([0], np.cumsum([len(a) for a in arrays])[:-1]))
    flat = np.concatenate([a.astype(dtype) for a in arrays])
    return flat[offsets[pairs[:, 0]] + pairs[:, 1]]


def _digest_tree(root):
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }

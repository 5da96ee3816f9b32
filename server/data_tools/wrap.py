"""Lazy views over arrays: delayed_view and multi_source_array.

A view reads nothing until it is indexed. Every read goes through the same path: the key
is normalized (``_indexing.normalize_key``), the requested rows are mapped to
``(source, local index)`` pairs, each source is read once with sorted, de-duplicated
indices (a slice where the indices are evenly spaced; per contiguous run for HDF5, whose
multi-run selections on chunked datasets are slower than separate reads; one orthogonal
selection for zarr), and the rows are put back in the requested order, duplicates
included. Sources are only ever read.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from data_tools._indexing import normalize_key, plan_reads
from data_tools._parse import parse_bool, parse_int, parse_non_negative_int
from data_tools.storage import as_picklable, row_reader

__all__ = ["delayed_view", "multi_source_array"]

# Iteration reads this many bytes of elements at a time (at least one element).
_ITER_BLOCK_BYTES = 16 * 2**20


def _parse_source(name: str, source: Any) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """Return the shape and dtype of an array-like source, or raise naming ``name``."""
    shape = getattr(source, "shape", None)
    dtype = getattr(source, "dtype", None)
    if shape is None or dtype is None or not hasattr(source, "__getitem__"):
        raise TypeError(
            f"Expected {name} to be an array with shape, dtype and __getitem__ (a numpy "
            f"array, h5py dataset, zarr array, bcolz carray or view). "
            f"Got {type(source).__name__} instead."
        )
    shape = tuple(int(size) for size in shape)
    if not shape:
        raise ValueError(
            f"Expected {name} to have at least one dimension. Got a 0-dimensional array instead."
        )
    return shape, np.dtype(dtype)


def _parse_random_seed(random_seed: Any) -> np.random.Generator:
    try:
        return np.random.default_rng(random_seed)
    except (TypeError, ValueError) as error:
        raise type(error)(
            "Expected random_seed to be None, an integer >= 0 or anything "
            f"numpy.random.default_rng accepts. Got {random_seed!r} instead."
        ) from error


def _is_identity(index: npt.NDArray[np.intp], length: int) -> bool:
    return len(index) == length and bool((index == np.arange(length)).all())


class delayed_view:
    """A view into an array that reads data only when indexed.

    Indexing is numpy's for integers (negative too), slices (any step), 1-D integer
    arrays or lists, boolean arrays, one Ellipsis and tuples of these over the trailing
    axes; the result equals numpy's on the materialized view and is always a new array.
    As the reference documents, a list holding sequences is read as a tuple
    (``A[[[0, 1]]]`` is ``A[[0, 1]]``). Indices that add dimensions (``None``, boolean
    scalars, integer arrays of more than one dimension) and a second Ellipsis raise
    ``UnsupportedIndexError``; an out-of-range index raises ``ViewIndexError`` (both are
    IndexErrors).

    Attributes:
        arr: The source array.
        idx_min: First source index of the view.
        idx_max: The view ends before this source index.
        shuffled: Whether the current order was drawn at random (``shuffle=True`` or a
            ``shuffle()`` call).

    Args:
        arr: The source array: anything with ``shape``, ``dtype`` and numpy-style
            ``__getitem__`` (numpy, h5py, zarr, bcolz, another view).
        shuffle: Default False. If True, access order within the view is random, drawn
            as by ``shuffle()`` with no seed.
        idx_min: Default None (0). The view starts at this index of ``arr``.
        idx_max: Default None (``len(arr)``). The view ends before this index of ``arr``.

    Raises:
        TypeError: If ``arr`` is not an array, ``shuffle`` is not a bool, or an index
            bound is not an integer.
        ValueError: If ``arr`` is 0-dimensional, or unless
            ``0 <= idx_min <= idx_max <= len(arr)``.
    """

    def __init__(
        self,
        arr: Any,
        shuffle: bool = False,
        idx_min: int | None = None,
        idx_max: int | None = None,
    ) -> None:
        shape, dtype = _parse_source("arr", arr)
        length = shape[0]
        self.idx_min = 0 if idx_min is None else parse_non_negative_int("idx_min", idx_min)
        self.idx_max = length if idx_max is None else parse_non_negative_int("idx_max", idx_max)
        if self.idx_max > length:
            raise ValueError(
                f"Expected idx_max to be at most len(arr) = {length}. Got {self.idx_max} instead."
            )
        if self.idx_min > self.idx_max:
            raise ValueError(
                f"Expected idx_min to be at most idx_max = {self.idx_max}. "
                f"Got {self.idx_min} instead."
            )
        self._setup((arr,), shape[1:], dtype, shuffle)

    def _setup(
        self,
        sources: tuple[Any, ...],
        element_shape: tuple[int, ...],
        dtype: np.dtype[Any],
        shuffle: Any,
    ) -> None:
        self._sources = sources
        self._source_lengths = np.array([int(s.shape[0]) for s in sources], dtype=np.int64)
        self._element_shape = element_shape
        self._dtype = dtype
        self.shuffled = False
        self._pairs = self._draw_pairs(None)
        if parse_bool("shuffle", shuffle):
            self.shuffle()

    def _draw_pairs(self, rng: np.random.Generator | None) -> npt.NDArray[np.int64]:
        """Return the view's ``(source, local)`` pairs, in order or permuted by ``rng``."""
        local = np.arange(self.idx_min, self.idx_max, dtype=np.int64)
        if rng is not None:
            local = rng.permutation(local)
        return _frozen(np.column_stack((np.zeros_like(local), local)))

    @property
    def arr(self) -> Any:
        """The (first) source array."""
        return self._sources[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """The view's shape: ``len(self)`` then the sources' trailing shape."""
        return (len(self._pairs), *self._element_shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The view's dtype: numpy's ``result_type`` over the sources' dtypes."""
        return self._dtype

    @property
    def ndim(self) -> int:
        """The view's number of dimensions."""
        return 1 + len(self._element_shape)

    @property
    def index_pairs(self) -> npt.NDArray[np.int64]:
        """The view's order: row ``i`` is ``(source position, index in that source)``.

        A read-only ``(len(self), 2)`` int64 array. Assigning any ``(n, 2)`` integer
        array-like (for example another view's ``index_pairs``, the reference's "direct
        hack" to share a shuffle order) replaces the view's contents and length; the
        assigned pairs are copied.

        Raises:
            ValueError: On assignment, if the value is not ``(n, 2)`` integers naming an
                existing source and an index within it.
        """
        return self._pairs

    @index_pairs.setter
    def index_pairs(self, pairs: Any) -> None:
        arr = np.array(pairs)
        if arr.size == 0:
            arr = arr.reshape(0, 2).astype(np.int64)
        if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                "Expected index_pairs to be an (n, 2) array of integer (source, index) pairs. "
                f"Got an array of shape {arr.shape} and dtype {arr.dtype} instead."
            )
        arr = arr.astype(np.int64)
        sources, local = arr[:, 0], arr[:, 1]
        bad_source = (sources < 0) | (sources >= len(self._sources))
        if bad_source.any():
            raise ValueError(
                f"Expected index_pairs sources in [0, {len(self._sources)}). "
                f"Got {int(sources[bad_source][0])} instead."
            )
        bad_local = (local < 0) | (local >= self._source_lengths[sources])
        if bad_local.any():
            row = int(np.flatnonzero(bad_local)[0])
            raise ValueError(
                f"Expected index_pairs indices within their source. Got {tuple(arr[row])}: "
                f"source {sources[row]} has length {self._source_lengths[sources[row]]}."
            )
        self._pairs = _frozen(arr)

    def shuffle(self, random_seed: Any = None) -> None:
        """Draw a new random access order for the view.

        The order is drawn afresh from the view's definition (any assigned
        ``index_pairs`` are replaced), so the same seed always gives the same view.

        Args:
            random_seed: Default None (fresh OS entropy). An integer >= 0, a
                ``numpy.random.Generator``, or anything ``numpy.random.default_rng``
                accepts.

        Raises:
            TypeError, ValueError: If ``numpy.random.default_rng`` rejects ``random_seed``.
        """
        self._pairs = self._draw_pairs(_parse_random_seed(random_seed))
        self.shuffled = True

    def __len__(self) -> int:
        return len(self._pairs)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, "
            f"shuffled={self.shuffled})"
        )

    def __getitem__(self, key: Any) -> Any:
        view_key = normalize_key(key, self.shape)
        block = np.empty(view_key.block_shape, self._dtype)
        if block.size:
            self._fill(block, view_key.rows, view_key.source_trailing)
        return block if view_key.takes_whole_block else block[view_key.local_key]

    def take_rows(
        self, indices: npt.NDArray[np.intp], trailing: tuple[Any, ...] = ()
    ) -> npt.NDArray[Any]:
        """Rows ``indices`` (any order, repeats allowed), each restricted to ``trailing``, as a
        new array, read straight from the sources (``data_tools.storage.RowSource``)."""
        block: npt.NDArray[Any] = self[(np.asarray(indices, dtype=np.intp), *trailing)]
        return block

    def _fill(
        self,
        block: npt.NDArray[Any],
        rows: npt.NDArray[np.intp],
        trailing: tuple[slice, ...],
    ) -> None:
        """Fill ``block`` with view ``rows`` restricted to ``trailing``, one read per source."""
        for read in plan_reads(self._pairs[rows]):
            data = np.asarray(row_reader(self._sources[read.source])(read.local, trailing))
            if _is_identity(read.dest, len(block)) and _is_identity(read.gather, len(data)):
                block[...] = data
            else:
                block[read.dest] = data[read.gather]

    def __iter__(self) -> Iterator[Any]:
        element_bytes = max(1, self._dtype.itemsize * int(np.prod(self._element_shape)))
        step = max(1, _ITER_BLOCK_BYTES // element_bytes)
        for start in range(0, len(self), step):
            yield from self[start : start + step]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> npt.NDArray[Any]:
        if copy is False:
            raise ValueError("A view is read into a new array; copy=False cannot be honoured.")
        data: npt.NDArray[Any] = self[...]
        return data if dtype is None else data.astype(dtype, copy=False)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_sources"] = tuple(as_picklable(source) for source in self._sources)
        return state


class multi_source_array(delayed_view):
    """A view that concatenates several sources, optionally shuffled across all of them.

    Indexing and reads are those of ``delayed_view``. The view's dtype is numpy's
    ``result_type`` over the sources' dtypes; elements are cast to it when read.

    Attributes:
        source_list: The sources, as a list.
        class_list: The class of each source, or None.
        maxlen: The most elements taken from each source, or None.
        shuffled: Whether the current order was drawn at random.

    Args:
        source_list: Non-empty sequence of arrays whose trailing shapes (all axes but the
            first) are equal.
        class_list: Default None (source ``i`` has label ``i``). One integer label per
            source, returned by ``get_labels()``.
        shuffle: Default False. If True, order is random within and across all sources.
        maxlen: Default None (no limit). The most elements to take from each source:
            ``source[0:maxlen]`` unshuffled, a random subset of ``maxlen`` elements when
            shuffled (redrawn by every ``shuffle()``).

    Raises:
        TypeError: If ``source_list`` is not a sequence, a source is not an array, the
            dtypes have no common type, a label or ``maxlen`` is not an integer, or
            ``shuffle`` is not a bool.
        ValueError: If ``source_list`` is empty, trailing shapes differ, ``class_list``
            has the wrong length, or ``maxlen`` is negative.
    """

    def __init__(
        self,
        source_list: Sequence[Any],
        class_list: Sequence[int] | None = None,
        shuffle: bool = False,
        maxlen: int | None = None,
    ) -> None:
        if not isinstance(source_list, Sequence) or isinstance(source_list, str | bytes):
            raise TypeError(
                f"Expected source_list to be a list of arrays. Got {type(source_list).__name__} "
                "instead."
            )
        if not source_list:
            raise ValueError("Expected source_list to hold at least one array. Got none instead.")
        parsed = [_parse_source(f"source_list[{i}]", s) for i, s in enumerate(source_list)]
        element_shape = parsed[0][0][1:]
        for i, (shape, _) in enumerate(parsed):
            if shape[1:] != element_shape:
                raise ValueError(
                    f"Expected source_list[{i}] to have trailing shape {element_shape} like "
                    f"source_list[0]. Got shape {shape} instead."
                )
        try:
            dtype = functools.reduce(np.result_type, [d for _, d in parsed])
        except TypeError as error:
            raise TypeError(
                "Expected source_list dtypes to have a common numpy result type. "
                f"Got {[str(d) for _, d in parsed]} instead."
            ) from error
        if class_list is None:
            labels = np.arange(len(source_list), dtype=np.int64)
        else:
            if len(class_list) != len(source_list):
                raise ValueError(
                    f"Expected class_list to have one label per source ({len(source_list)}). "
                    f"Got {len(class_list)} instead."
                )
            labels = np.array(
                [parse_int(f"class_list[{i}]", c) for i, c in enumerate(class_list)],
                dtype=np.int64,
            )
        self.class_list = None if class_list is None else list(class_list)
        self.maxlen = None if maxlen is None else parse_non_negative_int("maxlen", maxlen)
        self._labels = labels
        self._setup(tuple(source_list), element_shape, dtype, shuffle)

    def _draw_pairs(self, rng: np.random.Generator | None) -> npt.NDArray[np.int64]:
        parts = []
        for i, length in enumerate(self._source_lengths.tolist()):
            take = length if self.maxlen is None else min(length, self.maxlen)
            if rng is None:
                local = np.arange(take, dtype=np.int64)
            else:
                local = rng.choice(length, size=take, replace=False, shuffle=True)
            parts.append(np.column_stack((np.full(take, i, dtype=np.int64), local)))
        pairs = np.concatenate(parts).astype(np.int64)
        if rng is not None:
            pairs = pairs[rng.permutation(len(pairs))]
        return _frozen(pairs)

    @property
    def source_list(self) -> list[Any]:
        """The sources, in the order given."""
        return list(self._sources)

    def get_labels(self) -> npt.NDArray[np.int64]:
        """Return each element's label, aligned with the view's current order.

        Returns:
            An int64 array of length ``len(self)``: the ``class_list`` entry of each
            element's source, or the source's position when ``class_list`` is None.
        """
        labels: npt.NDArray[np.int64] = self._labels[self._pairs[:, 0]]
        return labels


def _frozen(pairs: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    pairs.flags.writeable = False
    return pairs

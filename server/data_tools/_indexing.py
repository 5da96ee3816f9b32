"""Pure index arithmetic for views: normalize numpy-style keys and plan per-source reads.

A view key is split in two. ``normalize_key`` returns the sorted, de-duplicated view rows
to read, a positive-step slice per trailing axis to apply at the source, and a
``local_key`` that, applied with numpy to the block read that way, gives exactly numpy's
result for the original key on the materialized view. Keeping every axis's kind (int,
slice or integer array) in ``local_key`` is what makes numpy's rules for combining
advanced indices (result axis placement, broadcasting) carry over unchanged.

``plan_reads`` then maps view rows, through the view's ``(source, local index)`` pairs,
to one read per source with sorted, unique local indices.
"""

from __future__ import annotations

import numbers
import operator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from data_tools.errors import UnsupportedIndexError, ViewIndexError

__all__ = [
    "SourceRead",
    "ViewKey",
    "as_slice",
    "contiguous_runs",
    "normalize_key",
    "plan_reads",
]

IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]

_VALID_KINDS = (
    "Only integers, slices (`:`), one ellipsis (`...`) and 1-D integer or boolean arrays "
    "are valid view indices"
)


@dataclass(frozen=True)
class ViewKey:
    """A view key split into what to read and how to index what was read.

    Attributes:
        rows: Sorted, unique view positions (first axis) to read.
        source_trailing: One slice per trailing axis, with non-negative bounds and a
            positive step, to apply at the source.
        local_key: One entry per axis (int, slice or 1-D integer array), with the key's
            Ellipsis, if any, in place of the axes it stands for, such that
            ``block[local_key]`` is numpy's result, where ``block`` holds ``rows`` of the
            view restricted to ``source_trailing``.
    """

    rows: IntArray
    source_trailing: tuple[slice, ...]
    local_key: tuple[Any, ...]

    @property
    def block_shape(self) -> tuple[int, ...]:
        """The shape of the block to read: ``len(rows)`` then one size per trailing slice."""
        sizes = (len(range(s.start, s.stop, s.step)) for s in self.source_trailing)
        return (len(self.rows), *sizes)

    @property
    def takes_whole_block(self) -> bool:
        """Whether ``block[local_key]`` is ``block`` itself (every entry is ``slice(None)``)."""
        return all(
            k is Ellipsis or (isinstance(k, slice) and k == slice(None)) for k in self.local_key
        )


class SourceRead(NamedTuple):
    """One read from one source.

    Attributes:
        source: Position of the source in the view's source list.
        local: Sorted, unique indices along the source's first axis.
        dest: Block rows that receive data from this source.
        gather: For each entry of ``dest``, its position in ``local``.
    """

    source: int
    local: IntArray
    dest: IntArray
    gather: IntArray


# An axis entry before bounds are checked: an int, a slice, or an integer array.
_Entry = int | slice | IntArray


class _BoolIndex(NamedTuple):
    """A boolean array item, before it is expanded over the axes it spans."""

    mask: BoolArray


def _is_sequence_like(item: Any) -> bool:
    return isinstance(item, list | tuple | np.ndarray)


def _as_tuple(key: Any) -> tuple[Any, ...]:
    """Return ``key`` as a tuple of per-axis items.

    A list holding sequences, slices, Ellipsis or None is read as a tuple, as numpy did
    before 1.23 and as the reference documents (``A[[[0, 1]]]`` is ``A[[0, 1]]``).
    """
    if isinstance(key, tuple):
        return key
    if isinstance(key, list) and any(
        _is_sequence_like(k) or k is Ellipsis or k is None or isinstance(k, slice) for k in key
    ):
        return tuple(key)
    return (key,)


def _array_entry(item: Any) -> _Entry | _BoolIndex:
    """Convert a list/tuple/array item into integer entries, or return a boolean array."""
    try:
        arr = np.asarray(item)
    except ValueError as error:
        raise UnsupportedIndexError(f"{_VALID_KINDS}; got a ragged sequence {item!r}.") from error
    if arr.dtype == np.bool_:
        if arr.ndim == 0:
            raise UnsupportedIndexError(
                "A boolean scalar index adds a dimension, which views do not support."
            )
        return _BoolIndex(arr)
    if arr.size == 0 and not isinstance(item, np.ndarray):
        arr = arr.astype(np.intp)
    if not np.issubdtype(arr.dtype, np.integer):
        raise UnsupportedIndexError(
            f"{_VALID_KINDS}; got an array of dtype {arr.dtype} ({item!r})."
        )
    if arr.ndim == 0:
        return int(arr)
    if arr.ndim > 1:
        raise UnsupportedIndexError(
            f"Integer index arrays of more than one dimension are not supported "
            f"(they add dimensions); got one of shape {arr.shape}."
        )
    return arr.astype(np.intp, copy=False)


def _expand(key: Any, shape: tuple[int, ...]) -> tuple[list[_Entry], slice | None]:
    """Return one entry per axis and the axes the Ellipsis stood for, if there was one.

    The Ellipsis is expanded and booleans become their nonzero() arrays.
    """
    items: list[_Entry | _BoolIndex | None] = []  # None marks the Ellipsis
    ellipsis_at: int | None = None
    for item in _as_tuple(key):
        if item is None:
            raise UnsupportedIndexError(
                "None (numpy.newaxis) adds a dimension, which views do not support."
            )
        if item is Ellipsis:
            if ellipsis_at is not None:
                raise UnsupportedIndexError(
                    "Only one ellipsis (`...`) is supported in a view index."
                )
            ellipsis_at = len(items)
            items.append(None)
        elif isinstance(item, slice):
            items.append(item)
        elif isinstance(item, bool | np.bool_):
            raise UnsupportedIndexError(
                "A boolean scalar index adds a dimension, which views do not support."
            )
        elif _is_sequence_like(item):
            items.append(_array_entry(item))
        elif isinstance(item, numbers.Integral) or hasattr(item, "__index__"):
            items.append(operator.index(item))
        else:
            raise UnsupportedIndexError(f"{_VALID_KINDS}; got {item!r} ({type(item).__name__}).")

    used = sum(it.mask.ndim if isinstance(it, _BoolIndex) else 1 for it in items if it is not None)
    if used > len(shape):
        raise UnsupportedIndexError(
            f"Too many indices for a view: it is {len(shape)}-dimensional, but {used} were indexed."
        )
    fill: list[_Entry | _BoolIndex | None] = [slice(None)] * (len(shape) - used)
    if ellipsis_at is not None:
        items[ellipsis_at : ellipsis_at + 1] = fill
    else:
        items.extend(fill)

    entries: list[_Entry] = []
    ellipsis_axes = None
    for at, item in enumerate(items):
        if at == ellipsis_at:
            ellipsis_axes = slice(len(entries), len(entries) + len(fill))
        assert item is not None
        if isinstance(item, _BoolIndex):
            axis, mask = len(entries), item.mask
            dims = shape[axis : axis + mask.ndim]
            if mask.shape != dims:
                raise ViewIndexError(
                    f"Boolean index of shape {mask.shape} does not match the view's shape "
                    f"{dims} along axes {axis} to {axis + mask.ndim - 1}."
                )
            entries.extend(nz.astype(np.intp, copy=False) for nz in mask.nonzero())
        else:
            entries.append(item)
    return entries, ellipsis_axes


def _check_broadcast(entries: list[_Entry]) -> None:
    """Check the index arrays broadcast together; empty them all if the result is empty.

    numpy checks no array index against its axis when the broadcast selects nothing
    (``a[:, [99], []]`` is empty, not an IndexError), so neither do views.
    """
    shapes = [e.shape for e in entries if isinstance(e, np.ndarray)]
    if not shapes:
        return
    try:
        broadcast = np.broadcast_shapes(*shapes)
    except ValueError as error:
        listed = " ".join(str(s) for s in shapes)
        raise UnsupportedIndexError(
            f"Shape mismatch: index arrays could not be broadcast together with shapes {listed}."
        ) from error
    if 0 in broadcast:
        for axis, entry in enumerate(entries):
            if isinstance(entry, np.ndarray):
                entries[axis] = np.zeros(broadcast, dtype=np.intp)


def _check_int(index: int, axis: int, size: int) -> int:
    if not -size <= index < size:
        raise ViewIndexError(f"Index {index} is out of bounds for axis {axis} with size {size}.")
    return index % size


def _check_array(arr: IntArray, axis: int, size: int) -> IntArray:
    if arr.size:
        bad = arr[(arr < -size) | (arr >= size)]
        if bad.size:
            raise ViewIndexError(
                f"Index {int(bad[0])} is out of bounds for axis {axis} with size {size}."
            )
    return np.where(arr < 0, arr + size, arr).astype(np.intp, copy=False)


def _forward(bounds: slice, size: int) -> tuple[range, bool]:
    """Return the slice's positions in increasing order, and whether it ran backwards."""
    positions = range(*bounds.indices(size))
    if positions.step > 0:
        return positions, False
    return positions[::-1], True


def _first_axis(entry: _Entry, size: int) -> tuple[IntArray, Any]:
    if isinstance(entry, slice):
        positions, backwards = _forward(entry, size)
        rows = np.arange(positions.start, positions.stop, positions.step, dtype=np.intp)
        return rows, slice(None, None, -1) if backwards else slice(None)
    if isinstance(entry, np.ndarray):
        rows, inverse = np.unique(_check_array(entry, 0, size), return_inverse=True)
        return rows.astype(np.intp, copy=False), inverse.reshape(entry.shape).astype(np.intp)
    return np.array([_check_int(entry, 0, size)], dtype=np.intp), 0


def _trailing_axis(entry: _Entry, axis: int, size: int) -> tuple[slice, Any]:
    if isinstance(entry, slice):
        positions, backwards = _forward(entry, size)
        if not positions:
            return slice(0, 0, 1), slice(None)
        read = slice(positions[0], positions[-1] + 1, positions.step)
        return read, slice(None, None, -1) if backwards else slice(None)
    if isinstance(entry, np.ndarray):
        arr = _check_array(entry, axis, size)
        if not arr.size:
            return slice(0, 0, 1), arr
        low = int(arr.min())
        return slice(low, int(arr.max()) + 1, 1), arr - low
    index = _check_int(entry, axis, size)
    return slice(index, index + 1, 1), 0


def normalize_key(key: Any, shape: tuple[int, ...]) -> ViewKey:
    """Split a numpy-style key for an array of ``shape`` into a ``ViewKey``.

    Args:
        key: An int, slice, one Ellipsis, a 1-D integer array or list, a boolean array, or a
            tuple of these; a list holding sequences counts as a tuple.
        shape: The shape of the (virtual) array being indexed; ``shape[0]`` is its length.

    Returns:
        The rows to read, the trailing slices to read them with, and the key that turns
        the block read into numpy's result.

    Raises:
        UnsupportedIndexError: For None/np.newaxis, a second Ellipsis, a boolean scalar,
            integer arrays of more than one dimension, too many indices, index arrays that
            do not broadcast together, and items numpy rejects too (floats, strings, ...).
        ViewIndexError: For an index out of range, or a boolean array whose shape does not
            match the axes it indexes.
        TypeError, ValueError: From ``slice.indices`` for non-integer slice bounds or a
            zero step, as numpy.
    """
    entries, ellipsis_axes = _expand(key, shape)
    _check_broadcast(entries)
    rows, first = _first_axis(entries[0], shape[0])
    trailing = [
        _trailing_axis(entry, axis, size)
        for axis, (entry, size) in enumerate(zip(entries[1:], shape[1:], strict=True), start=1)
    ]
    local_key: list[Any] = [first, *(local for _, local in trailing)]
    if ellipsis_axes is not None:
        # Keep the Ellipsis itself: numpy counts it as separating advanced indices even
        # where it stands for no axis, which moves the broadcast axes to the front.
        local_key[ellipsis_axes] = [Ellipsis]
    return ViewKey(
        rows=rows,
        source_trailing=tuple(read for read, _ in trailing),
        local_key=tuple(local_key),
    )


def plan_reads(pairs: npt.NDArray[np.integer[Any]]) -> tuple[SourceRead, ...]:
    """Group ``(source, local index)`` pairs into one read per source.

    Args:
        pairs: Integer array of shape ``(n, 2)``; row ``i`` names the source and the local
            index that block row ``i`` comes from. Pairs may repeat.

    Returns:
        One ``SourceRead`` per source present, in increasing source order, each with
        sorted unique local indices; ``block[r.dest] = data[r.gather]`` fills the block
        from ``data``, the source read at ``r.local``.
    """
    sources = pairs[:, 0]
    order = np.argsort(sources, kind="stable").astype(np.intp)
    bounds = np.flatnonzero(np.diff(sources[order])) + 1
    reads = []
    for dest in np.split(order, bounds) if len(order) else []:
        local, gather = np.unique(pairs[dest, 1], return_inverse=True)
        reads.append(
            SourceRead(
                source=int(sources[dest[0]]),
                local=local.astype(np.intp, copy=False),
                dest=dest,
                gather=gather.astype(np.intp, copy=False),
            )
        )
    return tuple(reads)


def as_slice(local: IntArray) -> slice | None:
    """Return the positive-step slice equal to sorted unique ``local``, or None if none is."""
    if not len(local):
        return None
    if len(local) == 1:
        return slice(int(local[0]), int(local[0]) + 1, 1)
    steps = np.diff(local)
    if (steps == steps[0]).all():
        return slice(int(local[0]), int(local[-1]) + 1, int(steps[0]))
    return None


def contiguous_runs(local: IntArray) -> tuple[slice, ...]:
    """Split sorted unique ``local`` into maximal runs of consecutive indices, as slices."""
    if not len(local):
        return ()
    breaks = np.flatnonzero(np.diff(local) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(local)]))
    return tuple(
        slice(int(local[s]), int(local[e - 1]) + 1, 1) for s, e in zip(starts, ends, strict=True)
    )

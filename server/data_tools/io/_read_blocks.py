"""Read blocks: runs of consecutive elements of a flow's data that lie in one storage chunk.

The chunk-windowed shuffle (``FlowSpec.shuffle_window``) keeps the elements of a block
together, so each storage chunk is decoded about once per epoch. This is the one place
that looks at how the data is stored; the FlowSpec takes the blocks it finds as data, and
a reader without a chunk cache counts what its reads decode (``decoded_nbytes``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from data_tools.storage import chunk_rows
from data_tools.wrap import delayed_view

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

__all__ = ["decoded_nbytes", "length", "read_blocks"]


def _chunk_ids(array: Any) -> npt.NDArray[np.int64]:
    """A number per row of ``array``: rows of one chunk of one source share theirs."""
    if isinstance(array, delayed_view):
        pairs = array.index_pairs
        ids = np.empty(len(pairs), dtype=np.int64)
        offset = 0
        for number, source in enumerate(array._sources):
            rows = pairs[:, 0] == number
            source_ids = _source_chunk_ids(source, pairs[rows, 1])
            ids[rows] = source_ids + offset
            if source_ids.size:  # the next source's numbers start above this one's
                offset += int(source_ids.max()) + 1
        return ids
    return _source_chunk_ids(array, np.arange(length(array), dtype=np.int64))


def _source_chunk_ids(source: Any, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    if isinstance(source, delayed_view):
        return _chunk_ids(source)[rows]
    rows_per_chunk = chunk_rows(source)
    return rows // rows_per_chunk if rows_per_chunk else np.zeros_like(rows)


def length(array: Any) -> int:
    """The length of the first axis of ``array`` (zarr arrays have no ``len()``)."""
    shape = getattr(array, "shape", None)
    return int(shape[0]) if shape is not None else len(array)


def read_blocks(arrays: Sequence[Any]) -> npt.NDArray[np.int64]:
    """The first element of each read block of ``arrays`` (a flow's data), increasing from 0.

    A block is a maximal run of consecutive elements that lie, in every array, in one
    storage chunk of one source (views are followed to their sources). An unchunked source
    (numpy, a contiguous HDF5 dataset) reads any row alike and is one block, so it splits
    no block of the other arrays; data with no chunked array at all is then one block,
    which ``shuffle_window`` shuffles whole, as the exact permutation does.

    Args:
        arrays: Arrays of equal length (numpy, h5py, zarr, bcolz, data_tools views, cached
            sources).
    """
    starts = [np.zeros(1, dtype=np.int64)]
    for array in arrays:
        ids = _chunk_ids(array)
        starts.append(np.flatnonzero(np.diff(ids)).astype(np.int64) + 1)
    return np.unique(np.concatenate(starts))


def decoded_nbytes(array: Any, rows: npt.NDArray[np.integer[Any]]) -> int:
    """Bytes that reading ``array[rows]`` decodes with no chunk cache: each storage chunk of a
    chunked source that some of the rows lie in, whole, once; the rows themselves of an
    unchunked source (views are followed to their sources)."""
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(array, delayed_view):
        pairs = array.index_pairs[rows]
        return sum(
            decoded_nbytes(source, pairs[pairs[:, 0] == number, 1])
            for number, source in enumerate(array._sources)
        )
    if not rows.size:
        return 0
    row_bytes: int = math.prod(array.shape[1:]) * np.dtype(array.dtype).itemsize
    rows_per_chunk = chunk_rows(array)
    if not rows_per_chunk:
        return int(rows.size) * row_bytes
    starts = np.unique(rows // rows_per_chunk) * rows_per_chunk
    chunk_lengths = np.minimum(rows_per_chunk, length(array) - starts)  # the last one: fewer
    return int(chunk_lengths.sum()) * row_bytes

"""Readers that tell a lost chunk from fill: zarr arrays and bcolz carrays written complete.

Matrix: a zarr array written by zarr_array_writer stores every chunk, even all-zero ones,
and is marked complete; open_zarr reads it exactly, raises DataLossError naming a deleted
chunk (slices, index arrays, orthogonal indexing, after pickling) and reads an array not
marked complete as zarr does (fill values); a BcolzSource reads a carray exactly, pickles
without its handle and raises DataLossError naming a deleted chunk file.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import zarr

from data_tools.errors import DataLossError
from data_tools.io.writers import bcolz_array_writer, zarr_array_writer
from data_tools.storage.bcolz import BcolzSource
from data_tools.storage.zarr import open_zarr

DATA = np.zeros((20, 3), dtype=np.float32)
DATA[8:] = np.arange(36, dtype=np.float32).reshape(12, 3) + 1  # chunks 0 and 1 all zero


@pytest.fixture
def complete_zarr(tmp_path):
    path = tmp_path / "a.zarr"
    with zarr_array_writer((3,), np.float32, 4, path, "x") as writer:
        writer.buffered_write(DATA)
    return path


def test_a_complete_zarr_array_stores_and_reads_every_chunk(complete_zarr):
    assert sorted(p.name for p in (complete_zarr / "x" / "c").iterdir()) == list("01234")
    np.testing.assert_array_equal(open_zarr(complete_zarr, "x")[:], DATA)


@pytest.mark.parametrize(
    "read",
    [
        lambda a: a[:],
        lambda a: a[5:6],
        lambda a: a.oindex[np.array([0, 5, 17])],
        lambda a: pickle.loads(pickle.dumps(a))[4:8],
    ],
    ids=["all", "slice", "oindex", "pickled"],
)
def test_a_lost_chunk_of_a_complete_zarr_array_is_data_loss(complete_zarr, read):
    array = open_zarr(complete_zarr, "x")
    (complete_zarr / "x" / "c" / "1" / "0").unlink()  # rows 4 to 7, all zeros
    with pytest.raises(DataLossError, match=r"zarr chunk '.*a\.zarr/x/c/1/0' is missing"):
        read(array)
    np.testing.assert_array_equal(array[8:], DATA[8:])  # the chunks still there read fine


def test_an_array_not_marked_complete_reads_a_missing_chunk_as_fill(tmp_path):
    group = zarr.open_group(str(tmp_path / "b.zarr"), mode="w")
    group.create_array("x", data=DATA + 1, chunks=(4, 3))
    (tmp_path / "b.zarr" / "x" / "c" / "1" / "0").unlink()
    read = open_zarr(tmp_path / "b.zarr", "x")[:]
    np.testing.assert_array_equal(read[4:8], 0)
    np.testing.assert_array_equal(read[8:], DATA[8:] + 1)


def test_a_bcolz_source_reads_exactly_and_names_a_lost_chunk_file(tmp_path):
    path = tmp_path / "c.bcolz"
    with bcolz_array_writer((3,), np.float32, 4, path, kwargs={"chunklen": 4}) as writer:
        writer.buffered_write(DATA)
    source = BcolzSource(path)
    assert (source.shape, source.dtype, source.chunklen, len(source)) == (
        (20, 3),
        DATA.dtype,
        4,
        20,
    )
    np.testing.assert_array_equal(source[np.array([1, 9, 18])], DATA[[1, 9, 18]])
    copy = pickle.loads(pickle.dumps(source))
    assert copy._carray is None  # the handle stays behind; the copy opens its own
    np.testing.assert_array_equal(copy[:], DATA)
    (path / "data" / "__2.blp").unlink()
    with pytest.raises(DataLossError, match=r"bcolz chunk file '.*c\.bcolz/data/__2\.blp'"):
        BcolzSource(path)[:]

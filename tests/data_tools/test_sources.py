"""Tests for data_tools.storage.hdf5 (H5Source) and data_tools.storage.as_picklable.

Matrix: H5Source attributes (shape, dtype, ndim, len, repr) x reads (int, slice, fancy,
``__array__``) equal to h5py's; pickle round trip before and after first use; reopen in a
spawned process and after a pid change (fork); close() and reopen; the file's bytes are
never changed; a key naming a group; as_picklable over h5py datasets, numpy, zarr and
H5Source.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import operator
import os
import pickle

import h5py
import numpy as np
import pytest
import zarr

from data_tools.errors import SourceChangedError
from data_tools.storage import as_picklable
from data_tools.storage.hdf5 import H5Source


@pytest.fixture
def h5_file(tmp_path, rng):
    path = tmp_path / "data.h5"
    data = rng.standard_normal((50, 3, 4)).astype(np.float32)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("group/images", data=data, chunks=(8, 3, 4), compression="lzf")
    return path, data


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_attributes(h5_file):
    path, data = h5_file
    source = H5Source(path, "/group/images")
    assert source.filename == os.fspath(path)
    assert source.key == "/group/images"
    assert source.shape == data.shape
    assert source.dtype == data.dtype
    assert source.ndim == 3
    assert len(source) == 50
    assert repr(source) == f"H5Source({os.fspath(path)!r}, '/group/images')"
    source.close()


@pytest.mark.parametrize(
    "key",
    [3, -1, slice(5, 20, 3), [1, 4, 9], np.array([0, 2, 3]), (slice(None), 1), ()],
)
def test_reads_equal_h5py(h5_file, key):
    path, data = h5_file
    source = H5Source(path, "group/images")
    np.testing.assert_array_equal(source[key], data[key])
    source.close()


def test_array_protocol(h5_file):
    path, data = h5_file
    source = H5Source(path, "group/images")
    np.testing.assert_array_equal(np.asarray(source), data)
    assert np.asarray(source, dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError, match="copy=False"):
        np.asarray(source, copy=False)
    source.close()


@pytest.mark.parametrize("used_before", [False, True])
def test_pickle_round_trip(h5_file, used_before):
    path, data = h5_file
    source = H5Source(path, "group/images")
    if used_before:
        source[0]
    clone = pickle.loads(pickle.dumps(source))
    assert (clone.filename, clone.key) == (source.filename, source.key)
    assert clone._file is None
    np.testing.assert_array_equal(clone[10:13], data[10:13])
    assert clone.shape == data.shape
    source.close()
    clone.close()


def test_reads_in_spawned_process(h5_file):
    path, data = h5_file
    source = H5Source(path, "group/images")
    source[0]  # the parent holds an open handle that must not travel
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        whole = pool.apply(np.asarray, (source,))
        part = pool.apply(operator.getitem, (source, [2, 7]))
    np.testing.assert_array_equal(whole, data)
    np.testing.assert_array_equal(part, data[[2, 7]])
    source.close()


def test_reopens_after_pid_change(h5_file, monkeypatch):
    path, data = h5_file
    source = H5Source(path, "group/images")
    source[0]
    inherited = source._file
    monkeypatch.setattr(os, "getpid", lambda: -12345)
    np.testing.assert_array_equal(source[1], data[1])
    assert source._file is not inherited
    assert inherited.id.valid  # the other process's handle is left alone
    source.close()
    monkeypatch.undo()
    inherited.close()


def test_close_then_reopen(h5_file):
    path, data = h5_file
    source = H5Source(path, "group/images")
    source[0]
    handle = source._file
    source.close()
    assert not handle.id.valid
    source.close()  # idempotent
    np.testing.assert_array_equal(source[4], data[4])
    source.close()


def test_file_never_modified(h5_file):
    path, _ = h5_file
    before, mtime = _digest(path), os.stat(path).st_mtime_ns
    source = H5Source(path, "group/images")
    source[:]
    source[[1, 2]]
    pickle.loads(pickle.dumps(source))[3]
    source.close()
    assert _digest(path) == before
    assert os.stat(path).st_mtime_ns == mtime


def test_opens_read_only(h5_file):
    path, _ = h5_file
    source = H5Source(path, "group/images")
    source[0]
    assert source._file.mode == "r"
    source.close()


def test_group_key_raises_type_error(h5_file):
    path, _ = h5_file
    source = H5Source(path, "group")
    with pytest.raises(TypeError, match="dataset"):
        _ = source.shape
    assert source._file is None


def test_missing_key_raises(h5_file):
    path, _ = h5_file
    with pytest.raises(KeyError):
        H5Source(path, "nope")[0]


def test_as_picklable_h5py_dataset(h5_file):
    path, data = h5_file
    with h5py.File(path, "r") as handle:
        source = as_picklable(handle["group/images"])
    assert isinstance(source, H5Source)
    assert (source.filename, source.key) == (os.fspath(path), "/group/images")
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(source))[:], data)
    source.close()


def test_as_picklable_passes_others_through(h5_file, tmp_path):
    path, _ = h5_file
    array = np.arange(3)
    z = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=(3,), dtype="i8", chunks=(2,))
    source = H5Source(path, "group/images")
    assert as_picklable(array) is array
    assert as_picklable(z) is z
    assert as_picklable(source) is source
    assert as_picklable([1, 2]) == [1, 2]


@pytest.mark.parametrize("change", ["truncate", "replace", "delete"])
def test_a_file_changed_while_open_is_refused_not_misread(tmp_path, change):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(4096, dtype=np.float64).reshape(64, 64)  # uncompressed
    source = H5Source(path, "/x")
    np.testing.assert_array_equal(source[:2], np.arange(128).reshape(2, 64))
    if change == "truncate":
        with path.open("r+b") as f:
            f.truncate(4096)
    elif change == "replace":  # a new file moved over the old one, as tools publish files
        with h5py.File(tmp_path / "new.h5", "w") as f:
            f["x"] = np.zeros((64, 64))
        os.replace(tmp_path / "new.h5", path)
    else:
        path.unlink()
    with pytest.raises(SourceChangedError, match=r"plain\.h5. (changed|was deleted) while open"):
        source[60:]
    if change == "replace":  # the handle was dropped: the next read sees the new file
        np.testing.assert_array_equal(source[60:], np.zeros((4, 64)))

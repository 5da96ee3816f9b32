"""Buffered array writers: buffering, flushing, limits, appends, bad input, completion.

Matrix: backends {numpy (buffered_array_writer), HDF5, zarr, bcolz} x
- pieces of any size (batches and single elements) equal their concatenation (property);
- flush triggers: buffer full, flush_buffer(), close(), leaving a with block, GC;
- fixed length: overflow refused before anything of the call is written;
- append: continues an existing array, checks element shape and dtype, length;
- several writers open on different arrays of one HDF5 file / zarr store;
- bad arguments and bad data name the argument and write nothing;
- completion: is_complete only after a clean close; not after an exception in a with
  block, garbage collection, a failed write, or SIGKILL of a writing subprocess.
"""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bcolz
import h5py
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from data_tools.errors import WriterClosedError, WriterError, WriterOverflowError
from data_tools.io import (
    bcolz_array_writer,
    buffered_array_writer,
    h5py_array_writer,
    is_complete,
    zarr_array_writer,
)

SHAPE = (2, 3)


class Backend:
    """Opens a writer on one on-disk format and reads back what it stored."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name

    def path(self, root, array="x"):
        """(path, array_name) as is_complete takes them."""
        if self.name == "hdf5":
            return root / "data.h5", array
        if self.name == "zarr":
            return root / "data.zarr", array
        return root / array, None

    def writer(self, root, shape=SHAPE, dtype="float32", batch_size=4, array="x", **kw):
        path, name = self.path(root, array)
        if self.name == "hdf5":
            return h5py_array_writer(shape, dtype, batch_size, path, name, **kw)
        if self.name == "zarr":
            return zarr_array_writer(shape, dtype, batch_size, path, name, **kw)
        return bcolz_array_writer(shape, dtype, batch_size, path, **kw)

    def read(self, root, array="x"):
        """The stored array, read through a fresh handle."""
        path, name = self.path(root, array)
        if self.name == "hdf5":
            with h5py.File(path, "r") as file:
                return file[name][()]
        if self.name == "zarr":
            return zarr.open_group(path, mode="r")[name][...]
        return bcolz.open(path, mode="r")[:]

    def complete(self, root, array="x"):
        return is_complete(*self.path(root, array))


BACKENDS = [Backend("hdf5"), Backend("zarr"), Backend("bcolz")]


def elements(count, shape=SHAPE, dtype="float32", start=0):
    size = int(np.prod(shape))
    return np.arange(start * size, (start + count) * size, dtype=dtype).reshape(count, *shape)


# ---------------------------------------------------------------- property: concatenation

pieces_strategy = st.lists(
    st.tuples(st.integers(0, 20), st.booleans()), min_size=0, max_size=8
)  # (size, pass a size-1 piece as a single element without the leading axis)


def write_pieces(writer, data, pieces):
    start = 0
    for size, single in pieces:
        if single and size == 1:
            writer.buffered_write(data[start])
        else:
            writer.buffered_write(data[start : start + size])
        start += size


@pytest.mark.parametrize("backend", BACKENDS, ids=repr)
@settings(max_examples=20)
@given(
    pieces=pieces_strategy,
    batch_size=st.integers(1, 7),
    extra_length=st.none() | st.integers(0, 5),
)
def test_pieces_end_up_equal_to_their_concatenation(backend, pieces, batch_size, extra_length):
    total = sum(size for size, _ in pieces)
    data = elements(total, dtype="float64")  # same_kind cast to float32
    length = None if extra_length is None else total + extra_length
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with backend.writer(root, batch_size=batch_size, length=length) as writer:
            write_pieces(writer, data, pieces)
        stored = backend.read(root)
        assert stored.dtype == np.float32
        np.testing.assert_array_equal(stored, data.astype(np.float32))
        assert backend.complete(root)


@settings(max_examples=40)
@given(pieces=pieces_strategy, batch_size=st.integers(1, 7), spare=st.integers(0, 5))
def test_generic_writer_fills_a_numpy_array_with_the_concatenation(pieces, batch_size, spare):
    total = sum(size for size, _ in pieces)
    data = elements(total, dtype="int16")
    storage = np.full((total + spare, *SHAPE), -1, dtype="int32")
    with buffered_array_writer(storage, SHAPE, "int32", batch_size) as writer:
        write_pieces(writer, data, pieces)
    np.testing.assert_array_equal(storage[:total], data)
    assert (storage[total:] == -1).all()


def test_generic_writer_grows_a_resizable_h5py_dataset(tmp_path):
    with h5py.File(tmp_path / "g.h5", "w") as file:
        dataset = file.create_dataset("x", shape=(0, *SHAPE), maxshape=(None, *SHAPE), dtype="f4")
        with buffered_array_writer(dataset, SHAPE, "float32", 4) as writer:
            writer.buffered_write(elements(10))
        np.testing.assert_array_equal(dataset[()], elements(10))


# ---------------------------------------------------------------- flush triggers


def storage_length(writer):
    return writer.storage_array.shape[0]


@pytest.mark.parametrize("backend", BACKENDS, ids=repr)
def test_a_full_buffer_is_written_and_a_partial_one_waits(backend, tmp_path):
    with backend.writer(tmp_path, batch_size=4) as writer:
        writer.buffered_write(elements(3))
        assert storage_length(writer) == 0
        writer.buffered_write(elements(1, start=3))
        assert storage_length(writer) == 4
        np.testing.assert_array_equal(writer.storage_array[:4], elements(4))
        writer.buffered_write(elements(9, start=4))  # 4 + 4 written, 1 waits
        assert storage_length(writer) == 12


@pytest.mark.parametrize("backend", BACKENDS, ids=repr)
def test_flush_buffer_persists_what_waits_in_the_buffer(backend, tmp_path):
    writer = backend.writer(tmp_path, batch_size=4)
    writer.buffered_write(elements(3))
    writer.flush_buffer()
    np.testing.assert_array_equal(backend.read(tmp_path), elements(3))
    assert not backend.complete(tmp_path)
    writer.buffered_write(elements(2, start=3))
    writer.close()
    np.testing.assert_array_equal(backend.read(tmp_path), elements(5))


@pytest.mark.parametrize("backend", BACKENDS, ids=repr)
def test_close_flushes_marks_complete_and_is_idempotent(backend, tmp_path):
    writer = backend.writer(tmp_path, batch_size=4)
    writer.buffered_write(elements(3))
    assert not backend.complete(tmp_path)
    writer.close()
    writer.close()
    np.testing.assert_array_equal(backend.read(tmp_path), elements(3))
    assert backend.complete(tmp_path)


@pytest.mark.parametrize("backend", BACKENDS, ids=repr)
def test_leaving_a_with_block_flushes_and_marks_complete(backend, tmp_path):
    with backend.writer(tmp_path, batch_size=4) as writer:
        writer.buffered_write(elements(5))
    np.testing.assert_array_equal(backend.read(tmp_path), elements(5))
    assert backend.complete(tmp_path)


@pytest.mark.parametrize("backend", BACKENDS, ids=repr)
def test_garbage_collection_flushes_but_does_not_mark_complete(backend, tmp_path):
    writer = backend.writer(tmp_path, batch_size=4)
    writer.buffered_write(elements(6))
    del writer
    gc.collect()
    np.testing.assert_array_equal(backend.read(tmp_path), elements(6))
    assert not backend.complete(tmp_path)


def test_generic_writer_flush_triggers_on_a_numpy_array():
    storage = np.zeros((10, *SHAPE), dtype="float32")
    writer = buffered_array_writer(storage, SHAPE, "float32", 4)
    writer.buffered_write(elements(5))
    np.testing.assert_array_equal(storage[:4], elements(4))  # buffer full
    assert not storage[4:].any()
    writer.flush_buffer()
    np.testing.assert_array_equal(storage[:5], elements(5))
    writer.buffered_write(elements(1, start=5))
    del writer
    gc.collect()
    np.testing.assert_array_equal(storage[:6], elements(6))


# ---------------------------------------------------------------- length and overflow


@pytest.mark.parametrize("backend", BACKENDS, ids=repr)
def test_a_fixed_length_refuses_overflow_before_writing_any_of_the_call(backend, tmp_path):
    with backend.writer(tmp_path, batch_size=2, length=5) as writer:
        writer.buffered_write(elements(3))
        with pytest.raises(WriterOverflowError, match=r"length=5") as error:
            writer.buffered_write(elements(3, start=3))
        assert isinstance(error.value, ValueError)
        writer.buffered_write(elements(2, start=3))  # exactly fills the length
        with pytest.raises(WriterOverflowError):
            writer.buffered_write(elements(1, start=5)[0])
    np.testing.assert_array_equal(backend.read(tmp_path), elements(5))
    assert backend.complete(tmp_path)


def test_generic_writer_refuses_writing_past_its_numpy_array():
    storage = np.zeros((3, *SHAPE), dtype="float32")
    writer = buffered_array_writer(storage, SHAPE, "float32", 2)
    with pytest.raises(WriterOverflowError, match="capacity"):
        writer.buffered_write(elements(4))
    assert not storage.any()
    with pytest.raises(ValueError, match=r"Expected length to be at most 3"):
        buffered_array_writer(storage, SHAPE, "float32", 2, length=4)


def test_a_zero_length_writer_accepts_only_empty_writes(tmp_path):
    with h5py_array_writer(SHAPE, "float32", 4, tmp_path / "z.h5", "x", length=0) as writer:
        writer.buffered_write(elements(0))
        with pytest.raises(WriterOverflowError):
            writer.buffered_write(elements(1))
    assert is_complete(tmp_path / "z.h5", "x")


# ---------------------------------------------------------------- append


@pytest.mark.parametrize("backend", BACKENDS, ids=repr)
def test_append_continues_an_existing_array(backend, tmp_path):
    with backend.writer(tmp_path, batch_size=4) as writer:
        writer.buffered_write(elements(5))
    writer = backend.writer(tmp_path, batch_size=4, append=True)
    assert not backend.complete(tmp_path)  # cleared before anything is appended
    writer.buffered_write(elements(6, start=5))
    writer.close()
    np.testing.assert_array_equal(backend.read(tmp_path), elements(11))
    assert backend.complete(tmp_path)


@pytest.mark.parametrize("backend", BACKENDS, ids=repr)
def test_append_creates_a_missing_array(backend, tmp_path):
    with backend.writer(tmp_path, append=True) as writer:
        writer.buffered_write(elements(2))
    np.testing.assert_array_equal(backend.read(tmp_path), elements(2))


@pytest.mark.parametrize("backend", BACKENDS, ids=repr)
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"shape": (3, 2)}, ValueError, r"data_element_shape to match .* \(2, 3\)"),
        ({"dtype": "int16"}, TypeError, r"dtype to match .* float32"),
        ({"length": 4}, ValueError, r"length to be at least the 5 elements"),
    ],
    ids=["shape", "dtype", "length"],
)
def test_append_refuses_a_mismatch_and_leaves_the_array_untouched(
    backend, tmp_path, kwargs, error, match
):
    with backend.writer(tmp_path) as writer:
        writer.buffered_write(elements(5))
    with pytest.raises(error, match=match):
        backend.writer(tmp_path, append=True, **kwargs)
    gc.collect()
    np.testing.assert_array_equal(backend.read(tmp_path), elements(5))
    assert backend.complete(tmp_path)


@pytest.mark.parametrize("backend", BACKENDS, ids=repr)
def test_length_counts_the_elements_already_there_when_appending(backend, tmp_path):
    with backend.writer(tmp_path) as writer:
        writer.buffered_write(elements(5))
    with backend.writer(tmp_path, append=True, length=7) as writer:
        with pytest.raises(WriterOverflowError, match="length=7"):
            writer.buffered_write(elements(3))
        writer.buffered_write(elements(2, start=5))
    np.testing.assert_array_equal(backend.read(tmp_path), elements(7))


@pytest.mark.parametrize("backend", BACKENDS[:2], ids=repr)
def test_several_writers_fill_arrays_of_one_file_at_once(backend, tmp_path):
    first = backend.writer(tmp_path, array="class_0")
    second = backend.writer(tmp_path, array="class_1", append=True, dtype="int16")
    for i in range(5):
        first.buffered_write(elements(i + 1, start=i * (i + 1) // 2))
        second.buffered_write(elements(2, dtype="int16", start=2 * i))
    path, _ = backend.path(tmp_path)
    first.close()
    assert backend.complete(tmp_path, "class_0")
    assert not backend.complete(tmp_path, "class_1")
    assert not is_complete(path)  # None: every array must be complete
    second.close()
    assert is_complete(path)
    np.testing.assert_array_equal(backend.read(tmp_path, "class_0"), elements(15))
    np.testing.assert_array_equal(backend.read(tmp_path, "class_1"), elements(10, dtype="int16"))


def test_bcolz_is_complete_takes_a_carray_subdirectory_as_array_name(tmp_path):
    with bcolz_array_writer(SHAPE, "float32", 4, tmp_path / "class_3") as writer:
        writer.buffered_write(elements(1))
    assert is_complete(tmp_path, "class_3")
    assert not is_complete(tmp_path, "class_4")


# ---------------------------------------------------------------- bad data and closed writers


@pytest.mark.parametrize("backend", BACKENDS, ids=repr)
@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (np.zeros((2, 3, 2), "float32"), ValueError, r"one element of shape \(2, 3\)"),
        (np.zeros(3, "float32"), ValueError, r"Got shape \(3,\)"),
        (np.zeros((2, *SHAPE), "float64") + 0.5j, TypeError, r"casts to float32"),
        (np.zeros(SHAPE, "U1"), TypeError, r"Got <U1"),
    ],
    ids=["shape", "ndim", "complex", "str"],
)
def test_bad_data_raises_before_anything_is_written(backend, tmp_path, data, error, match):
    with backend.writer(tmp_path, batch_size=2) as writer:
        writer.buffered_write(elements(1))
        with pytest.raises(error, match=match):
            writer.buffered_write(data)
    np.testing.assert_array_equal(backend.read(tmp_path), elements(1))


def test_float_data_is_refused_by_an_integer_writer():
    writer = buffered_array_writer(np.zeros((4, 2), "int32"), (2,), "int32", 2)
    with pytest.raises(TypeError, match=r"casts to int32 .* Got float64"):
        writer.buffered_write([[0.5, 1.0]])
    writer.buffered_write([[1, 2]])  # python ints: int64 -> int32 is same_kind


@pytest.mark.parametrize("backend", BACKENDS, ids=repr)
def test_a_closed_writer_refuses_writes_and_flushes(backend, tmp_path):
    writer = backend.writer(tmp_path)
    writer.close()
    with pytest.raises(WriterClosedError, match="closed"):
        writer.buffered_write(elements(1))
    with pytest.raises(WriterClosedError):
        writer.flush_buffer()
    assert isinstance(WriterClosedError("x"), RuntimeError)


# ---------------------------------------------------------------- bad arguments

GOOD = {"data_element_shape": SHAPE, "dtype": "float32", "batch_size": 4}
BAD_ARGUMENTS = [
    ({"batch_size": 0}, ValueError, r"Expected batch_size to be an integer >= 1\. Got 0"),
    ({"batch_size": -3}, ValueError, r"batch_size"),
    ({"batch_size": 2.0}, TypeError, r"batch_size"),
    ({"length": -1}, ValueError, r"Expected length to be an integer >= 0\. Got -1"),
    ({"length": "10"}, TypeError, r"length"),
    ({"data_element_shape": (2, -1)}, ValueError, r"data_element_shape\[1\]"),
    ({"data_element_shape": "2x3"}, TypeError, r"data_element_shape"),
    ({"dtype": "float33"}, TypeError, r"Expected dtype to be a numpy dtype"),
    ({"append": "yes"}, TypeError, r"Expected append to be True or False"),
    ({"kwargs": ["compression"]}, TypeError, r"Expected kwargs to be a dict or None"),
    ({"kwargs": {"dtype": "f8"}}, ValueError, r"kwargs without the keys .* \['dtype'\]"),
]


@pytest.mark.parametrize("backend", BACKENDS, ids=repr)
@pytest.mark.parametrize(("bad", "error", "match"), BAD_ARGUMENTS)
def test_bad_arguments_name_the_argument_and_create_nothing(backend, tmp_path, bad, error, match):
    path, name = backend.path(tmp_path)
    arguments = {**GOOD, **bad}
    if backend.name == "bcolz":
        make = lambda: bcolz_array_writer(save_path=path, **arguments)
    elif backend.name == "hdf5":
        make = lambda: h5py_array_writer(filename=path, array_name=name, **arguments)
    else:
        make = lambda: zarr_array_writer(filename=path, array_name=name, **arguments)
    with pytest.raises(error, match=match):
        make()
    assert not path.exists()


@pytest.mark.parametrize("writer_class", [h5py_array_writer, zarr_array_writer])
@pytest.mark.parametrize(
    ("filename", "array_name", "match"),
    [
        (3, "x", r"Expected filename to be a non-empty path"),
        ("", "x", r"filename"),
        ("f", "", r"Expected array_name to be a non-empty string"),
        ("f", 7, r"array_name"),
    ],
)
def test_bad_file_or_array_names_are_refused(writer_class, tmp_path, filename, array_name, match):
    if isinstance(filename, str) and filename:
        filename = tmp_path / filename
    with pytest.raises(TypeError, match=match):
        writer_class(SHAPE, "float32", 4, filename, array_name)
    assert not any(tmp_path.iterdir())


def test_bad_save_path_is_refused():
    with pytest.raises(TypeError, match=r"Expected save_path to be a non-empty path"):
        bcolz_array_writer(SHAPE, "float32", 4, None)


def test_generic_writer_checks_its_arguments():
    with pytest.raises(ValueError, match=r"batch_size"):
        buffered_array_writer(np.zeros((4, 2)), (2,), "float64", 0)
    with pytest.raises(ValueError, match=r"length"):
        buffered_array_writer(np.zeros((4, 2)), (2,), "float64", 1, length=-2)


def test_bcolz_kwargs_are_copied_not_mutated(tmp_path):
    options = {"chunklen": 8}
    with bcolz_array_writer(SHAPE, "float32", 4, tmp_path / "b", kwargs=options) as writer:
        writer.buffered_write(elements(3))
        assert writer.storage_array.chunklen == 8
    assert options == {"chunklen": 8}


def test_default_storage_options_follow_the_reference(tmp_path):
    with h5py_array_writer(SHAPE, "float32", 16, tmp_path / "d.h5", "x") as writer:
        assert writer.storage_array.chunks == (16, *SHAPE)
        assert writer.storage_array.compression == "lzf"
    with zarr_array_writer(SHAPE, "float32", 16, tmp_path / "d.zarr", "x") as writer:
        assert writer.storage_array.chunks == (16, *SHAPE)
        (codec,) = writer.storage_array.compressors
        assert codec.cname.value == "lz4"
    with bcolz_array_writer(SHAPE, "float32", 16, tmp_path / "b", length=10**6) as writer:
        assert writer.storage_array.cparams.cname == "lz4"
        small = bcolz_array_writer(SHAPE, "float32", 16, tmp_path / "s", length=10)
        assert writer.storage_array.chunklen > small.storage_array.chunklen  # from expectedlen
        small.close()


# ---------------------------------------------------------------- completion on failure


def write_then_fail(writer, count):
    with writer:
        writer.buffered_write(elements(count))
        raise KeyError("boom")


@pytest.mark.parametrize("backend", BACKENDS, ids=repr)
def test_an_exception_in_a_with_block_leaves_nothing_complete(backend, tmp_path):
    writer = backend.writer(tmp_path, batch_size=4)
    with pytest.raises(KeyError, match="boom"):
        write_then_fail(writer, 6)  # 4 reach the storage, 2 wait in the buffer
    assert not backend.complete(tmp_path)
    assert len(backend.read(tmp_path)) < 6  # the buffer was dropped, not flushed
    with pytest.raises(WriterClosedError):
        writer.buffered_write(elements(1))


@pytest.mark.parametrize("backend", BACKENDS, ids=repr)
def test_an_exception_while_appending_leaves_the_array_incomplete(backend, tmp_path):
    with backend.writer(tmp_path) as writer:
        writer.buffered_write(elements(5))
    with pytest.raises(KeyError):
        write_then_fail(backend.writer(tmp_path, append=True), 0)
    assert not backend.complete(tmp_path)


def test_a_failed_storage_write_is_raised_again_and_never_marked_complete():
    storage = np.zeros((8, 2), "float32")
    storage.flags.writeable = False
    writer = buffered_array_writer(storage, (2,), "float32", 2)
    with pytest.raises(WriterError, match=r"Writing 2 elements at index 0 failed"):
        writer.buffered_write(np.ones((2, 2)))
    with pytest.raises(WriterError, match="earlier write"):
        writer.buffered_write(np.ones((1, 2)))
    with pytest.raises(WriterError, match="not marked complete"):
        writer.close()
    writer.close()  # idempotent after the failure


def test_is_complete_is_false_for_missing_or_unreadable_paths(tmp_path):
    assert not is_complete(tmp_path / "missing.h5", "x")
    (tmp_path / "junk.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    assert not is_complete(tmp_path / "junk.h5", "x")
    assert not is_complete(tmp_path)  # an empty directory is no carray
    with h5py.File(tmp_path / "plain.h5", "w") as file:
        file["x"] = np.zeros(3)  # written by someone else: no completion flag
    assert not is_complete(tmp_path / "plain.h5", "x")
    assert not is_complete(tmp_path / "plain.h5")


KILL_CHILD = Path(__file__).with_name("_writer_kill_child.py")


@pytest.mark.parametrize("backend", BACKENDS, ids=repr)
@pytest.mark.parametrize("mode", ["new", "append"])
def test_a_writer_killed_mid_write_leaves_nothing_complete(backend, tmp_path, mode):
    path, name = backend.path(tmp_path)
    if mode == "append":
        with backend.writer(tmp_path, shape=(4, 4), batch_size=16) as writer:
            writer.buffered_write(np.zeros((20, 4, 4), "float32"))
        assert is_complete(path, name)
    child = subprocess.Popen(
        [sys.executable, str(KILL_CHILD), backend.name, str(path), mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "flushed"
        time.sleep(0.3)  # let it write a while, so the kill lands mid-write
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert path.exists()
    assert not is_complete(path, name)

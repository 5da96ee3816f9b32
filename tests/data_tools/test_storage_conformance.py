"""One conformance suite for every storage backend (data_tools.storage), as zarr's StoreTests.

Matrix: backend (hdf5, zarr, bcolz, numpy, sitk) x (the backend is found by name and by its
sources' type; shape and dtype; a source pickled to another process (spawn) reopens and reads
the same rows; rows for sorted unique indices, directly and through ``storage.read_rows``,
with a trailing key; the chunk layout along the first axis (``chunk_rows``) and every chunk
``read_chunk`` decodes equals its rows; any-order reads with repeats (``take_rows``); a file
symlinked from outside the root is refused at the opening and by ``check_content``) x, for the
formats the writers write (hdf5, zarr, bcolz), (create, append and complete round trip through
``format_writer``; a write that ended in an exception, and a writer still open, never look
complete; ``format_of_path`` tells the format of what was written). Format-specific escapes
(HDF5 external links, zarr chunk symlinks, MetaImage data files) are in test_confine.py.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pytest
from storage_support import ROWS, read_everything, store_rows

from data_tools import storage
from data_tools.errors import ConfinementError
from data_tools.io.writers import format_writer, is_complete
from data_tools.storage import Root

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

LENGTH = 10
CHUNK = 4
DATA = np.arange(LENGTH * 3 * 2, dtype=np.float32).reshape(LENGTH, 3, 2) * 1.5


def _write_hdf5(path: Path, data: np.ndarray) -> tuple[Path, str]:
    import h5py

    file_path = path / "a.h5"
    with h5py.File(file_path, "w") as file:
        file.create_dataset("x", data=data, chunks=(CHUNK, *data.shape[1:]), compression="gzip")
    return file_path, "x"


def _write_zarr(path: Path, data: np.ndarray) -> tuple[Path, str]:
    import zarr

    store = path / "a.zarr"
    group = zarr.open_group(store, mode="w")
    array = group.create_array("x", shape=data.shape, dtype=data.dtype, chunks=(CHUNK, 3, 2))
    array[...] = data
    return store, "x"


def _write_bcolz(path: Path, data: np.ndarray) -> tuple[Path, None]:
    import bcolz

    rootdir = path / "a.bcolz"
    bcolz.carray(data, rootdir=str(rootdir), mode="w", chunklen=CHUNK).flush()
    return rootdir, None


def _write_numpy(path: Path, data: np.ndarray) -> tuple[Path, None]:
    file_path = path / "a.npy"
    np.save(file_path, data)
    return file_path, None


def _write_sitk(path: Path, data: np.ndarray) -> tuple[Path, None]:
    import SimpleITK

    file_path = path / "a.nii"
    SimpleITK.WriteImage(SimpleITK.GetImageFromArray(data), str(file_path))
    return file_path, None


@dataclass(frozen=True)
class Case:
    """One backend under test: how to store DATA, and the chunk length it then has."""

    name: str
    write: Callable[[Path, np.ndarray], tuple[Path, str | None]]
    chunk_rows: int | None


CASES = [
    Case("bcolz", _write_bcolz, CHUNK),
    Case("hdf5", _write_hdf5, CHUNK),
    Case("numpy", _write_numpy, None),
    Case("sitk", _write_sitk, LENGTH),  # SimpleITK decodes an image whole: one chunk
    Case("zarr", _write_zarr, CHUNK),
]


def test_every_format_is_under_test():
    assert sorted(case.name for case in CASES) == sorted(storage.FORMATS)


@pytest.fixture(params=CASES, ids=lambda case: case.name)
def case(request):
    return request.param


@pytest.fixture
def stored(case, tmp_path):
    """(case, backend, root, path, key, opened source) for DATA stored under tmp_path/data."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path, key = case.write(data_dir, DATA)
    root = Root(data_dir)
    backend = storage.backend(case.name)
    source = backend.open(path, key, root)
    yield case, backend, root, path, key, source
    backend.close(source)


def test_found_by_name_and_by_source_type(stored):
    case, backend, _, _, _, source = stored
    assert backend.name == case.name
    assert storage.backend_of(source) is backend
    assert storage.as_picklable(source) is source


def test_shape_and_dtype(stored):
    _, _, _, _, _, source = stored
    assert tuple(source.shape) == DATA.shape
    assert np.dtype(source.dtype) == DATA.dtype


def test_a_pickled_source_reopens_in_another_process(stored):
    _, _, _, _, _, source = stored
    description = pickle.dumps(source)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        everything, rows = pool.submit(read_everything, pickle.loads(description), LENGTH).result()
    np.testing.assert_array_equal(everything, DATA)
    np.testing.assert_array_equal(rows, DATA[ROWS])


@pytest.mark.parametrize(
    "rows", [[1], [0, 1, 2], [0, 2, 3, 7, 9], [4, 5, 6, 7], [0, 9], list(range(LENGTH))]
)
def test_rows_for_sorted_unique_indices(stored, rows):
    _, backend, _, _, _, source = stored
    index = np.array(rows, dtype=np.intp)
    np.testing.assert_array_equal(backend.read_rows(source, index), DATA[index])
    np.testing.assert_array_equal(storage.read_rows(source, index), DATA[index])
    trailing = (slice(1, 3), 1)
    np.testing.assert_array_equal(
        backend.read_rows(source, index, trailing), DATA[(index, *trailing)]
    )


def test_rows_in_any_order_with_repeats_are_a_new_writable_array(stored):
    _, _, _, _, _, source = stored
    indices = np.array([7, 1, 7, 0, 9, 1], dtype=np.int64)
    read = storage.take_rows(source, indices)
    np.testing.assert_array_equal(read, DATA[indices])
    assert read.flags.writeable
    read[...] = -1  # the caller may write; the source is untouched
    np.testing.assert_array_equal(np.asarray(source[0:LENGTH]), DATA)


def test_chunk_layout_and_every_chunk_equals_its_rows(stored):
    case, backend, _, _, _, source = stored
    assert storage.chunk_rows(source) == case.chunk_rows
    rows = case.chunk_rows or LENGTH
    for number in range(math.ceil(LENGTH / rows)):
        chunk = backend.read_chunk(source, number)
        np.testing.assert_array_equal(chunk, DATA[number * rows : (number + 1) * rows])
        assert chunk.dtype == DATA.dtype


def test_a_file_symlinked_from_outside_the_root_is_refused(case, tmp_path):
    outside, data_dir = tmp_path / "outside", tmp_path / "data"
    outside.mkdir()
    data_dir.mkdir()
    path, key = case.write(outside, DATA)
    link = data_dir / path.name
    link.symlink_to(path)
    backend, root = storage.backend(case.name), Root(data_dir)
    with pytest.raises(ConfinementError, match=r"Expected 'a\..*' to read only from inside"):
        backend.check_content(link, key, root)
    rows = np.array([0, 2], dtype=np.intp)
    with pytest.raises(ConfinementError, match="to read only from inside the data root"):
        storage.read_rows(backend.open(link, key, root), rows)  # HDF5 opens on first use
    backend.check_content(path, key, Root(outside))  # the same storage, inside its own root


# ---------------------------------------------------------------- writers

WRITABLE = [case for case in CASES if case.name in storage.WRITABLE_FORMATS]


@pytest.fixture(params=WRITABLE, ids=lambda case: case.name)
def writable(request):
    return request.param


def test_only_file_formats_with_writers_are_writable():
    assert storage.WRITABLE_FORMATS == ("bcolz", "hdf5", "zarr")
    with pytest.raises(TypeError, match="Expected a storage format that data_tools writes"):
        storage.backend("numpy").create("x", "y", (3, 2), DATA.dtype, False, {})


def _write(file_format: str, container: str, name: str, pieces, *, append: bool) -> None:
    with format_writer(
        file_format, container, name, (3, 2), np.float32, CHUNK, append=append
    ) as writer:
        for piece in pieces:
            writer.buffered_write(piece)


def test_create_append_complete_round_trip(writable, tmp_path):
    backend = storage.backend(writable.name)
    container = str(tmp_path / f"out.{writable.name}")
    backend.new_container(container)
    _write(writable.name, container, "x", [DATA[:3], DATA[3:7]], append=False)
    path, key = backend.array_location(container, "x")
    assert storage.format_of_path(path) == writable.name
    assert is_complete(path, key)
    assert backend.is_container_complete(container)
    _write(writable.name, container, "x", [DATA[7:], DATA[:2]], append=True)
    assert is_complete(path, key)
    source = backend.open(tmp_path / path, key, Root(tmp_path))
    np.testing.assert_array_equal(source[0 : LENGTH + 2], np.concatenate([DATA, DATA[:2]]))
    rows = storage.chunk_rows(source)  # bcolz derives its own from the expected length
    np.testing.assert_array_equal(
        backend.read_chunk(source, 0), np.concatenate([DATA, DATA[:2]])[:rows]
    )
    backend.close(source)


def _interrupted_write(file_format: str, container: str) -> None:
    with format_writer(file_format, container, "x", (3, 2), np.float32, CHUNK) as writer:
        writer.buffered_write(DATA[:6])
        writer.flush_buffer()
        raise RuntimeError("interrupted")


def test_an_interrupted_or_open_write_never_looks_complete(writable, tmp_path):
    backend = storage.backend(writable.name)
    container = str(tmp_path / f"out.{writable.name}")
    backend.new_container(container)
    path, key = backend.array_location(container, "x")
    with pytest.raises(RuntimeError, match="interrupted"):
        _interrupted_write(writable.name, container)
    assert not is_complete(path, key)
    assert not backend.is_container_complete(container)
    _write(writable.name, container, "x", [DATA], append=False)
    assert is_complete(path, key)
    writer = format_writer(writable.name, container, "x", (3, 2), np.float32, CHUNK, append=True)
    writer.buffered_write(DATA[:1])
    writer.flush_buffer()
    assert not is_complete(path, key)  # appending clears the flag until the writer closes
    writer.close()
    assert is_complete(path, key)


def test_nothing_is_complete_where_nothing_was_written(writable, tmp_path):
    backend = storage.backend(writable.name)
    missing = str(tmp_path / "missing")
    assert storage.format_of_path(missing) is None
    assert not is_complete(missing)
    assert not backend.is_container_complete(missing)


def test_container_names_are_the_stem_and_each_writable_formats_suffix():
    assert storage.container_names("patches") == {
        "bcolz": "patches.bcolz",
        "hdf5": "patches.h5",
        "zarr": "patches.zarr",
    }
    # bcolz holds one carray per directory: no keyed arrays, no container attributes.
    assert storage.container_names("cases", keyed=True) == {
        "hdf5": "cases.h5",
        "zarr": "cases.zarr",
    }


def test_only_parallel_formats_create_arrays_for_parallel_writers(writable, tmp_path):
    backend = storage.backend(writable.name)
    container = str(tmp_path / f"out.{writable.name}")
    if writable.name not in storage.PARALLEL_FORMATS:
        with pytest.raises(TypeError, match="written by parallel processes"):
            backend.create_sized(container, "x", (LENGTH, 3, 2), DATA.dtype, False, {})
        with pytest.raises(TypeError, match="written by parallel processes"):
            backend.open_rows(container, "x")
        return
    options = backend.default_options(CHUNK, (3, 2), None)
    backend.create_sized(container, "x", (LENGTH, 3, 2), DATA.dtype, False, options)
    backend.create_sized(container, "y", (CHUNK, 3, 2), DATA.dtype, True, options)
    path, key = backend.array_location(container, "x")
    assert not is_complete(path, key)
    # Each chunk from a process of its own; a chunk of fill values only is stored too.
    zeros = np.zeros_like(DATA)
    expected = np.where(np.arange(LENGTH)[:, None, None] < CHUNK, zeros, DATA)
    with concurrent.futures.ProcessPoolExecutor(
        2, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        done = [
            pool.submit(
                store_rows, writable.name, container, start, expected[start : start + CHUNK]
            )
            for start in range(0, LENGTH, CHUNK)
        ]
        for future in done:
            future.result()
    assert not is_complete(path, key)
    backend.open_rows(container, "x").mark(True)
    assert is_complete(path, key)
    source = backend.open(tmp_path / path, key, Root(tmp_path))
    np.testing.assert_array_equal(source[...], expected)  # no chunk lost (DataLossError)
    with pytest.raises((FileNotFoundError, KeyError)):
        backend.open_rows(str(tmp_path / "removed"), "x")

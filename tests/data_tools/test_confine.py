"""Tests for confinement by content: data_tools.storage.confine and each format's confined opener.

Matrix: open_confined x (a file inside; a symlink staying inside; a symlink leading out; a
FIFO, refused without blocking; a directory; a file swapped for a symlink after the open
still reads the original) and messages that never hold an absolute path; HDF5 (H5Source
with a root) x (external link, virtual dataset, external raw storage, a soft link inside
the file, a soft link to an external link, a path through a dataset) and a pickled
H5Source reopened after its file was swapped for a symlink (a worker's reopen); zarr
(ConfinedStore) x (array dir symlink, chunk symlink out, chunk symlink inside, missing
chunk, pickle round trip, a sharded array's byte ranges); bcolz x (an entry symlinked
out); medical images x (NIfTI; .mhd with a data file beside it, under "..", absolute,
"../.." out, swapped after pinning; LIST and pattern forms; NRRD "data file" out; too many
data files) with no pinned directory left behind.
"""

from __future__ import annotations

import os
import pickle
import tempfile

import h5py
import numpy as np
import pytest
import zarr
from confine_support import (
    ESCAPES,
    INSIDE,
    MHD_ABSOLUTE,
    SECRET,
    swap_for_symlink,
    write_escapes,
    write_image,
    write_inside_zarr,
    write_mhd,
)

from data_tools.errors import ConfinementError
from data_tools.storage import open_source
from data_tools.storage.confine import PinnedFiles, Root, open_confined
from data_tools.storage.hdf5 import H5Source
from data_tools.storage.sitk import MAX_DATA_FILES, describe_image, read_image


@pytest.fixture
def tree(tmp_path):
    """(data root, outside dir, Root): every escape written, plus inside.h5 and ok.zarr."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    write_escapes(data, outside)
    with h5py.File(data / "inside.h5", "w") as file:
        file["image"] = INSIDE
    write_inside_zarr(data / "ok.zarr")
    return data, outside, Root(data.resolve())


def refused(match):
    """pytest.raises for ConfinementError matching ``match``, its message checked for paths."""
    return pytest.raises(ConfinementError, match=match)


def assert_relative(error, tmp_path):
    assert str(tmp_path) not in str(error.value)
    assert "/tmp" not in str(error.value)


# ---------------------------------------------------------------- open_confined


def test_open_confined_reads_files_and_symlinks_inside(tree):
    data, _, root = tree
    (data / "alias.h5").symlink_to(data / "inside.h5")
    for name in ("inside.h5", "alias.h5"):
        fd = open_confined(root, data / name)
        os.close(fd)


def test_a_root_given_through_a_symlink_is_resolved(tree, tmp_path):
    data, _, _ = tree
    (tmp_path / "alias").symlink_to(data)
    root = Root(tmp_path / "alias")
    assert root.path == data.resolve()
    os.close(open_confined(root, tmp_path / "alias" / "inside.h5"))


def test_open_confined_refuses_a_symlink_out_naming_it_relative(tree, tmp_path):
    data, outside, root = tree
    (data / "sub").mkdir()
    (data / "sub" / "leak.raw").symlink_to(outside / "secret.raw")
    with refused(
        r"Expected 'sub/leak\.raw' to read only from inside the data root\. Got a file "
        r"that resolves outside it instead\."
    ) as error:
        open_confined(root, data / "sub" / "leak.raw")
    assert_relative(error, tmp_path)


def test_open_confined_refuses_a_fifo_without_blocking(tree):
    data, _, root = tree
    os.mkfifo(data / "pipe.h5")
    with refused("something other than a regular file"):
        open_confined(root, data / "pipe.h5")  # would block forever without O_NONBLOCK


def test_open_confined_says_a_directory_is_one(tree):
    data, _, root = tree
    with pytest.raises(IsADirectoryError, match=r"'ok\.zarr' is a directory"):
        open_confined(root, data / "ok.zarr")


def test_a_file_swapped_after_the_open_is_not_what_is_read(tree):
    data, outside, root = tree
    path = data / "raw.bin"
    INSIDE.tofile(path)
    fd = open_confined(root, path)
    try:
        swap_for_symlink(path, outside / "secret.raw")
        read = np.frombuffer(os.pread(fd, INSIDE.nbytes, 0), np.float32)
    finally:
        os.close(fd)
    np.testing.assert_array_equal(read, INSIDE.ravel())
    with refused("resolves outside"):
        open_confined(root, path)


def test_pinned_files_are_removed_on_close(tree):
    data, _, root = tree
    with PinnedFiles(root) as files:
        pinned = files.add(data / "inside.h5", "nested/copy.h5")
        with h5py.File(pinned, "r") as file:
            np.testing.assert_array_equal(file["image"][()], INSIDE)
        directory = files.directory
    assert not directory.exists()


# ---------------------------------------------------------------- HDF5


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("hdf5-external-link", r"'extlink\.h5' .* Got an HDF5 external link at 'image' instead"),
        ("hdf5-virtual-dataset", r"'virtual\.h5' .* Got 'image', an HDF5 virtual dataset, inst"),
        ("hdf5-external-storage", r"'extraw\.h5' .* Got 'image', a dataset stored in external"),
    ],
)
def test_hdf5_content_leading_out_is_refused(tree, tmp_path, name, pattern):
    data, _, root = tree
    filename, key = ESCAPES[name]
    source = H5Source(data / filename, key, root)
    with refused(pattern) as error:
        source.shape  # noqa: B018 - opens
    assert_relative(error, tmp_path)
    # Unconfined (a library user's own file), the same content is followed as HDF5 does.
    np.testing.assert_array_equal(H5Source(data / filename, key)[...], SECRET)


def test_hdf5_soft_links_inside_the_file_are_followed(tree):
    data, outside, root = tree
    with h5py.File(data / "soft.h5", "w") as file:
        file["group/image"] = INSIDE
        file["alias"] = h5py.SoftLink("/group")
        file["relative"] = h5py.SoftLink("alias/image")
        file["out"] = h5py.ExternalLink(str(outside / "secret.h5"), "/")
        file["via_soft"] = h5py.SoftLink("/out/image")
    np.testing.assert_array_equal(H5Source(data / "soft.h5", "alias/image", root)[...], INSIDE)
    np.testing.assert_array_equal(H5Source(data / "soft.h5", "/relative", root)[...], INSIDE)
    with refused("external link"):
        H5Source(data / "soft.h5", "via_soft", root).shape  # noqa: B018
    with pytest.raises(KeyError, match="is not a group"):
        H5Source(data / "soft.h5", "group/image/deeper", root).shape  # noqa: B018


def test_a_pickled_h5source_reopens_confined_after_a_swap(tree, tmp_path):
    """A worker process unpickles a source and reopens it: the reopen is checked again."""
    data, outside, root = tree
    source = H5Source(data / "inside.h5", "image", root)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(source))[...], INSIDE)
    swap_for_symlink(data / "inside.h5", outside / "secret.h5")
    with refused(r"'inside\.h5' .* resolves outside it") as error:
        pickle.loads(pickle.dumps(source))[...]
    assert_relative(error, tmp_path)


# ---------------------------------------------------------------- zarr and bcolz


def test_zarr_array_dir_symlink_is_refused_at_open(tree, tmp_path):
    data, _, root = tree
    with refused(r"'arraylink\.zarr/image/zarr\.json' .* resolves outside it") as error:
        open_source("zarr", data / "arraylink.zarr", "image", root)
    assert_relative(error, tmp_path)


def test_zarr_chunk_symlink_is_refused_at_the_read(tree, tmp_path):
    data, _, root = tree
    array = open_source("zarr", data / "chunklink.zarr", "image", root)
    np.testing.assert_array_equal(array[2:], INSIDE[2:])  # chunk 1 is the store's own
    for reader in (array, pickle.loads(pickle.dumps(array))):
        with refused(r"'chunklink\.zarr/image/c/0/0/0' .* resolves outside it") as error:
            reader[:2]
        assert_relative(error, tmp_path)


def test_zarr_chunk_symlink_inside_and_missing_chunks_read(tree):
    data, _, root = tree
    chunk = data / "ok.zarr" / "image" / "c" / "1" / "0" / "0"
    (data / "spare").mkdir()
    os.replace(chunk, data / "spare" / "chunk")
    chunk.symlink_to(data / "spare" / "chunk")
    os.remove(data / "ok.zarr" / "image" / "c" / "0" / "0" / "0")
    array = open_source("zarr", data / "ok.zarr", "image", root)
    np.testing.assert_array_equal(array[2:], INSIDE[2:])
    np.testing.assert_array_equal(array[:2], np.zeros_like(INSIDE[:2]))  # the fill value


def test_a_sharded_zarr_array_reads_its_byte_ranges(tree):
    """A shard is read in byte ranges (its index from the end, then each inner chunk)."""
    data, _, root = tree
    group = zarr.open_group(str(data / "sharded.zarr"), mode="w")
    group.create_array("image", data=INSIDE, chunks=(1, 4, 8), shards=(2, 8, 8))
    array = open_source("zarr", data / "sharded.zarr", "image", root)
    np.testing.assert_array_equal(array[...], INSIDE)
    np.testing.assert_array_equal(array[1:3, 4:], INSIDE[1:3, 4:])


def test_bcolz_entry_symlinked_out_is_refused(tree):
    import bcolz

    data, outside, root = tree
    bcolz.carray(INSIDE, rootdir=str(data / "a.bcolz"), mode="w").flush()
    np.testing.assert_array_equal(open_source("bcolz", data / "a.bcolz", None, root)[:], INSIDE)
    meta = data / "a.bcolz" / "meta" / "sizes"
    (outside / "sizes").write_bytes(meta.read_bytes())
    swap_for_symlink(meta, outside / "sizes")
    with refused(r"'a\.bcolz/meta/sizes' .* resolves outside it"):
        open_source("bcolz", data / "a.bcolz", None, root)


# ---------------------------------------------------------------- medical images


def pinned_dirs():
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("data_tools-pinned-")}


@pytest.fixture
def images(tree):
    before = pinned_dirs()
    data, outside, root = tree
    (data / "raw").mkdir()
    INSIDE.tofile(data / "raw" / "in.raw")
    yield data, outside, root
    assert pinned_dirs() == before


def test_nifti_and_mhd_with_data_inside_read(images):
    data, _, root = images
    write_image(data / "v.nii.gz", INSIDE)
    write_mhd(data / "beside.mhd", "raw/in.raw")
    (data / "deep").mkdir()
    write_mhd(data / "deep" / "up.mhd", "../raw/in.raw")
    for name in ("v.nii.gz", "beside.mhd", "deep/up.mhd"):
        assert describe_image(data / name, root) == INSIDE.shape
        np.testing.assert_array_equal(read_image(data / name, root), INSIDE)


def test_mhd_data_file_list_and_pattern_forms_read(images):
    data, _, root = images
    for number, plane in enumerate(INSIDE):
        plane.tofile(data / "raw" / f"slice{number:02d}.raw")
    header = "ObjectType = Image\nNDims = 3\nDimSize = 8 8 4\nElementType = MET_FLOAT\n"
    names = "\n".join(f"raw/slice{n:02d}.raw" for n in range(4))
    (data / "list.mhd").write_text(f"{header}ElementDataFile = LIST 2D\n{names}\n")
    (data / "pattern.mhd").write_text(f"{header}ElementDataFile = raw/slice%02d.raw 0 3 1\n")
    for name in ("list.mhd", "pattern.mhd"):
        np.testing.assert_array_equal(read_image(data / name, root), INSIDE)
    (data / "many.mhd").write_text(f"{header}ElementDataFile = raw/s%d.raw 0 100000 1\n")
    with pytest.raises(ValueError, match=f"Expected at most {MAX_DATA_FILES} data files"):
        describe_image(data / "many.mhd", root)
    # A LIST is read to the end of the header: a name after blank lines is checked too, and
    # a header too long to read whole is refused.
    padded = f"{header}ElementDataFile = LIST 2D\n{names}\n\n\n/elsewhere/x.raw\n"
    (data / "padded.mhd").write_text(padded)
    with refused("Got a data file named by an absolute path instead"):
        describe_image(data / "padded.mhd", root)
    (data / "long.mhd").write_text(padded.replace("\n\n\n", "\n" * (1 << 20)))
    with pytest.raises(ValueError, match="Expected a header listing its data files within"):
        describe_image(data / "long.mhd", root)
    # Not a pattern (a width of more than two digits): one file of that odd name, missing.
    (data / "wide.mhd").write_text(f"{header}ElementDataFile = raw/s%999999999d.raw 0 3 1\n")
    with pytest.raises(FileNotFoundError):
        describe_image(data / "wide.mhd", root)


@pytest.mark.parametrize(
    ("data_file", "pattern"),
    [
        ("absolute", r"'absolute\.mhd' .* Got a data file named by an absolute path instead"),
        ("../outside/secret.raw", r"'escape\.mhd' .* Got a data file '\.\./outside/secret\.raw'"),
        ("raw/leak.raw", r"'escape\.mhd' .* Got a data file 'raw/leak\.raw' that resolves out"),
    ],
)
def test_mhd_data_file_outside_is_refused(images, tmp_path, data_file, pattern):
    data, outside, root = images
    (data / "raw" / "leak.raw").symlink_to(outside / "secret.raw")
    name = MHD_ABSOLUTE
    if data_file != "absolute":
        name = "escape.mhd"
        write_mhd(data / name, data_file)
    for action in (describe_image, read_image):
        with refused(pattern) as error:
            action(data / name, root)
        assert_relative(error, tmp_path)


def test_nrrd_detached_data_file_outside_is_refused(images):
    data, _, root = images
    (data / "detached.nrrd").write_text(
        "NRRD0004\ntype: float\ndimension: 3\nsizes: 8 8 4\nencoding: raw\nendian: little\n"
        "data file: ../outside/secret.raw\n"
    )
    with refused(r"'detached\.nrrd' .* Got a data file '\.\./outside/secret\.raw'"):
        read_image(data / "detached.nrrd", root)
    (data / "detached.nrrd").write_text(
        (data / "detached.nrrd").read_text().replace("../outside/secret", "raw/in")
    )
    np.testing.assert_array_equal(read_image(data / "detached.nrrd", root), INSIDE)


def test_a_data_file_swapped_after_pinning_is_not_what_is_read(images, monkeypatch):
    """The swap lands between the check (pinning) and SimpleITK's own open."""
    data, outside, root = images
    write_mhd(data / "racy.mhd", "raw/in.raw")
    import data_tools.storage.sitk as medical

    real_sitk = medical.load_sitk()
    swapped = []

    class SwappingSitk:
        def __getattr__(self, name):
            return getattr(real_sitk, name)

        def ReadImage(self, *args):
            swap_for_symlink(data / "raw" / "in.raw", outside / "secret.raw")
            swapped.append(True)
            return real_sitk.ReadImage(*args)

    monkeypatch.setattr(medical, "load_sitk", SwappingSitk)
    np.testing.assert_array_equal(read_image(data / "racy.mhd", root), INSIDE)
    assert swapped
    with refused("resolves outside it"):
        read_image(data / "racy.mhd", root)

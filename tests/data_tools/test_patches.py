"""patch_generator and create_dataset.

patch_generator matrix: 2D and 3D sources x slice_axis (0, 1, 2, -1) x odd/even patchsize,
including patches larger than the slice x mirrored/zero-padded x with/without binary_mask x
ordered/random order (seeded, Generator) x max_num; iter_blocks agrees with iteration and
reports centres; float32 output for bool/int/float sources; bad arguments.
Patches are checked against an independent per-pixel reference (an explicit mirror index
map, not np.pad).

create_dataset matrix: file_format hdf5/zarr/bcolz x (mask with class_list None, class_list
subset, no mask, bool/negative/float masks, a class smaller than batchsize, 2D volume,
slice_axis) x ordered/random order; read back with h5py / zarr / bcolz and compared per class
with patch_generator; progress bar on stderr; progress callback (cumulative per class); kwargs
passed and not mutated; a rebuild replaces the container; a failure mid-build leaves
is_dataset_complete False; bad arguments raise before anything is created.
"""

from __future__ import annotations

import os

import bcolz
import h5py
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from data_tools import patches as patches_module
from data_tools.patches import create_dataset, is_dataset_complete, patch_generator

FORMATS = ["hdf5", "zarr", "bcolz"]


def mirror_index(index, size):
    """Index into an axis of ``size`` after mirroring about its borders, edge repeated."""
    period = index % (2 * size)
    return period if period < size else 2 * size - 1 - period


def reference_patch(image, row, col, patchsize, mirrored):
    """The patch of a 2D image centred (at patchsize // 2) on (row, col), pixel by pixel."""
    patch = np.zeros((patchsize, patchsize), dtype=np.float32)
    height, width = image.shape
    for i in range(patchsize):
        for j in range(patchsize):
            r, c = row - patchsize // 2 + i, col - patchsize // 2 + j
            if mirrored:
                patch[i, j] = image[mirror_index(r, height), mirror_index(c, width)]
            elif 0 <= r < height and 0 <= c < width:
                patch[i, j] = image[r, c]
    return patch


def reference_patches(volume, patchsize, mask=None, mirrored=True, slice_axis=-1):
    """All patches in the documented order (slices, then row-major), with their centres."""
    stack = volume[np.newaxis] if volume.ndim == 2 else np.moveaxis(volume, slice_axis, 0)
    mask_stack = None
    if mask is not None:
        mask_stack = mask[np.newaxis] if mask.ndim == 2 else np.moveaxis(mask, slice_axis, 0)
    patches, centres = [], []
    for s, image in enumerate(stack):
        for r, c in np.ndindex(image.shape):
            if mask_stack is None or mask_stack[s, r, c]:
                patches.append(reference_patch(image, r, c, patchsize, mirrored))
                centre = [r, c]
                if volume.ndim == 3:
                    centre.insert(slice_axis % 3, s)
                centres.append(centre)
    shape = (0, patchsize, patchsize)
    return (
        np.array(patches).reshape(shape) if not patches else np.array(patches),
        np.array(centres, dtype=np.intp).reshape(-1, volume.ndim),
    )


def collect(generator, block_size=None):
    blocks = list(generator.iter_blocks(block_size))
    if not blocks:
        p = generator.patchsize
        return np.empty((0, p, p), np.float32), np.empty((0, generator.source.ndim), np.intp)
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


# ----------------------------------------------------------------- values and edges


def test_mirrored_corner_patch_repeats_the_edge_pixel():
    image = np.arange(9).reshape(3, 3)
    patch = next(iter(patch_generator(3, image)))
    np.testing.assert_array_equal(patch, [[0, 0, 1], [0, 0, 1], [3, 3, 4]])


def test_zero_padded_corner_patch():
    image = np.arange(1, 10).reshape(3, 3)
    patches = list(patch_generator(3, image, mirrored=False))
    np.testing.assert_array_equal(patches[0], [[0, 0, 0], [0, 1, 2], [0, 4, 5]])
    np.testing.assert_array_equal(patches[8], [[5, 6, 0], [8, 9, 0], [0, 0, 0]])


@pytest.mark.parametrize("mirrored", [True, False])
@pytest.mark.parametrize("patchsize", [1, 2, 3, 4, 7, 12])
def test_every_patch_matches_the_reference(patchsize, mirrored, rng):
    image = rng.normal(size=(5, 6))
    expected, _ = reference_patches(image, patchsize, mirrored=mirrored)
    got = np.array(list(patch_generator(patchsize, image, mirrored=mirrored)))
    np.testing.assert_array_equal(got, expected)
    assert len(got) == image.size


@pytest.mark.parametrize("patchsize", [2, 4, 5])
def test_centre_pixel_sits_at_half_patchsize(patchsize, rng):
    image = rng.normal(size=(6, 7)).astype(np.float32)
    patches, centres = collect(patch_generator(patchsize, image))
    middle = patchsize // 2
    np.testing.assert_array_equal(patches[:, middle, middle], image[tuple(centres.T)])
    # The patch reaches patchsize // 2 pixels up/left and patchsize // 2 - 1 (even) down/right.
    r, c = 3, 3
    got = patches[r * 7 + c]
    np.testing.assert_array_equal(
        got, image[r - middle : r - middle + patchsize, c - middle : c - middle + patchsize]
    )


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.int64, np.float64, np.float16])
def test_patches_are_float32(dtype, rng):
    image = (rng.random((4, 4)) * 3).astype(dtype)
    patches, _ = collect(patch_generator(3, image))
    assert patches.dtype == np.float32
    assert all(p.dtype == np.float32 for p in patch_generator(3, image))
    np.testing.assert_array_equal(patches[:, 1, 1], image.ravel().astype(np.float32))


# ----------------------------------------------------------------- selection and order


def test_mask_selects_pixels_in_row_major_order(rng):
    image = rng.normal(size=(6, 5))
    mask = rng.random((6, 5)) < 0.4
    generator = patch_generator(3, image, binary_mask=mask)
    patches, centres = collect(generator)
    expected, expected_centres = reference_patches(image, 3, mask=mask)
    assert len(generator) == len(patches) == np.count_nonzero(mask)
    np.testing.assert_array_equal(centres, np.argwhere(mask))
    np.testing.assert_array_equal(centres, expected_centres)
    np.testing.assert_array_equal(patches, expected)


def test_non_bool_mask_selects_nonzero_pixels():
    mask = np.array([[0, 2], [0, -1]])
    _, centres = collect(patch_generator(1, np.ones((2, 2)), binary_mask=mask))
    np.testing.assert_array_equal(centres, [[0, 1], [1, 1]])


@pytest.mark.parametrize("slice_axis", [0, 1, 2, -1, -3])
def test_3d_volume_is_cut_slice_by_slice_along_slice_axis(slice_axis, rng):
    volume = rng.normal(size=(3, 4, 5)).astype(np.float32)
    mask = rng.random(volume.shape) < 0.5
    generator = patch_generator(4, volume, mask, mirrored=False, slice_axis=slice_axis)
    patches, centres = collect(generator, block_size=3)
    expected, expected_centres = reference_patches(volume, 4, mask, False, slice_axis)
    np.testing.assert_array_equal(centres, expected_centres)
    np.testing.assert_array_equal(patches, expected)
    np.testing.assert_array_equal(patches[:, 2, 2], volume[tuple(centres.T)])
    assert mask[tuple(centres.T)].all()


def test_2d_source_ignores_slice_axis(rng):
    image = rng.normal(size=(4, 4))
    np.testing.assert_array_equal(
        collect(patch_generator(3, image, slice_axis=5))[0],
        collect(patch_generator(3, image))[0],
    )


def test_max_num_keeps_the_first_patches_in_order(rng):
    volume = rng.normal(size=(4, 4, 3))
    full, full_centres = collect(patch_generator(3, volume))
    generator = patch_generator(3, volume, max_num=21)
    patches, centres = collect(generator, block_size=4)
    assert len(generator) == 21
    np.testing.assert_array_equal(patches, full[:21])
    np.testing.assert_array_equal(centres, full_centres[:21])


def test_max_num_larger_than_available_and_zero(rng):
    image = rng.normal(size=(3, 3))
    assert len(list(patch_generator(3, image, max_num=100))) == 9
    assert list(patch_generator(3, image, max_num=0)) == []
    assert list(patch_generator(3, image, binary_mask=np.zeros((3, 3)))) == []
    assert len(patch_generator(3, image, max_num=0)) == 0


def test_random_order_is_a_seeded_permutation_of_the_ordered_patches(rng):
    volume = rng.normal(size=(5, 6, 3))
    mask = rng.random(volume.shape) < 0.6
    ordered, ordered_centres = collect(patch_generator(3, volume, mask))
    shuffled, centres = collect(patch_generator(3, volume, mask, random_order=True, rng=7))
    again, again_centres = collect(patch_generator(3, volume, mask, random_order=True, rng=7))
    other, _ = collect(patch_generator(3, volume, mask, random_order=True, rng=8))

    np.testing.assert_array_equal(shuffled, again)
    np.testing.assert_array_equal(centres, again_centres)
    assert not np.array_equal(shuffled, ordered)
    assert not np.array_equal(shuffled, other)
    # A permutation: sorting the centres (slice axis -1 first, then row-major) restores order.
    order = np.lexsort((centres[:, 1], centres[:, 0], centres[:, 2]))
    np.testing.assert_array_equal(centres[order], ordered_centres)
    np.testing.assert_array_equal(shuffled[order], ordered)


def test_random_order_with_max_num_is_a_random_subset(rng):
    image = rng.normal(size=(8, 8))
    patches, centres = collect(patch_generator(3, image, random_order=True, max_num=10, rng=1))
    assert len(patches) == 10
    assert len({tuple(c) for c in centres}) == 10
    ordered, _ = collect(patch_generator(3, image))
    np.testing.assert_array_equal(patches, ordered[centres[:, 0] * 8 + centres[:, 1]])
    assert not np.array_equal(np.sort(centres[:, 0] * 8 + centres[:, 1]), np.arange(10))


def test_generator_rng_advances_between_iterations(rng):
    image = np.arange(36.0).reshape(6, 6)
    generator = patch_generator(1, image, random_order=True, rng=np.random.default_rng(3))
    first, second = [p.ravel() for p in generator], [p.ravel() for p in generator]
    assert sorted(np.concatenate(first)) == sorted(np.concatenate(second))
    assert not np.array_equal(first, second)
    replay = patch_generator(1, image, random_order=True, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(first, [p.ravel() for p in replay])


def test_iter_blocks_respects_block_size_and_matches_iteration(rng):
    volume = rng.normal(size=(3, 5, 2))
    generator = patch_generator(2, volume, slice_axis=0)
    sizes = [len(p) for p, _ in generator.iter_blocks(4)]
    assert max(sizes) <= 4
    assert sum(sizes) == volume.size
    np.testing.assert_array_equal(collect(generator, 4)[0], np.array(list(generator)))


@settings(max_examples=30)
@given(
    shape=st.lists(st.integers(1, 5), min_size=2, max_size=3),
    patchsize=st.integers(1, 7),
    mirrored=st.booleans(),
    slice_axis=st.integers(-3, 2),
    use_mask=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_patches_match_reference(shape, patchsize, mirrored, slice_axis, use_mask, seed):
    rng = np.random.default_rng(seed)
    volume = rng.integers(-50, 50, size=shape).astype(np.float64)
    mask = rng.random(shape) < 0.5 if use_mask else None
    generator = patch_generator(patchsize, volume, mask, mirrored=mirrored, slice_axis=slice_axis)
    patches, centres = collect(generator, block_size=int(rng.integers(1, 9)))
    expected, expected_centres = reference_patches(volume, patchsize, mask, mirrored, slice_axis)
    np.testing.assert_array_equal(patches, expected)
    np.testing.assert_array_equal(centres, expected_centres)


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"patchsize": 0}, ValueError, "patchsize to be an integer >= 1"),
        ({"patchsize": -3}, ValueError, "patchsize to be an integer >= 1"),
        ({"patchsize": 2.0}, TypeError, "patchsize to be an integer"),
        ({"source": np.zeros(4)}, ValueError, r"source to be a 2D slice or a 3D volume"),
        ({"source": np.zeros((2, 2, 2, 2))}, ValueError, r"source to be a 2D slice"),
        ({"source": np.array([["a", "b"]])}, TypeError, "source to hold real numbers"),
        ({"source": np.zeros((2, 2), complex)}, TypeError, "source to hold real numbers"),
        ({"binary_mask": np.ones((3, 4))}, ValueError, r"binary_mask to have the shape"),
        ({"max_num": -1}, ValueError, "max_num to be an integer >= 0"),
        ({"max_num": 1.5}, TypeError, "max_num to be an integer"),
        ({"random_order": 1}, TypeError, "random_order to be True or False"),
        ({"mirrored": "yes"}, TypeError, "mirrored to be True or False"),
        ({"slice_axis": 3}, ValueError, r"slice_axis to be an axis of the 3D source"),
        ({"slice_axis": -4}, ValueError, r"slice_axis to be an axis"),
        ({"slice_axis": None}, TypeError, "slice_axis to be an integer"),
        ({"rng": "seed"}, TypeError, "rng to be None, a seed or a numpy Generator"),
        ({"rng": True}, TypeError, "rng to be None"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, match):
    arguments = {"patchsize": 3, "source": np.zeros((3, 3, 3))} | kwargs
    with pytest.raises(error, match=match):
        patch_generator(**arguments)


@pytest.mark.parametrize(("block_size", "error"), [(0, ValueError), (2.5, TypeError)])
def test_bad_block_size(block_size, error):
    with pytest.raises(error, match="block_size"):
        next(patch_generator(3, np.zeros((3, 3))).iter_blocks(block_size))


# ----------------------------------------------------------------- create_dataset


def read_back(save_path, file_format):
    """{array name: contents} of a create_dataset container, read with the backend itself."""
    if file_format == "hdf5":
        with h5py.File(os.path.join(save_path, "patches.h5"), "r") as file:
            return {name: file[name][()] for name in file}
    if file_format == "zarr":
        group = zarr.open_group(os.path.join(save_path, "patches.zarr"), mode="r")
        return {name: np.asarray(array[...]) for name, array in group.arrays()}
    container = os.path.join(save_path, "patches.bcolz")
    return {
        name: bcolz.open(os.path.join(container, name), mode="r")[:]
        for name in os.listdir(container)
    }


def class_patches(patchsize, volume, binary_mask=None, **kwargs):
    """What create_dataset must store for one class, in ordered form: (n, 1, p, p)."""
    patches, _ = collect(patch_generator(patchsize, volume, binary_mask, **kwargs))
    return patches[:, np.newaxis]


def sort_patches(patches):
    rows = patches.reshape(len(patches), -1)
    return patches[np.lexsort(rows.T[::-1])]


@pytest.fixture
def labelled(rng):
    volume = rng.normal(size=(6, 5, 3))
    mask = rng.integers(0, 3, size=volume.shape)
    mask[0, 0, 0] = 7  # a class with a single patch, fewer than batchsize
    return volume, mask


@pytest.mark.parametrize("file_format", FORMATS)
def test_ordered_build_equals_patch_generator_per_class(file_format, labelled, tmp_path):
    volume, mask = labelled
    save_path = tmp_path / "out"
    counts = create_dataset(
        save_path, 3, volume, mask, random_order=False, batchsize=4, file_format=file_format
    )
    stored = read_back(save_path, file_format)
    values = [0, 1, 2, 7]
    assert list(counts) == values
    assert sorted(stored) == sorted(f"class_{v}" for v in values)
    for value in values:
        array = stored[f"class_{value}"]
        assert array.dtype == np.float32
        assert counts[value] == len(array) == np.count_nonzero(mask == value)
        np.testing.assert_array_equal(array, class_patches(3, volume, mask == value))
    assert stored["class_7"].shape == (1, 1, 3, 3)
    assert is_dataset_complete(save_path, file_format)


@pytest.mark.parametrize("file_format", FORMATS)
def test_random_build_permutes_each_class_and_is_seeded(file_format, labelled, tmp_path):
    volume, mask = labelled
    for name in ("a", "b", "c"):
        seed = 5 if name != "c" else 6
        create_dataset(tmp_path / name, 4, volume, mask, file_format=file_format, rng=seed)
    first, again, other = (read_back(tmp_path / n, file_format) for n in ("a", "b", "c"))
    for value in (0, 1, 2):
        name = f"class_{value}"
        ordered = class_patches(4, volume, mask == value)
        np.testing.assert_array_equal(first[name], again[name])
        assert not np.array_equal(first[name], ordered)
        assert not np.array_equal(first[name], other[name])
        np.testing.assert_array_equal(sort_patches(first[name]), sort_patches(ordered))


@pytest.mark.parametrize("file_format", FORMATS)
def test_class_list_selects_classes_in_its_order(file_format, labelled, tmp_path):
    volume, mask = labelled
    counts = create_dataset(
        tmp_path, 3, volume, mask, class_list=[2, 7], random_order=False, file_format=file_format
    )
    assert counts == {2: np.count_nonzero(mask == 2), 7: 1}
    assert list(counts) == [2, 7]
    stored = read_back(tmp_path, file_format)
    assert sorted(stored) == ["class_2", "class_7"]
    np.testing.assert_array_equal(stored["class_2"], class_patches(3, volume, mask == 2))


@pytest.mark.parametrize("file_format", FORMATS)
def test_without_mask_every_pixel_is_class_0(file_format, rng, tmp_path):
    volume = rng.normal(size=(4, 5)).astype(np.float32)
    counts = create_dataset(tmp_path, 2, volume, random_order=False, file_format=file_format)
    assert counts == {0: 20}
    stored = read_back(tmp_path, file_format)
    assert list(stored) == ["class_0"]
    np.testing.assert_array_equal(stored["class_0"], class_patches(2, volume))


def test_mask_value_names_bool_negative_and_integral_float(rng, tmp_path):
    volume = rng.normal(size=(3, 4, 2))
    bool_mask = rng.random(volume.shape) < 0.5
    assert list(create_dataset(tmp_path / "b", 3, volume, bool_mask)) == [0, 1]
    float_mask = np.where(bool_mask, -1.0, 4.0)
    counts = create_dataset(tmp_path / "f", 3, volume, float_mask, random_order=False)
    assert counts == {-1: np.count_nonzero(bool_mask), 4: np.count_nonzero(~bool_mask)}
    stored = read_back(tmp_path / "f", "hdf5")
    np.testing.assert_array_equal(stored["class_-1"], class_patches(3, volume, bool_mask))


def test_slice_axis_is_passed_to_the_generator(labelled, tmp_path):
    volume, mask = labelled
    create_dataset(tmp_path, 3, volume, mask, random_order=False, slice_axis=0)
    stored = read_back(tmp_path, "hdf5")
    expected = class_patches(3, volume, mask == 1, slice_axis=0)
    np.testing.assert_array_equal(stored["class_1"], expected)


def test_kwargs_reach_the_writer_and_are_not_mutated(labelled, tmp_path):
    volume, mask = labelled
    kwargs = {"compression": "gzip"}
    create_dataset(tmp_path, 3, volume, mask, kwargs=kwargs)
    assert kwargs == {"compression": "gzip"}
    with h5py.File(tmp_path / "patches.h5", "r") as file:
        assert file["class_1"].compression == "gzip"


@pytest.mark.parametrize("file_format", FORMATS)
def test_rebuild_replaces_the_container(file_format, labelled, tmp_path):
    volume, mask = labelled
    (tmp_path / "keep.txt").write_text("not ours")
    create_dataset(tmp_path, 3, volume, mask, file_format=file_format)
    create_dataset(tmp_path, 3, volume, mask, class_list=[1], file_format=file_format)
    assert list(read_back(tmp_path, file_format)) == ["class_1"]
    assert is_dataset_complete(tmp_path, file_format)
    assert (tmp_path / "keep.txt").read_text() == "not ours"


def test_show_progress_draws_a_bar_on_stderr(labelled, tmp_path, capsys):
    volume, mask = labelled
    create_dataset(tmp_path / "quiet", 3, volume, mask)
    assert capsys.readouterr().err == ""
    create_dataset(tmp_path / "loud", 3, volume, mask, show_progress=True)
    err = capsys.readouterr().err
    assert f"{volume.size}/{volume.size}" in err
    assert "patch" in err


def test_progress_reports_cumulative_counts_per_block(labelled, tmp_path):
    volume, mask = labelled
    reports = []
    counts = create_dataset(
        tmp_path, 3, volume, mask, class_list=[2, 0], progress=reports.append, random_order=False
    )
    assert len(reports) > 1  # one per slice in order
    assert all(list(report) == [2, 0] for report in reports)
    totals = [sum(report.values()) for report in reports]
    assert totals == sorted(totals)
    assert reports[-1] == counts
    with pytest.raises(TypeError, match="progress to be None or a callable"):
        create_dataset(tmp_path, 3, volume, mask, progress=1)


@pytest.mark.parametrize("file_format", FORMATS)
def test_failure_mid_build_leaves_no_complete_dataset(file_format, labelled, tmp_path, monkeypatch):
    volume, mask = labelled
    original = patch_generator.iter_blocks

    def failing(self, block_size=None):
        for number, block in enumerate(original(self, 8)):
            if number == 3:
                raise RuntimeError("disk on fire")
            yield block

    monkeypatch.setattr(patches_module.patch_generator, "iter_blocks", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        create_dataset(tmp_path, 3, volume, mask, batchsize=2, file_format=file_format)
    assert not is_dataset_complete(tmp_path, file_format)
    assert sorted(read_back(tmp_path, file_format)) == ["class_0", "class_1", "class_2", "class_7"]


@pytest.mark.parametrize("file_format", FORMATS)
def test_is_dataset_complete_is_false_without_a_build(file_format, tmp_path):
    assert not is_dataset_complete(tmp_path, file_format)
    assert not is_dataset_complete(tmp_path / "missing", file_format)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"save_path": None}, TypeError, "save_path to be a non-empty path"),
        ({"patchsize": 0}, ValueError, "patchsize to be an integer >= 1"),
        ({"batchsize": 0}, ValueError, "batchsize to be an integer >= 1"),
        ({"batchsize": "32"}, TypeError, "batchsize to be an integer"),
        ({"file_format": "hdf"}, ValueError, r"file_format .* Did you mean 'hdf5'\?"),
        (
            {"file_format": "npy"},
            ValueError,
            r"file_format to be one of \['bcolz', 'hdf5', 'zarr'\]",
        ),
        ({"volume": np.zeros(5)}, ValueError, "volume to be a 2D slice or a 3D volume"),
        ({"volume": np.zeros((0, 3))}, ValueError, "volume to have at least one pixel"),
        ({"volume": np.array([["x"]])}, TypeError, "volume to hold real numbers"),
        ({"mask": np.zeros((3, 3))}, ValueError, r"mask to have the shape of volume"),
        ({"mask": np.full((2, 3, 4), 0.5)}, ValueError, "mask to hold integer class values"),
        ({"mask": np.full((2, 3, 4), np.nan)}, ValueError, "mask to hold integer class values"),
        ({"mask": np.full((2, 3, 4), "a")}, TypeError, "mask to hold integer class values"),
        ({"mask": None, "class_list": [0]}, ValueError, "class_list to be None when mask is None"),
        ({"class_list": [1, 5]}, ValueError, r"absent values \[5\]"),
        ({"class_list": []}, ValueError, "class_list to hold at least one value"),
        ({"class_list": [1, 1]}, ValueError, "class_list to hold at least one value, each once"),
        ({"class_list": [1.0]}, TypeError, r"class_list\[0\] to be an integer"),
        ({"class_list": 1}, TypeError, "class_list to be None or a sequence"),
        ({"kwargs": [("compression", "gzip")]}, TypeError, "kwargs to be a dict or None"),
        ({"kwargs": {"dtype": "f8"}}, ValueError, "kwargs without the keys"),
        ({"show_progress": 1}, TypeError, "show_progress to be True or False"),
        ({"random_order": None}, TypeError, "random_order to be True or False"),
        ({"slice_axis": 3}, ValueError, "slice_axis to be an axis"),
        ({"rng": "x"}, TypeError, "rng to be None"),
    ],
)
def test_create_dataset_bad_arguments(kwargs, error, match, tmp_path):
    save_path = tmp_path / "out"
    volume = np.zeros((2, 3, 4))
    mask = np.zeros((2, 3, 4), dtype=int)
    mask[0] = 1
    arguments = {"save_path": save_path, "patchsize": 3, "volume": volume, "mask": mask} | kwargs
    with pytest.raises(error, match=match):
        create_dataset(**arguments)
    if kwargs.get("kwargs") != {"dtype": "f8"}:  # writer options are checked by the writer
        assert not save_path.exists()


# ----------------------------------------------------------------- mask patches, size plan


@pytest.mark.parametrize("file_format", FORMATS)
@pytest.mark.parametrize("slice_axis", [0, -1])
def test_store_masks_cuts_the_mask_at_each_patch_centre(
    file_format, slice_axis, labelled, tmp_path
):
    volume, mask = labelled
    save_path = tmp_path / "out"
    create_dataset(
        save_path,
        4,
        volume,
        mask,
        random_order=False,
        batchsize=4,
        file_format=file_format,
        slice_axis=slice_axis,
        store_masks=True,
    )
    stored = read_back(save_path, file_format)
    assert sorted(stored) == sorted(f"{a}_{v}" for a in ("class", "mask") for v in (0, 1, 2, 7))
    for value in (0, 1, 2, 7):
        images, centres = reference_patches(volume, 4, mask == value, slice_axis=slice_axis)
        masks, mask_centres = reference_patches(mask, 4, mask == value, slice_axis=slice_axis)
        np.testing.assert_array_equal(centres, mask_centres)
        np.testing.assert_array_equal(stored[f"class_{value}"][:, 0], images)
        assert stored[f"mask_{value}"].dtype == mask.dtype
        assert stored[f"mask_{value}"].shape == (len(masks), 1, 4, 4)
        np.testing.assert_array_equal(stored[f"mask_{value}"][:, 0], masks)
    assert is_dataset_complete(save_path, file_format)


def test_store_masks_pairs_survive_random_order_and_the_cap(rng, tmp_path):
    # Every pixel value is unique, so an image patch's centre value tells its centre.
    volume = rng.permutation(6 * 7 * 8).reshape(6, 7, 8).astype(np.float64)
    mask = rng.integers(0, 3, size=volume.shape).astype(bool)
    create_dataset(
        tmp_path,
        3,
        volume,
        mask,
        rng=4,
        slice_axis=0,
        store_masks=True,
        max_patches_per_class=50,
    )
    stored = read_back(tmp_path, "hdf5")
    padded_mask = np.pad(mask.astype(np.uint8), ((0, 0), (1, 1), (1, 1)), mode="symmetric")
    for value in (0, 1):
        images, masks = stored[f"class_{value}"][:, 0], stored[f"mask_{value}"][:, 0]
        assert len(images) == len(masks) == 50
        assert masks.dtype == np.uint8  # bool masks are stored as uint8
        for image, mask_patch in zip(images, masks, strict=True):
            s, r, c = np.argwhere(volume == image[1, 1])[0]
            assert mask[s, r, c] == value
            np.testing.assert_array_equal(mask_patch, padded_mask[s, r : r + 3, c : c + 3])


def test_max_patches_per_class_keeps_the_first_patches_in_order(labelled, tmp_path):
    volume, mask = labelled
    counts = create_dataset(tmp_path, 3, volume, mask, random_order=False, max_patches_per_class=5)
    stored = read_back(tmp_path, "hdf5")
    assert counts == {0: 5, 1: 5, 2: 5, 7: 1}
    for value in (0, 1, 2):
        np.testing.assert_array_equal(
            stored[f"class_{value}"], class_patches(3, volume, mask == value)[:5]
        )


def test_planned_reports_patches_and_bytes_per_class_before_writing(labelled, tmp_path):
    volume, mask = labelled
    plans = []

    def planned(plan):
        assert not os.path.exists(tmp_path / "patches.h5")  # nothing written yet
        plans.append(plan)

    counts = create_dataset(
        tmp_path, 3, volume, mask.astype(np.int16), planned=planned, store_masks=True
    )
    assert len(plans) == 1
    assert {v: p.patches for v, p in plans[0].items()} == counts
    # 9 float32 image values and 9 int16 mask values per patch
    assert {v: p.bytes for v, p in plans[0].items()} == {v: n * 9 * 6 for v, n in counts.items()}
    assert patches_module.plan_classes({0: 10}, 4) == {0: patches_module.ClassPlan(10, 640)}


def test_a_plan_large_for_its_input_warns(tmp_path):
    # 256 KB of float32 in, 64 * 64 * 16 patches of 32 * 32 float32 out: 268 MB.
    volume = np.zeros((16, 64, 64), dtype=np.float32)

    def stop(written):
        raise RuntimeError("stopped after the first block")

    with (
        pytest.warns(UserWarning, match=r"65536 patches taking 268\.4 MB .*max_patches_per_class"),
        pytest.raises(RuntimeError, match="stopped"),
    ):
        create_dataset(tmp_path, 32, volume, slice_axis=0, progress=stop)
    assert not is_dataset_complete(tmp_path)


def test_attrs_are_set_on_every_array(labelled, tmp_path):
    volume, mask = labelled
    create_dataset(tmp_path, 3, volume, mask, store_masks=True, attrs={"spacing": [0.5, 2.0]})
    with h5py.File(tmp_path / "patches.h5", "r") as file:
        for array in file.values():
            np.testing.assert_array_equal(array.attrs["spacing"], [0.5, 2.0])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"store_masks": True}, ValueError, "Expected a mask with store_masks=True"),
        ({"store_masks": 1}, TypeError, "store_masks"),
        ({"max_patches_per_class": 0}, ValueError, "max_patches_per_class"),
        ({"planned": 3}, TypeError, "planned to be None or a callable"),
        ({"attrs": [1]}, TypeError, "attrs to be a dict or None"),
    ],
)
def test_mask_patch_options_bad_arguments(kwargs, error, match, tmp_path):
    with pytest.raises(error, match=match):
        create_dataset(tmp_path, 3, np.zeros((4, 4)), **kwargs)
    assert not os.path.exists(tmp_path / "patches.h5")

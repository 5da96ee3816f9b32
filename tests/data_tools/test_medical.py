"""import_cases: medical cases in, one dataset of 2D slices out.

Matrix: synthetic NIfTI cases (SimpleITK) with differing spacings x options: none (arrays
image / mask / case / slice and per-case metadata, hdf5 and zarr, HDF5-array cases),
orientation (RAS flips LPS x and y; metadata), resampling (spacing: a linear ramp keeps
its physical values, label values kept by nearest neighbour; spacing + size: centred grid),
normalization (zscore, minmax, window), slice filtering (labelled only, a seeded fraction),
slice_axis, progress per case; bad input names the case and the field (image/label shapes,
non-integer labels, unknown orientation, differing slice shapes and spacings, label values,
labels on some cases only) and leaves no complete store.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import zarr

from data_tools.medical import (
    Case,
    CaseReport,
    import_cases,
    is_import_complete,
    load_cases,
)

SHAPE = (6, 10, 12)  # z, y, x


def write_case(directory, name, image, label=None, spacing=(1.0, 1.0, 1.0), direction=None):
    """Write ``name``.nii.gz (and ``name``_seg.nii.gz); return the Case."""
    paths = []
    for suffix, array in (("", image), ("_seg", label)):
        if array is None:
            paths.append(None)
            continue
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing(spacing)
        if direction is not None:
            volume.SetDirection(direction)
        path = directory / f"{name}{suffix}.nii.gz"
        sitk.WriteImage(volume, str(path))
        paths.append(path)
    return Case(paths[0], paths[1])


def labelled_volume(rng, shape=SHAPE, labelled_slices=(2, 3)):
    image = rng.normal(100, 20, size=shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    for z in labelled_slices:
        label[z, 2:6, 3:8] = 1
        label[z, 4, 4] = 3
    return image, label


def read_store(path, file_format="hdf5"):
    if file_format == "hdf5":
        with h5py.File(path / "cases.h5", "r") as file:
            return {name: file[name][()] for name in file}
    group = zarr.open_group(path / "cases.zarr", mode="r")
    return {name: np.asarray(array[...]) for name, array in group.arrays()}


@pytest.mark.parametrize("file_format", ["hdf5", "zarr"])
def test_slices_of_every_case_with_case_and_slice_indices(file_format, rng, tmp_path):
    volumes = [labelled_volume(rng) for _ in range(2)]
    cases = [
        write_case(tmp_path, f"c{i}", image, label, spacing=(0.8, 0.8, 1.0 + i))
        for i, (image, label) in enumerate(volumes)
    ]
    reports = import_cases(tmp_path / "out", cases, file_format=file_format)
    assert reports == [CaseReport(0, "c0", 6, 6), CaseReport(1, "c1", 6, 6)]
    stored = read_store(tmp_path / "out", file_format)
    assert stored["image"].dtype == np.float32
    assert stored["image"].shape == (12, 10, 12)
    assert stored["mask"].dtype == np.int32
    np.testing.assert_array_equal(stored["image"], np.concatenate([v[0] for v in volumes]))
    np.testing.assert_array_equal(stored["mask"], np.concatenate([v[1] for v in volumes]))
    np.testing.assert_array_equal(stored["case"], np.repeat([0, 1], 6))
    np.testing.assert_array_equal(stored["slice"], np.tile(np.arange(6), 2))
    assert is_import_complete(tmp_path / "out", file_format)
    container = "cases.h5" if file_format == "hdf5" else "cases.zarr"
    metadata = load_cases(tmp_path / "out" / container)
    assert [m["name"] for m in metadata] == ["c0", "c1"]
    assert metadata[1]["original"]["spacing"] == pytest.approx([0.8, 0.8, 2.0])
    assert metadata[1]["original"]["size"] == [12, 10, 6]
    assert metadata[1]["original"]["direction"] == [1, 0, 0, 0, 1, 0, 0, 0, 1]
    assert metadata[1]["label"].endswith("c1_seg.nii.gz")
    assert metadata[1]["rows"] == [6, 12]


def test_cases_from_hdf5_arrays_without_labels(rng, tmp_path):
    image = rng.normal(size=SHAPE)
    with h5py.File(tmp_path / "in.h5", "w") as file:
        file["image"] = image
        reports = import_cases(
            tmp_path / "out", [Case(file["image"], name="h5"), Case(image * 2, spacing=(1, 1, 3))]
        )
    assert [r.name for r in reports] == ["h5", "case1"]
    stored = read_store(tmp_path / "out")
    assert "mask" not in stored
    np.testing.assert_allclose(stored["image"], np.concatenate([image, image * 2]), rtol=1e-6)
    assert load_cases(tmp_path / "out" / "cases.h5")[1]["original"]["spacing"] == [1, 1, 3]


def test_multi_component_images_get_a_channel_axis(rng, tmp_path):
    pixels = rng.normal(size=(*SHAPE, 2)).astype(np.float32) * [1, 100] + [0, 50]
    volume = sitk.GetImageFromArray(pixels, isVector=True)
    sitk.WriteImage(volume, str(tmp_path / "rgb.mha"))
    import_cases(tmp_path / "out", [Case(tmp_path / "rgb.mha")], normalize="zscore")
    image = read_store(tmp_path / "out")["image"]
    assert image.shape == (6, 2, 10, 12)
    for channel in (0, 1):  # normalized per channel
        assert image[:, channel].mean() == pytest.approx(0, abs=1e-5)
        assert image[:, channel].std() == pytest.approx(1, abs=1e-4)


def test_slice_axis_cuts_along_another_axis(rng, tmp_path):
    image, label = labelled_volume(rng)
    import_cases(tmp_path / "out", [write_case(tmp_path, "c", image, label)], slice_axis=2)
    stored = read_store(tmp_path / "out")
    np.testing.assert_array_equal(stored["image"], np.moveaxis(image, 2, 0))
    np.testing.assert_array_equal(stored["mask"], np.moveaxis(label, 2, 0))
    np.testing.assert_array_equal(stored["slice"], np.arange(12))


def test_orientation_reorients_every_case(rng, tmp_path):
    image, label = labelled_volume(rng)
    lps = write_case(tmp_path, "lps", image, label)  # identity direction: LPS
    ras_direction = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    ras = write_case(tmp_path, "ras", image, label, direction=ras_direction)
    import_cases(tmp_path / "out", [lps, ras], orientation="ras")
    stored = read_store(tmp_path / "out")
    # To RAS, the LPS case flips x and y; the RAS case is kept.
    np.testing.assert_array_equal(stored["image"][:6], image[:, ::-1, ::-1])
    np.testing.assert_array_equal(stored["mask"][:6], label[:, ::-1, ::-1])
    np.testing.assert_array_equal(stored["image"][6:], image)
    metadata = load_cases(tmp_path / "out" / "cases.h5")
    assert metadata[0]["imported"]["direction"] == list(ras_direction)
    assert metadata[0]["original"]["direction"] == [1, 0, 0, 0, 1, 0, 0, 0, 1]


def test_resampling_to_a_spacing_keeps_physical_values_and_label_values(tmp_path):
    # A ramp along x in physical units: linear interpolation reproduces it exactly.
    fine, coarse = (0.5, 0.5, 2.0), (1.0, 1.0, 3.0)
    cases = []
    for name, spacing, shape in (("fine", fine, (4, 16, 20)), ("coarse", coarse, (5, 8, 10))):
        image = np.broadcast_to(np.arange(shape[2]) * spacing[0], shape).astype(np.float32)
        label = np.zeros(shape, dtype=np.int16)
        label[:, : shape[1] // 2, : shape[2] // 2] = 3
        label[:, shape[1] // 2 :, shape[2] // 2 :] = 7
        cases.append(write_case(tmp_path, name, image, label, spacing=spacing))
    import_cases(tmp_path / "out", cases, spacing=(1.0, 1.0), label_values=[0, 3, 7])
    stored = read_store(tmp_path / "out")
    assert stored["image"].shape == (9, 8, 10)
    assert stored["mask"].dtype == np.uint8  # the smallest dtype holding label_values
    assert set(np.unique(stored["mask"])) == {0, 3, 7}  # nearest neighbour: no new values
    assert (stored["mask"][:4, :3, :4] == 3).all()
    assert (stored["mask"][:4, 5:, 6:] == 7).all()
    metadata = load_cases(tmp_path / "out" / "cases.h5")
    assert metadata[0]["imported"]["spacing"] == [1.0, 1.0, 2.0]  # out of plane kept
    assert metadata[0]["imported"]["size"] == [10, 8, 4]
    origin = metadata[0]["imported"]["origin"][0]
    # The fine case's grid is centred on the original: x of column j is origin + j.
    np.testing.assert_allclose(stored["image"][0, 3, 1:-1], origin + np.arange(1, 9), atol=1e-5)
    np.testing.assert_array_equal(stored["image"][4:], cases_image(tmp_path / "coarse.nii.gz"))


def cases_image(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_resampling_to_a_spacing_and_size_centres_the_grid(rng, tmp_path):
    small = write_case(tmp_path, "small", *labelled_volume(rng), spacing=(2.0, 2.0, 1.0))
    big = write_case(tmp_path, "big", *labelled_volume(rng, (4, 30, 40)), spacing=(0.5, 0.5, 1))
    import_cases(tmp_path / "out", [small, big], spacing=(1.0, 1.0), size=(16, 16))
    stored = read_store(tmp_path / "out")
    assert stored["image"].shape == (10, 16, 16)
    for case, entry in zip(
        ("small", "big"), load_cases(tmp_path / "out" / "cases.h5"), strict=True
    ):
        image = sitk.ReadImage(str(tmp_path / f"{case}.nii.gz"))
        centre = image.TransformContinuousIndexToPhysicalPoint(
            [(n - 1) / 2 for n in image.GetSize()]
        )
        new_centre = np.array(entry["imported"]["origin"][:2]) + 7.5
        np.testing.assert_allclose(new_centre, centre[:2])


def test_size_alone_keeps_the_extent(rng, tmp_path):
    case = write_case(tmp_path, "c", *labelled_volume(rng), spacing=(1.0, 1.0, 1.0))
    import_cases(tmp_path / "out", [case], size=(5, 6))
    assert read_store(tmp_path / "out")["image"].shape == (6, 5, 6)
    assert load_cases(tmp_path / "out" / "cases.h5")[0]["imported"]["spacing"] == [2, 2, 1]


@pytest.mark.parametrize("normalize", ["zscore", "minmax"])
def test_per_case_normalization(normalize, rng, tmp_path):
    cases = [
        write_case(tmp_path, f"c{i}", rng.normal(50 * i, 10 + i, SHAPE).astype(np.float32))
        for i in range(2)
    ]
    import_cases(tmp_path / "out", cases, normalize=normalize)
    image = read_store(tmp_path / "out")["image"]
    for case in (image[:6], image[6:]):
        if normalize == "zscore":
            assert case.mean() == pytest.approx(0, abs=1e-5)
            assert case.std() == pytest.approx(1, abs=1e-4)
        else:
            assert (case.min(), case.max()) == (0, 1)


def test_window_normalization_clips_then_maps_to_unit_range(rng, tmp_path):
    raw = rng.uniform(-1000, 1000, SHAPE).astype(np.float32)
    import_cases(
        tmp_path / "out", [write_case(tmp_path, "c", raw)], clip=(-100, 300), normalize="window"
    )
    image = read_store(tmp_path / "out")["image"]
    np.testing.assert_allclose(image, (np.clip(raw, -100, 300) + 100) / 400, atol=1e-6)


def test_clip_alone_keeps_intensities_within(rng, tmp_path):
    raw = rng.uniform(-1000, 1000, SHAPE).astype(np.float32)
    import_cases(tmp_path / "out", [write_case(tmp_path, "c", raw)], clip=(0, 10))
    np.testing.assert_array_equal(read_store(tmp_path / "out")["image"], np.clip(raw, 0, 10))


def test_keep_unlabelled_zero_keeps_only_labelled_slices(rng, tmp_path):
    cases = [
        write_case(tmp_path, "a", *labelled_volume(rng, labelled_slices=(1, 4))),
        write_case(tmp_path, "b", *labelled_volume(rng, labelled_slices=(0,))),
    ]
    reports = import_cases(tmp_path / "out", cases, keep_unlabelled=0.0)
    assert [(r.slices, r.kept) for r in reports] == [(6, 2), (6, 1)]
    stored = read_store(tmp_path / "out")
    np.testing.assert_array_equal(stored["slice"], [1, 4, 0])
    np.testing.assert_array_equal(stored["case"], [0, 0, 1])
    assert all(m.any() for m in stored["mask"])


def test_keep_unlabelled_fraction_is_seeded(rng, tmp_path):
    shape = (40, 6, 6)
    case = write_case(tmp_path, "a", *labelled_volume(rng, shape, labelled_slices=(3, 9)))
    kept = {}
    for name, seed in (("s1", 1), ("again", 1), ("s2", 2)):
        import_cases(tmp_path / name, [case], keep_unlabelled=0.25, seed=seed)
        kept[name] = read_store(tmp_path / name)["slice"]
    assert len(kept["s1"]) == 2 + round(0.25 * 38)
    assert {3, 9} <= set(kept["s1"])
    assert list(kept["s1"]) == sorted(kept["s1"])
    np.testing.assert_array_equal(kept["s1"], kept["again"])
    assert not np.array_equal(kept["s1"], kept["s2"])


def test_progress_reports_each_case_once_written(rng, tmp_path):
    cases = [write_case(tmp_path, f"c{i}", *labelled_volume(rng)) for i in range(3)]
    seen = []
    import_cases(tmp_path / "out", cases, progress=seen.append, keep_unlabelled=0)
    assert seen == [CaseReport(i, f"c{i}", 6, 2) for i in range(3)]


# ----------------------------------------------------------------- bad input


def test_mismatched_image_and_label_shapes_name_the_case(rng, tmp_path):
    image, _ = labelled_volume(rng)
    good = write_case(tmp_path, "good", *labelled_volume(rng))
    bad = write_case(tmp_path, "bad", image, np.zeros((6, 10, 11), np.uint8))
    with pytest.raises(
        ValueError,
        match=r"cases\[1\]\.label \(case 'bad'\): Expected the image's shape \(6, 10, 12\)\. "
        r"Got shape \(6, 10, 11\) instead\.",
    ):
        import_cases(tmp_path / "out", [good, bad])
    assert not is_import_complete(tmp_path / "out")


def test_non_integer_labels_name_the_case(rng, tmp_path):
    image, label = labelled_volume(rng)
    bad = write_case(tmp_path, "bad", image, label.astype(np.float32) * 0.5)
    with pytest.raises(ValueError, match=r"cases\[0\]\.label \(case 'bad'\): Expected integer"):
        import_cases(tmp_path / "out", [bad])
    # Integral floats are integers.
    fine = write_case(tmp_path, "fine", image, label.astype(np.float32))
    import_cases(tmp_path / "ok", [fine])
    np.testing.assert_array_equal(read_store(tmp_path / "ok")["mask"], label)


@pytest.mark.parametrize("code", ["RAX", "RRS", "RA", "lpsi", 3])
def test_unknown_orientation_codes_are_refused(code, rng, tmp_path):
    case = write_case(tmp_path, "c", *labelled_volume(rng))
    with pytest.raises(
        ValueError, match=r"Expected orientation to be a 3-letter code .*every case"
    ):
        import_cases(tmp_path / "out", [case], orientation=code)
    assert not (tmp_path / "out").exists()


def test_cases_whose_slices_differ_name_the_case_and_field(rng, tmp_path):
    first = write_case(tmp_path, "first", *labelled_volume(rng))
    wide = write_case(tmp_path, "wide", *labelled_volume(rng, (6, 10, 14)))
    with pytest.raises(
        ValueError, match=r"cases\[1\]\.image \(case 'wide'\): Expected slices of shape \(10, 12\)"
    ):
        import_cases(tmp_path / "out", [first, wide])
    assert not is_import_complete(tmp_path / "out")


def test_cases_whose_spacings_differ_name_the_case_and_field(rng, tmp_path):
    first = write_case(tmp_path, "first", *labelled_volume(rng), spacing=(1, 1, 1))
    other = write_case(tmp_path, "other", *labelled_volume(rng), spacing=(1, 1.5, 1))
    with pytest.raises(ValueError, match=r"cases\[1\]\.spacing \(case 'other'\): Expected"):
        import_cases(tmp_path / "out", [first, other])
    # Out-of-plane spacing may differ; resampling makes the in-plane one agree.
    thick = write_case(tmp_path, "thick", *labelled_volume(rng), spacing=(1, 1, 5))
    import_cases(tmp_path / "ok", [first, thick])
    import_cases(tmp_path / "ok2", [first, other], spacing=(1, 1), size=(10, 12))


def test_label_values_outside_label_values_name_the_case(rng, tmp_path):
    case = write_case(tmp_path, "c", *labelled_volume(rng))
    with pytest.raises(
        ValueError, match=r"cases\[0\]\.label \(case 'c'\): .*label_values \[0, 1\]\. Got \[3\]"
    ):
        import_cases(tmp_path / "out", [case], label_values=[0, 1])


def test_a_spacing_giving_huge_slices_names_the_case(rng, tmp_path):
    case = write_case(tmp_path, "c", *labelled_volume(rng))
    with pytest.raises(ValueError, match=r"cases\[0\]\.spacing \(case 'c'\): .*at most 67108864"):
        import_cases(tmp_path / "out", [case], spacing=(1e-3, 1e-3))


def test_labels_on_some_cases_only_are_refused(rng, tmp_path):
    image, label = labelled_volume(rng)
    cases = [write_case(tmp_path, "a", image, label), write_case(tmp_path, "b", image)]
    with pytest.raises(ValueError, match=r"cases\[1\]\.label \(case 'b'\): Expected a label"):
        import_cases(tmp_path / "out", cases)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"normalize": "zscor"}, "normalize"),
        ({"normalize": "window"}, "clip=.* with normalize='window'"),
        ({"clip": (3, 1)}, "low < high"),
        ({"spacing": (1,)}, "spacing to be two numbers"),
        ({"spacing": (0, 1)}, "spacing to be positive"),
        ({"size": (1.5, 2)}, "size to be two integers"),
        ({"size": (1 << 14, 1 << 14)}, "size to be at least 1 pixel and at most 67108864"),
        ({"spacing": (float("nan"), 1)}, "spacing to be two numbers"),
        ({"keep_unlabelled": 1.5}, r"keep_unlabelled to be a fraction in \[0, 1\]"),
        ({"slice_axis": 3}, r"slice_axis .* in \[-3, 2\]"),
        ({"label_values": [1, 1]}, "distinct"),
        ({"file_format": "bcolz"}, "file_format"),
    ],
)
def test_bad_options_name_the_option(kwargs, match, rng, tmp_path):
    case = write_case(tmp_path, "c", *labelled_volume(rng))
    with pytest.raises(ValueError, match=match):
        import_cases(tmp_path / "out", [case], **kwargs)

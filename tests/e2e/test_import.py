"""Import jobs and mask-patch builds end to end: a real node, the real client and CLI.

Matrix: an import of synthetic NIfTI cases (labels, differing spacings; orientation,
resampling, normalization, slice filtering) through SubmitBuildJob is registered and streams
exactly what data_tools.medical.import_cases writes, with progress per case, and is served
again after a restart; zarr output and HDF5-array cases; cases without labels serve no mask; bad import requests get
INVALID_ARGUMENT naming the field and the case (label shape, orientation, patch-only fields,
no cases) and the node keeps serving; a case the job cannot use (non-integer labels) fails
the job with the case and field named, leaving no output; the CLI imports; a build with
store_masks serves (patch, mask, label) triples equal to create_dataset's, and its Job
reports the planned patches and bytes per class; store_masks without a mask or on Dask is
refused; a medical image with the default slice_axis gets the slice_axis=0 hint.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import SimpleITK
from leak_check import assert_no_leaks, forkserver_children

from data_client import DataNodeClient
from data_client.cli import main
from data_client.errors import InvalidArgumentError
from data_client.jobs import CaseInput, FileArray, JobState
from data_node.config import load
from data_node.server import build_server
from data_tools.medical import Case, import_cases
from data_tools.patches import create_dataset

SPACINGS = [(0.5, 0.5, 2.0), (1.0, 1.0, 3.0), (0.8, 0.8, 1.0)]
SHAPES = [(5, 24, 28), (4, 12, 14), (6, 15, 18)]
OPTIONS = {
    "orientation": "RAS",
    "spacing": (1.0, 1.0),
    "size": (12, 12),
    "normalize": "zscore",
    "keep_unlabelled": 0.5,
    "label_values": [0, 1, 2],
}


def write_data(root):
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(5)
    for i, (spacing, shape) in enumerate(zip(SPACINGS, SHAPES, strict=True)):
        image = rng.normal(100, 30, size=shape).astype(np.float32)
        label = np.zeros(shape, dtype=np.uint8)
        label[1:3, shape[1] // 3 : shape[1] // 2, 4:9] = 1
        label[2, shape[1] // 2 :, 6:10] = 2
        for suffix, array in (("", image), ("_seg", label)):
            volume = SimpleITK.GetImageFromArray(array)
            volume.SetSpacing(spacing)
            SimpleITK.WriteImage(volume, str(data / f"case{i}{suffix}.nii.gz"))
    image = rng.normal(size=SHAPES[0]).astype(np.float32)
    SimpleITK.WriteImage(SimpleITK.GetImageFromArray(image), str(data / "other.nii.gz"))
    SimpleITK.WriteImage(
        SimpleITK.GetImageFromArray(np.zeros((5, 24, 27), np.uint8)), str(data / "narrow.nii.gz")
    )
    SimpleITK.WriteImage(
        SimpleITK.GetImageFromArray(np.full(SHAPES[0], 0.5, np.float32)), str(data / "half.nii.gz")
    )
    with h5py.File(data / "arrays.h5", "w") as file:
        file["image"] = image
        file["mask"] = (image > 0).astype(np.uint8)
    (root / "node.toml").write_text('[node]\nlisten = "127.0.0.1:0"\ndata_root = "data"\n')
    return load(root / "node.toml")


CASES = [CaseInput(f"case{i}.nii.gz", f"case{i}_seg.nii.gz") for i in range(3)]


@pytest.fixture(scope="module")
def import_node(tmp_path_factory):
    root = tmp_path_factory.mktemp("import")
    config = write_data(root)
    with assert_no_leaks(timeout=5, thread_prefix="data_node-jobs"):
        server, port = build_server(config, "127.0.0.1:0")
        server.start()
        yield config, port
        server.stop(None)
    assert forkserver_children() == set()


@pytest.fixture
def client(import_node):
    _, port = import_node
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        yield client


def library_import(config, tmp_path, **options):
    """What import_cases writes for CASES, read back: {array: contents}."""
    cases = [
        Case(config.data_root / c.image, config.data_root / c.label)  # type: ignore[operator]
        for c in CASES
    ]
    import_cases(tmp_path / "expected", cases, **options)
    with h5py.File(tmp_path / "expected" / "cases.h5", "r") as file:
        return {name: file[name][()] for name in file}


def test_an_import_job_is_registered_and_streams_what_import_cases_writes(
    import_node, client, tmp_path
):
    config, _ = import_node
    job = client.submit_import("imported", CASES, register_as="cases", seed=3, **OPTIONS)
    info = job.wait(progress=False)
    assert info.state is JobState.SUCCEEDED, info.error
    assert info.fraction_done == 1.0
    assert [(c.name, c.done) for c in info.cases] == [(f"case{i}", True) for i in range(3)]
    assert [c.slices for c in info.cases] == [5, 4, 6]
    assert info.request.import_cases.slice_axis == 0  # defaults filled in
    expected = library_import(config, tmp_path, seed=3, **OPTIONS)
    assert [c.kept for c in info.cases] == [
        np.count_nonzero(expected["case"] == i) for i in range(3)
    ]
    described = client.describe("cases")
    assert [(a.name, a.shape[1:]) for a in described.arrays] == [
        ("image", (12, 12)),
        ("mask", (12, 12)),
        ("case", ()),
        ("slice", ()),
    ]
    image, mask, case, index = next(iter(client.stream("cases", described.length)))
    np.testing.assert_array_equal(image, expected["image"])
    np.testing.assert_array_equal(mask, expected["mask"])
    np.testing.assert_array_equal(case, expected["case"])
    np.testing.assert_array_equal(index, expected["slice"])
    assert mask.dtype == np.uint8


def test_zarr_output_and_hdf5_array_cases(import_node, client):
    config, _ = import_node
    cases = [
        CaseInput(FileArray("arrays.h5", "image"), FileArray("arrays.h5", "mask"), name="h5"),
        CaseInput("other.nii.gz", "case0_seg.nii.gz"),
    ]
    job = client.submit_import("zarr-import", cases, file_format="zarr", register_as="zarr-cases")
    info = job.wait(progress=False)
    assert info.state is JobState.SUCCEEDED, info.error
    assert [c.name for c in info.cases] == ["h5", "other"]
    assert (config.output_root / "zarr-import" / "cases.zarr").is_dir()
    image, mask, case, _ = next(iter(client.stream("zarr-cases", 10)))
    with h5py.File(config.data_root / "arrays.h5", "r") as file:
        np.testing.assert_array_equal(image[:5], file["image"][()])
        np.testing.assert_array_equal(mask[:5], file["mask"][()])
    np.testing.assert_array_equal(case, np.repeat([0, 1], 5))


def test_an_import_without_labels_serves_no_mask(client):
    cases = [CaseInput("other.nii.gz"), CaseInput("case0.nii.gz")]
    job = client.submit_import("unlabelled", cases, register_as="unlabelled", size=(12, 12))
    info = job.wait(progress=False)
    assert info.state is JobState.SUCCEEDED, info.error
    described = client.describe("unlabelled")
    assert [a.name for a in described.arrays] == ["image", "case", "slice"]
    assert described.length == 10


@pytest.mark.parametrize(
    ("cases", "options", "match"),
    [
        (
            [CASES[0], CaseInput("case1.nii.gz", "narrow.nii.gz", name="bad")],
            {},
            (
                r"import_cases\.cases\[1\]\.label \(case 'bad'\): Expected the image's shape "
                r"\(4, 12, 14\)\. Got shape \(5, 24, 27\) instead\."
            ),
        ),
        (CASES, {"orientation": "RAX"}, "import_cases: Expected orientation to be a 3-letter"),
        (CASES, {"normalize": "zscor"}, "import_cases: Expected normalize to be one of"),
        (CASES, {"keep_unlabelled": 2.0}, "keep_unlabelled to be a fraction"),
        ([], {}, r"import_cases\.cases: Expected 1 to 10000 cases\. Got 0"),
        (CASES, {"file_format": "bcolz"}, "file_format: Expected one of"),
        ([CaseInput("missing.nii.gz")], {}, r"cases\[0\]\.image\.path: Expected an existing"),
    ],
)
def test_bad_import_requests_name_the_field_and_case(client, cases, options, match):
    with pytest.raises(InvalidArgumentError, match=match):
        client.submit_import("bad", cases, **options)
    assert client.datasets()  # still serving


def test_patch_fields_are_refused_with_an_import(import_node):
    from data_wire.v1 import jobs_pb2

    request = jobs_pb2.SubmitBuildJobRequest(output="x", patchsize=3)
    request.import_cases.cases.add().image.path = "case0.nii.gz"
    _, port = import_node
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        stub_call = client._call  # the raw request: the client API has no such mix
        with pytest.raises(InvalidArgumentError, match="patchsize: Expected none with import"):
            stub_call("SubmitBuildJob", request)


def test_a_case_the_job_cannot_use_fails_the_job_naming_it(import_node, client):
    config, _ = import_node
    cases = [CASES[0], CaseInput("other.nii.gz", "half.nii.gz", name="halves")]
    info = client.submit_import("failing", cases, register_as="failing").wait(progress=False)
    assert info.state is JobState.FAILED
    assert "cases[1].label (case 'halves'): Expected integer class values" in info.error
    assert [c.done for c in info.cases] == [True, False]
    assert not (config.output_root / "failing").exists()
    assert "failing" not in client.datasets()


def test_cli_imports_and_reports_cases(import_node, capsys):
    _, port = import_node
    cases = [arg for i in range(3) for arg in ("--case", f"case{i}.nii.gz,case{i}_seg.nii.gz")]
    argv = ["import", "--address", f"127.0.0.1:{port}", "--output", "cli-import", *cases]
    status = main([*argv, "--spacing", "1", "1", "--size", "10", "10", "--keep-unlabelled", "0"])
    assert status == 0
    out = capsys.readouterr().out
    assert "succeeded" in out
    assert "cases=3/3" in out
    build = ["build", *argv[1:3], "--output", "cli-masks", "--patchsize", "3", "--slice-axis", "0"]
    inputs = ["--volume", "arrays.h5:image", "--mask", "arrays.h5:mask", "--store-masks"]
    assert main([*build, *inputs, "--max-patches-per-class", "5"]) == 0
    assert "class_1=5/5" in capsys.readouterr().out
    with h5py.File(import_node[0].output_root / "cli-masks" / "patches.h5", "r") as file:
        assert file["mask_1"].shape == (5, 1, 3, 3)


def test_an_imported_dataset_is_served_again_after_a_restart(tmp_path):
    config = write_data(tmp_path)
    with assert_no_leaks(timeout=5, thread_prefix="data_node-jobs"):
        for restart in (False, True):
            server, port = build_server(config, "127.0.0.1:0")
            server.start()
            with DataNodeClient(f"127.0.0.1:{port}") as client:
                if not restart:
                    job = client.submit_import("kept", CASES, register_as="kept", size=(8, 8))
                    assert job.wait(progress=False).state is JobState.SUCCEEDED
                image, _, case, _ = next(iter(client.stream("kept", 15)))
                assert image.shape == (15, 8, 8)
                np.testing.assert_array_equal(case, np.repeat([0, 1, 2], [5, 4, 6]))
                (info,) = client.jobs()
                assert [c.kept for c in info.cases] == [5, 4, 6]
            server.stop(None)


# ----------------------------------------------------------------- mask patches through a node


def test_a_build_with_store_masks_serves_patch_mask_label_triples(import_node, client, tmp_path):
    config, _ = import_node
    job = client.submit_build(
        "masks",
        3,
        FileArray("arrays.h5", "image"),
        FileArray("arrays.h5", "mask"),
        random_order=False,
        slice_axis=0,
        store_masks=True,
        register_as="mask-patches",
    )
    info = job.wait(progress=False)
    assert info.state is JobState.SUCCEEDED, info.error
    with h5py.File(config.data_root / "arrays.h5", "r") as file:
        image, mask = file["image"][()], file["mask"][()]
    create_dataset(tmp_path, 3, image, mask, random_order=False, slice_axis=0, store_masks=True)
    with h5py.File(tmp_path / "patches.h5", "r") as file:
        expected = {name: file[name][()] for name in file}
    counts = {v: np.count_nonzero(mask == v) for v in (0, 1)}
    assert [(c.value, c.total, c.total_bytes) for c in info.classes] == [
        (v, n, n * 9 * (4 + 1)) for v, n in counts.items()
    ]
    described = client.describe("mask-patches")
    assert [a.name for a in described.arrays] == ["patch", "mask", "label"]
    patches, masks, labels = next(iter(client.stream("mask-patches", described.length)))
    np.testing.assert_array_equal(
        patches, np.concatenate([expected["class_0"], expected["class_1"]])
    )
    np.testing.assert_array_equal(masks, np.concatenate([expected["mask_0"], expected["mask_1"]]))
    np.testing.assert_array_equal(labels, np.repeat([0, 1], list(counts.values())))
    assert masks.dtype == np.uint8
    assert (masks[:, 0, 1, 1] == labels).all()  # the centre pixel of a mask patch is its class


def test_store_masks_needs_a_mask_and_the_local_executor(client):
    with pytest.raises(InvalidArgumentError, match="store_masks: Expected a mask"):
        client.submit_build("x", 3, "other.nii.gz", store_masks=True, slice_axis=0)
    with pytest.raises(InvalidArgumentError, match="store_masks: Expected executor 'local'"):
        client.submit_build(
            "x",
            3,
            "other.nii.gz",
            "case0_seg.nii.gz",
            store_masks=True,
            slice_axis=0,
            file_format="zarr",
            executor="dask",
            scheduler_address="tcp://127.0.0.1:1",
        )


def test_a_medical_image_gets_the_slice_axis_hint(import_node, client, capsys):
    # A (5, 24, 28) image cut along x has 5x24 slices: a patch of 8 does not fit.
    with (
        pytest.warns(UserWarning, match="Pass slice_axis=0 to cut its axial slices"),
        pytest.raises(InvalidArgumentError, match="slice_axis=0 cuts its axial slices"),
    ):
        client.submit_build("x", 8, "other.nii.gz")
    _, port = import_node
    argv = ["build", "--address", f"127.0.0.1:{port}", "--output", "hint", "--patchsize", "8"]
    with pytest.warns(UserWarning, match="slice_axis=0"):
        assert main([*argv, "--volume", "other.nii.gz"]) == 1
    assert "slice_axis=0 cuts its axial slices" in capsys.readouterr().err


def test_a_build_from_a_medical_image_keeps_its_spacing(import_node, client):
    config, _ = import_node
    job = client.submit_build(
        "spaced", 3, "case0.nii.gz", max_patches_per_class=10, slice_axis=0, seed=1
    )
    assert job.wait(progress=False).state is JobState.SUCCEEDED
    with h5py.File(config.output_root / "spaced" / "patches.h5", "r") as file:
        np.testing.assert_allclose(file["class_0"].attrs["spacing"], SPACINGS[0])

"""Build requests are checked field by field; job records persist in SQLite.

parse_build_request matrix: inputs from an HDF5 key, a zarr array (store root and group
key), a NIfTI image (SimpleITK) and a served dataset's array; defaults filled into the
accepted request (random_order, batchsize, file_format, slice_axis, seed, executor);
dask from the node config; overwrite of an existing output. Refusals, each naming the
field: no volume; input paths outside the data root ("..", absolute, symlink); missing
file, unknown suffix, missing / needless / unknown key; unknown dataset (NOT_FOUND) or
array; 1D, empty and complex volumes; mask shape; patchsize <= 0 and larger than the slices (with
slice_axis); slice_axis; class_list without mask / repeated; negative batchsize and
max_patches_per_class; unknown file_format, bad / unknown writer_options; executor,
scheduler_address, dask without zarr; output empty, outside the output root ("..",
absolute, symlink), the root itself, the staging dir, existing without overwrite;
register_as naming a configured dataset. Generated requests (extreme integers, NUL bytes,
long and odd strings, deep JSON) are accepted or refused with a NodeError naming a field.
Imports (import_cases): defaults and spec; patch-only fields and bad output fields refused;
each case checked (label shape and dtype, suffix, path outside the root) with the case named;
options checked by the library's parser.

JobStore matrix: insert, update and load in submission order across reopening; a version 1
database is migrated (replaced_by added); publish intents persist until ended, and ending one
updates the job and marks the job it replaces in one transaction; a database of another
schema version is refused.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_node.catalog.datasets import DatasetRegistry
from data_node.config import parse_config
from data_node.errors import (
    DatasetNotFoundError,
    NodeError,
    PathOutsideRootError,
    RequestError,
)
from data_node.jobs._store import JobRecord, JobStore, PublishIntent
from data_node.jobs.manager import parse_build_request
from data_wire.v1 import jobs_pb2

VOLUME = np.random.default_rng(3).random((4, 10, 12), dtype=np.float32)
MASK = (VOLUME * 3).astype(np.uint8)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    data = root / "data"
    data.mkdir()
    with h5py.File(data / "vol.h5", "w") as file:
        file["image"] = VOLUME
        file["mask"] = MASK
        file["flat"] = VOLUME.reshape(-1)
        file["complex"] = VOLUME.astype(np.complex64)
        file["narrow"] = VOLUME[:, :, :11]
        file["empty"] = VOLUME[:0]
    zarr.save_array(str(data / "vol.zarr"), VOLUME)
    zarr.open_group(str(data / "group.zarr"), mode="w").create_array("image", data=VOLUME)
    SimpleITK.WriteImage(SimpleITK.GetImageFromArray(VOLUME), str(data / "vol.nii.gz"))
    (data / "notes.txt").write_text("not an array")
    outside = root / "outside"
    outside.mkdir()
    (outside / "x.h5").touch()
    (data / "escape.h5").symlink_to(outside / "x.h5")
    (root / "outputs" / "existing").mkdir(parents=True)
    (root / "outputs" / "link").symlink_to(outside)
    return root


def node_config(root, **jobs):
    raw = {
        "node": {"data_root": "data"},
        "jobs": jobs,
        "datasets": {
            "vols": {
                "arrays": {
                    "image": {"path": "vol.h5", "key": "image"},
                    "mask": {"path": "vol.h5", "key": "mask"},
                }
            }
        },
    }
    return parse_config(raw, base_dir=root)


@pytest.fixture(scope="module")
def node(root):
    config = node_config(root)
    return config, DatasetRegistry.from_config(config.datasets)


def file_input(path, key=""):
    return jobs_pb2.ArrayInput(file=jobs_pb2.FileArray(path=path, key=key))


def request(**fields):
    base = {
        "volume": file_input("vol.h5", "image"),
        "mask": file_input("vol.h5", "mask"),
        "patchsize": 3,
        "output": "out",
    }
    return jobs_pb2.SubmitBuildJobRequest(**(base | fields))


def test_defaults_are_filled_in(node):
    config, registry = node
    plan = parse_build_request(request(class_list=[2, 0]), config, registry)
    accepted = plan.request
    assert accepted.random_order is True
    assert (accepted.batchsize, accepted.file_format, accepted.slice_axis) == (32, "hdf5", -1)
    assert accepted.HasField("seed")
    assert (accepted.executor, accepted.scheduler_address) == ("local", "")
    spec = plan.spec
    assert (spec.patchsize, spec.class_list, spec.seed) == (3, (2, 0), accepted.seed)
    assert spec.max_patches_per_class is None
    assert plan.output == config.output_root / "out"
    np.testing.assert_array_equal(spec.volume.read(), VOLUME)
    np.testing.assert_array_equal(spec.mask.read(), MASK)


def test_given_values_are_kept(node):
    config, registry = node
    fields = {
        "random_order": False,
        "batchsize": 5,
        "max_patches_per_class": 7,
        "file_format": "zarr",
        "writer_options": '{"chunks": [5, 1, 3, 3]}',
        "slice_axis": 0,
        "seed": 11,
        "output": "existing",
        "overwrite": True,
        "register_as": "built",
    }
    plan = parse_build_request(request(**fields), config, registry)
    spec = plan.spec
    assert (spec.random_order, spec.batchsize, spec.max_patches_per_class) == (False, 5, 7)
    assert (spec.file_format, spec.slice_axis, spec.seed) == ("zarr", 0, 11)
    assert spec.writer_options == {"chunks": [5, 1, 3, 3]}
    assert (plan.register_as, plan.overwrite) == ("built", True)


@pytest.mark.parametrize(
    "volume",
    [
        file_input("vol.zarr"),
        file_input("group.zarr", "image"),
        file_input("vol.nii.gz"),
        jobs_pb2.ArrayInput(dataset_array=jobs_pb2.DatasetArray(dataset="vols", array="image")),
    ],
    ids=["zarr-root", "zarr-group", "nifti", "dataset-array"],
)
def test_every_kind_of_input_reads_the_volume(node, volume):
    config, registry = node
    plan = parse_build_request(request(volume=volume), config, registry)
    assert plan.spec.volume.describe()[0] == VOLUME.shape
    np.testing.assert_allclose(plan.spec.volume.read(), VOLUME)


def test_dask_executor_from_the_node_config(root):
    config = node_config(root, executor="dask", scheduler_address="tcp://127.0.0.1:1")
    registry = DatasetRegistry()
    plan = parse_build_request(request(file_format="zarr", mask=None), config, registry)
    assert (plan.spec.executor, plan.spec.scheduler_address) == ("dask", "tcp://127.0.0.1:1")
    assert plan.request.scheduler_address == "tcp://127.0.0.1:1"


def without_volume():
    message = request()
    message.ClearField("volume")
    return message


@pytest.mark.parametrize(
    ("message", "error", "pattern"),
    [
        (without_volume(), RequestError, r"^volume: Expected a dataset_array or a file"),
        (
            request(volume=file_input("../outside/x.h5", "a")),
            PathOutsideRootError,
            r"^volume\.file\.path: Expected a path inside",
        ),
        (
            request(mask=file_input("/etc/hostname", "a")),
            PathOutsideRootError,
            r"^mask\.file\.path: .* Got '/etc/hostname', which resolves outside it, instead\.$",
        ),
        (
            request(volume=file_input("escape.h5", "a")),
            PathOutsideRootError,
            r"^volume\.file\.path: .*'escape\.h5'",
        ),
        (
            request(volume=file_input("nope.h5", "a")),
            RequestError,
            r"^volume\.file\.path: Expected an existing file",
        ),
        (
            request(volume=file_input("notes.txt")),
            RequestError,
            r"^volume\.file\.path: Expected a name ending in one of \['\.bcolz'",
        ),
        (request(volume=file_input("vol.h5")), RequestError, r"^volume\.file\.key: Expected the"),
        (
            request(volume=file_input("vol.nii.gz", "x")),
            RequestError,
            r"^volume\.file\.key: Expected none",
        ),
        (
            request(volume=file_input("vol.h5", "nope")),
            RequestError,
            r"^volume: Expected a readable array",
        ),
        (
            request(
                volume=jobs_pb2.ArrayInput(
                    dataset_array=jobs_pb2.DatasetArray(dataset="vol", array="image")
                )
            ),
            DatasetNotFoundError,
            r"^volume\.dataset_array\.dataset: Expected one of \['vols'\].*Did you mean 'vols'",
        ),
        (
            request(
                mask=jobs_pb2.ArrayInput(
                    dataset_array=jobs_pb2.DatasetArray(dataset="vols", array="label")
                )
            ),
            RequestError,
            r"^mask\.dataset_array\.array: Expected one of \['image', 'mask'\]",
        ),
        (
            request(volume=file_input("vol.h5", "flat"), mask=None),
            RequestError,
            r"^volume: Expected a 2D slice or a 3D volume of at least one pixel\. .*\(480,\)",
        ),
        (
            request(volume=file_input("vol.h5", "empty"), mask=None),
            RequestError,
            r"^volume: Expected a 2D slice .* Got an array of shape \(0, 10, 12\)",
        ),
        (
            request(volume=file_input("vol.h5", "complex")),
            RequestError,
            r"^volume: Expected real numbers or bools. Got dtype complex64",
        ),
        (
            request(mask=file_input("vol.h5", "narrow")),
            RequestError,
            r"^mask: Expected the shape of volume, \(4, 10, 12\). Got shape \(4, 10, 11\)",
        ),
        (request(patchsize=0), RequestError, r"^patchsize: Expected an integer >= 1. Got 0"),
        (request(patchsize=-2), RequestError, r"^patchsize: Expected an integer >= 1"),
        (request(patchsize=5), RequestError, r"^patchsize: Expected at most 4, .* 4x10 slices"),
        (
            request(patchsize=11, slice_axis=0),
            RequestError,
            r"^patchsize: Expected at most 10, .* 10x12 slices",
        ),
        (request(slice_axis=3), RequestError, r"^slice_axis: Expected an axis"),
        (
            request(mask=None, class_list=[1]),
            RequestError,
            r"^class_list: Expected none without a mask",
        ),
        (request(class_list=[1, 1]), RequestError, r"^class_list: Expected distinct values"),
        (request(batchsize=-1), RequestError, r"^batchsize: Expected an integer >= 0"),
        (
            request(max_patches_per_class=-5),
            RequestError,
            r"^max_patches_per_class: Expected an integer >= 0",
        ),
        (request(file_format="hdf"), RequestError, r"^file_format: .*Did you mean 'hdf5'\?"),
        (request(file_format="npy"), RequestError, r"^file_format: Expected one of \['bcolz'"),
        (
            request(writer_options="{"),
            RequestError,
            r"^writer_options: Expected a JSON object. Got invalid JSON",
        ),
        (request(writer_options="[1]"), RequestError, r"^writer_options: Expected a JSON object"),
        (
            request(writer_options='{"external": [["/tmp/x", 0, 100]]}'),
            RequestError,
            r"^writer_options: Expected keys among \['chunks', 'compression'",
        ),
        (
            request(writer_options='{"compresion": "gzip"}'),
            RequestError,
            r"^writer_options: .*Did you mean 'compression'\?",
        ),
        (request(executor="dusk"), RequestError, r"^executor: .*Did you mean 'dask'\?"),
        (request(executor="dask"), RequestError, r"^scheduler_address: Expected the Dask"),
        (
            request(executor="dask", scheduler_address="tcp://127.0.0.1:1"),
            RequestError,
            r"^file_format: Expected 'zarr' with executor 'dask'",
        ),
        (request(output=""), RequestError, r"^output: Expected a directory name"),
        (request(output="../x"), PathOutsideRootError, r"^output: Expected a path inside"),
        (request(output="/tmp/x"), PathOutsideRootError, r"^output: .*resolves to '/tmp/x'"),
        (request(output="link/x"), PathOutsideRootError, r"^output: .*'link/x'"),
        (request(output="."), RequestError, r"^output: Expected a name inside the output root"),
        (request(output=".jobs/x"), RequestError, r"^output: .*other than '\.jobs'"),
        (request(output="existing"), RequestError, r"^output: Expected a new name, or overwrite"),
        (request(register_as="vols"), RequestError, r"^register_as: Expected a name other than"),
    ],
)
def test_refusals_name_the_field(node, message, error, pattern):
    config, registry = node
    with pytest.raises(error, match=pattern):
        parse_build_request(message, config, registry)


def record(job_id, state="QUEUED", **fields):
    return JobRecord(job_id=job_id, state=state, request=b"\x08\x01", created_at=1.0, **fields)


def test_store_round_trip_across_reopening(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    store.insert(record("b"))
    store.insert(record("a"))
    done = record("b", "SUCCEEDED", started_at=2.0, ended_at=3.5, classes=((0, 4, 4), (-1, 2, 2)))
    store.update(done)
    store.close()
    store = JobStore(path)
    assert store.load() == [done, record("a")]
    store.close()


def test_store_migrates_a_version_1_database(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    connection = sqlite3.connect(path)
    connection.execute(
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT UNIQUE NOT NULL, "
        "state TEXT NOT NULL, request BLOB NOT NULL, created_at REAL NOT NULL, "
        "started_at REAL NOT NULL, ended_at REAL NOT NULL, classes TEXT NOT NULL, "
        "error TEXT NOT NULL)"
    )
    connection.execute(
        "INSERT INTO jobs (job_id, state, request, created_at, started_at, ended_at, classes, "
        "error) VALUES ('old', 'SUCCEEDED', x'0801', 1.0, 2.0, 3.0, '[[0, 4, 4]]', '')"
    )
    connection.execute("PRAGMA user_version = 1")
    connection.commit()
    connection.close()
    store = JobStore(path)
    done = record("old", "SUCCEEDED", started_at=2.0, ended_at=3.0, classes=((0, 4, 4),))
    assert store.load() == [done]
    store.insert(record("new", "RUNNING"))
    store.end_publish(record("new", "SUCCEEDED"), replaces="old")
    assert store.load() == [
        record(
            "old",
            "SUCCEEDED",
            started_at=2.0,
            ended_at=3.0,
            classes=((0, 4, 4),),
            replaced_by="new",
        ),
        record("new", "SUCCEEDED"),
    ]
    store.close()


def test_store_journals_publishes_until_they_end(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    store.insert(record("a", "RUNNING"))
    intent = PublishIntent("a", "x/out", "", {2: 5, 0: 3})
    store.begin_publish(intent)
    store.close()
    store = JobStore(path)
    assert store.intents() == [intent]
    store.end_publish(record("a", "FAILED", error="rolled back"))
    assert store.intents() == []
    assert store.load() == [record("a", "FAILED", error="rolled back")]
    store.close()


def test_store_refuses_another_schema_version(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA user_version = 99")
    connection.close()
    with pytest.raises(sqlite3.DatabaseError, match=r"version 2 .* Got version 99"):
        JobStore(path)


def test_input_paths_resolve_inside_the_data_root(node):
    config, registry = node
    plan = parse_build_request(
        request(volume=file_input("sub/../vol.h5", "image")), config, registry
    )
    assert plan.spec.volume.source.path == Path(config.data_root) / "vol.h5"


FIELDS = (
    "volume",
    "mask",
    "patchsize",
    "class_list",
    "batchsize",
    "max_patches_per_class",
    "file_format",
    "writer_options",
    "output",
    "register_as",
    "slice_axis",
    "executor",
    "scheduler_address",
)
int64 = st.integers(-(2**63), 2**63 - 1) | st.integers(-2, 12)
texts = st.text(max_size=40) | st.sampled_from(["\0", "a" * 5000, "é/../x", "[" * 5000])


def maybe(values):
    return st.sampled_from(values) | texts


inputs = (
    st.none()
    | st.builds(
        lambda path, key: file_input(path, key),
        maybe(["vol.h5", "vol.zarr", "group.zarr", "vol.nii.gz", "notes.txt", "escape.h5", "../x"]),
        maybe(["image", "mask", "flat", "", "complex", "narrow"]),
    )
    | st.builds(
        lambda dataset, array: jobs_pb2.ArrayInput(
            dataset_array=jobs_pb2.DatasetArray(dataset=dataset, array=array)
        ),
        maybe(["vols"]),
        maybe(["image", "mask"]),
    )
)


@st.composite
def requests(draw):
    message = jobs_pb2.SubmitBuildJobRequest(
        patchsize=draw(int64),
        class_list=draw(st.lists(int64, max_size=3)),
        batchsize=draw(int64),
        max_patches_per_class=draw(int64),
        file_format=draw(maybe(["hdf5", "zarr", "bcolz", ""])),
        writer_options=draw(maybe(["", "{", '{"chunks": [2, 1, 3, 3]}', '{"cparams": 1}'])),
        output=draw(maybe(["out", "", ".", ".jobs/x", "existing", "link/x", "/tmp/x"])),
        register_as=draw(maybe(["", "vols", "new"])),
        overwrite=draw(st.booleans()),
        executor=draw(maybe(["", "local", "dask"])),
        scheduler_address=draw(maybe(["", "tcp://127.0.0.1:1"])),
    )
    for name in ("volume", "mask"):
        value = draw(inputs)
        if value is not None:
            getattr(message, name).CopyFrom(value)
    if draw(st.booleans()):
        message.slice_axis = draw(st.integers(-(2**31), 2**31 - 1) | st.integers(-4, 3))
    if draw(st.booleans()):
        message.random_order = draw(st.booleans())
    return message


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=requests())
def test_generated_requests_are_accepted_or_refused_naming_a_field(node, message):
    config, registry = node
    refusal = None
    try:
        parse_build_request(message, config, registry)
    except NodeError as error:
        refusal = str(error)
    assert refusal is None or refusal.startswith(FIELDS), refusal


# ----------------------------------------------------------------- import requests


def import_request(*cases, **fields):
    message = jobs_pb2.SubmitBuildJobRequest(output="imported", **fields)
    for image, label, name in cases or [("vol.nii.gz", ("vol.h5", "mask"), "")]:
        case = message.import_cases.cases.add(name=name)
        case.image.path = image
        if label is not None:
            case.label.path, case.label.key = label
    return message


def test_an_import_gets_its_defaults_and_spec(node):
    config, registry = node
    plan = parse_build_request(import_request(), config, registry)
    accepted = plan.request
    assert (accepted.file_format, accepted.batchsize) == ("hdf5", 32)
    assert accepted.HasField("seed")
    assert accepted.import_cases.slice_axis == 0
    assert (accepted.import_cases.normalize, accepted.import_cases.keep_unlabelled) == ("none", 1)
    (case,) = plan.spec.cases
    assert case.image.image == config.data_root / "vol.nii.gz"
    assert case.label.source.key == "mask"
    assert plan.spec.options["orientation"] is None
    assert plan.output == config.output_root / "imported"


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"patchsize": 3}, "patchsize: Expected none with import_cases"),
        ({"store_masks": True}, "store_masks: Expected none with import_cases"),
        ({"slice_axis": 0}, "slice_axis: Expected none with import_cases"),
        ({"volume": file_input("vol.h5", "image")}, "volume: Expected none with import_cases"),
        ({"file_format": "bcolz"}, "file_format: Expected one of"),
        ({"writer_options": '{"cparams": {}}'}, "writer_options: Expected keys among"),
        ({"output": ""}, "output: Expected a directory name"),
    ],
)
def test_an_import_refuses_patch_fields_and_bad_output_fields(node, fields, match):
    config, registry = node
    message = import_request()
    for name, value in fields.items():
        if isinstance(value, jobs_pb2.ArrayInput):
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    with pytest.raises(RequestError, match=match):
        parse_build_request(message, config, registry)


@pytest.mark.parametrize(
    ("cases", "match"),
    [
        (
            [("vol.nii.gz", ("vol.h5", "narrow"), "c")],
            r"import_cases\.cases\[0\]\.label \(case 'c'\): Expected the image's shape \(4, 10, 12\)",
        ),
        (
            [("vol.nii.gz", ("vol.h5", "complex"), "")],
            r"cases\[0\]\.label \(case 'vol.nii.gz'\): Expected integer class values",
        ),
        ([("notes.txt", None, "")], r"import_cases\.cases\[0\]\.image\.path: Expected a name"),
        ([("../x.nii", None, "")], None),
    ],
)
def test_an_import_checks_each_case(node, cases, match):
    config, registry = node
    error = PathOutsideRootError if match is None else RequestError
    with pytest.raises(error, match=match):
        parse_build_request(import_request(*cases), config, registry)


def test_an_import_checks_its_options(node):
    config, registry = node
    message = import_request()
    message.import_cases.orientation = "XYZ"
    with pytest.raises(RequestError, match="import_cases: Expected orientation to be a 3-letter"):
        parse_build_request(message, config, registry)
    message = import_request()
    message.import_cases.spacing[:] = [1.0]
    with pytest.raises(RequestError, match="import_cases: Expected spacing to be two numbers"):
        parse_build_request(message, config, registry)

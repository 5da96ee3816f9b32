"""Confinement by content over a real node: nothing outside the data root reaches a client.

Matrix: escapes (HDF5 external link, virtual dataset, external raw storage; zarr array
directory symlinked out; .mhd with an absolute ElementDataFile) x (served by the config:
the node refuses to start, naming the key and the file relative to the data root, and
``data-node serve`` exits 2; a build job's input: PERMISSION_DENIED at submit); an input
named through a symlink out (no server path in the message); a zarr chunk symlinked out x (served, streamed
in the node's threads and in worker processes: PERMISSION_DENIED; a job's file input and a
served dataset's array as job input: the job FAILS naming the chunk); a served HDF5 file
and zarr array directory swapped for a symlink after the node started x (threads,
processes): refused; job inputs (HDF5, zarr, .mhd data file, a served dataset's file)
swapped for symlinks after the job was accepted: the job FAILS, nothing is registered.
Every refusal: no 777 (the outside value) in any batch, no absolute path in any message,
and the node keeps serving.
"""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
from confine_support import (
    ESCAPES,
    INSIDE,
    MHD_ABSOLUTE,
    swap_for_symlink,
    write_escapes,
    write_inside_zarr,
    write_mhd,
)
from leak_check import assert_no_leaks, forkserver_children

from data_client import DataNodeClient
from data_client.errors import FailedPreconditionError, NotFoundError, PermissionDeniedError
from data_client.jobs import DatasetArray, FileArray, JobState
from data_node.cli import main
from data_node.config import load
from data_node.errors import PathOutsideRootError
from data_node.server import build_server

WORKERS = {"nb_proc_workers": 2, "nb_io_workers": 1}
UNREACHABLE = "tcp://127.0.0.1:1"
STARTUP_ESCAPES = [name for name in ESCAPES if name != "zarr-chunk-symlink"]
CONFIG = """
[node]
listen = "127.0.0.1:0"
data_root = "data"
[jobs]
max_concurrent_jobs = 1
[cache]
max_bytes = {cache}
[datasets.inside.arrays]
image = {{ path = "inside.h5", key = "image" }}
"""


def write_tree(root):
    """The escapes, inside.h5, and the files the swap tests swap."""
    data = root / "data"
    write_escapes(data, root / "outside")
    for name in ("inside.h5", "swap.h5", "jobswap.h5", "jobswap_served.h5"):
        with h5py.File(data / name, "w") as file:
            file["image"] = INSIDE
    for name in ("swap.zarr", "jobswap.zarr"):
        write_inside_zarr(data / name)
    INSIDE.tofile(data / "jobswap.raw")
    write_mhd(data / "jobswap.mhd", "jobswap.raw")


def write_config(root, datasets="", cache=0):
    path = root / "node.toml"
    path.write_text(CONFIG.format(cache=cache) + datasets)
    return path


def dataset(name, path, key="image"):
    return f'[datasets.{name}.arrays]\nimage = {{ path = "{path}", key = "{key}" }}\n'


@pytest.fixture(scope="module")
def confined_node(tmp_path_factory):
    """A node (chunk cache on) serving a chunk symlinked out and a file later swapped."""
    root = tmp_path_factory.mktemp("confined")
    write_tree(root)
    datasets = dataset("chunks", "chunklink.zarr") + dataset("jobswap", "jobswap_served.h5")
    config = load(write_config(root, datasets, cache=1 << 24))
    with assert_no_leaks(timeout=5, thread_prefix="data_node-jobs"):
        server, port = build_server(config, "127.0.0.1:0")
        server.start()
        with DataNodeClient(f"127.0.0.1:{port}") as client:
            yield root, client
        server.stop(None)
    assert forkserver_children() == set()


def assert_no_server_path(error, root):
    assert str(root) not in str(error), str(error)


def assert_still_serving(client):
    (image,) = next(iter(client.stream("inside", 2)))
    np.testing.assert_array_equal(image, INSIDE[:2])


def read_all(stream, seen):
    """Read ``stream`` to its end, keeping every batch's arrays in ``seen``."""
    for batch in stream:
        seen.extend(batch)


def assert_no_secret(seen):
    assert all(not (array == 777).any() for array in seen)


# ---------------------------------------------------------------- served by the config


@pytest.mark.parametrize("name", STARTUP_ESCAPES)
def test_an_escape_in_the_config_stops_the_node_from_starting(tmp_path, name):
    write_tree(tmp_path)
    filename, key = ESCAPES[name]
    config = load(write_config(tmp_path, dataset("leak", filename, key)))
    pattern = rf"datasets\.leak\.arrays\.image\[0\]: Expected '{re.escape(filename)}(/|')"
    with pytest.raises(PathOutsideRootError, match=pattern) as error:
        build_server(config, "127.0.0.1:0")
    assert "read only from inside the data root" in str(error.value)
    assert_no_server_path(error.value, tmp_path)


def test_data_node_serve_exits_2_naming_the_escape(tmp_path, capsys):
    write_tree(tmp_path)
    config = write_config(tmp_path, dataset("leak", "virtual.h5"))
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "datasets.leak.arrays.image[0]: Expected 'virtual.h5' to read only from" in err
    assert "Got 'image', an HDF5 virtual dataset, instead." in err


@pytest.mark.parametrize("workers", [{}, WORKERS], ids=["threads", "processes"])
def test_a_served_chunk_symlinked_out_is_refused_when_read(confined_node, workers):
    root, client = confined_node
    seen = []
    pattern = r"'chunklink\.zarr/image/c/0/0/0' to read only from inside the data root"
    with pytest.raises(PermissionDeniedError, match=pattern) as error:
        read_all(client.stream("chunks", 2, max_reconnects=0, **workers), seen)
    assert_no_secret(seen)
    assert_no_server_path(error.value, root)
    assert_still_serving(client)


# ---------------------------------------------------------------- job inputs


@pytest.mark.parametrize("name", [*STARTUP_ESCAPES, "mhd-absolute"])
def test_an_escape_as_a_job_input_is_refused_at_submit(confined_node, name):
    root, client = confined_node
    filename, key = ESCAPES.get(name, (MHD_ABSOLUTE, ""))
    pattern = rf"volume: Expected '{re.escape(filename)}(/|')"
    with pytest.raises(PermissionDeniedError, match=pattern) as error:
        client.submit_build(
            f"escape-{name}", 3, FileArray(filename, key), register_as=name, slice_axis=0
        )
    assert_no_server_path(error.value, root)
    assert all(info.request.output != f"escape-{name}" for info in client.jobs())
    assert_still_serving(client)


def test_an_input_named_through_a_symlink_out_is_refused_without_server_paths(confined_node):
    root, client = confined_node
    (root / "data" / "named.h5").symlink_to(root / "outside" / "secret.h5")
    with pytest.raises(PermissionDeniedError) as error:
        client.submit_build("named", 3, FileArray("named.h5", "image"))
    assert str(error.value).endswith(
        "volume.file.path: Expected a path inside the data root. "
        "Got 'named.h5', which resolves outside it, instead."
    )
    assert_no_server_path(error.value, root)


@pytest.mark.parametrize(
    "volume",
    [FileArray("chunklink.zarr", "image"), DatasetArray("chunks", "image")],
    ids=["file", "dataset_array"],
)
def test_a_chunk_symlinked_out_fails_the_job_that_reads_it(confined_node, volume):
    root, client = confined_node
    name = f"chunk-{type(volume).__name__}"
    info = client.submit_build(name, 3, volume, register_as=name).wait(progress=False)
    assert info.state is JobState.FAILED
    assert "ConfinementError: Expected 'chunklink.zarr/image/c/0/0/0'" in info.error
    assert_no_server_path(info.error, root)
    with pytest.raises(NotFoundError):
        client.describe(name)
    assert_still_serving(client)


def test_inputs_swapped_for_symlinks_after_the_job_was_accepted_fail_it(confined_node):
    root, client = confined_node
    data, outside = root / "data", root / "outside"
    blocker = client.submit_build(
        "blocker",
        3,
        FileArray("inside.h5", "image"),
        file_format="zarr",
        executor="dask",
        scheduler_address=UNREACHABLE,
    )  # holds the only job slot (it waits for a scheduler) until cancelled
    inputs = {
        "hdf5": (FileArray("jobswap.h5", "image"), "'jobswap.h5'"),
        "zarr": (FileArray("jobswap.zarr", "image"), "'jobswap.zarr/image/"),
        "mhd": (FileArray("jobswap.mhd"), "'jobswap.mhd'"),
        "served": (DatasetArray("jobswap", "image"), "'jobswap_served.h5'"),
    }
    jobs = {
        kind: client.submit_build(
            f"swapped-{kind}",
            3,
            volume,
            register_as=f"swapped-{kind}",
            slice_axis=0 if kind == "mhd" else -1,  # a medical image's axial slices
        )
        for kind, (volume, _) in inputs.items()
    }
    assert {job.status().state for job in jobs.values()} == {JobState.QUEUED}
    swap_for_symlink(data / "jobswap.h5", outside / "secret.h5")
    swap_for_symlink(data / "jobswap.zarr" / "image", outside / "secret.zarr" / "image")
    swap_for_symlink(data / "jobswap.raw", outside / "secret.raw")
    swap_for_symlink(data / "jobswap_served.h5", outside / "secret.h5")
    assert blocker.cancel().state is JobState.CANCELLED
    for kind, job in jobs.items():
        info = job.wait(progress=False)
        assert info.state is JobState.FAILED, kind
        assert "ConfinementError: Expected " + inputs[kind][1] in info.error
        assert_no_server_path(info.error, root)
        with pytest.raises(NotFoundError):
            client.describe(f"swapped-{kind}")
    assert_still_serving(client)


# ---------------------------------------------------------------- swapped while served


@pytest.fixture
def swap_node(tmp_path):
    """A node of its own (its files get swapped), without the chunk cache."""
    write_tree(tmp_path)
    datasets = dataset("swap_h5", "swap.h5") + dataset("swap_zarr", "swap.zarr")
    server, port = build_server(load(write_config(tmp_path, datasets)), "127.0.0.1:0")
    server.start()
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        yield tmp_path, client
    server.stop(None)


@pytest.mark.parametrize(
    ("name", "swapped", "target"),
    [
        ("swap_h5", "swap.h5", "secret.h5"),
        ("swap_zarr", "swap.zarr/image", "secret.zarr/image"),
    ],
    ids=["hdf5-file", "zarr-array-dir"],
)
@pytest.mark.parametrize("workers", [{}, WORKERS], ids=["threads", "processes"])
def test_a_served_file_swapped_for_a_symlink_after_start_is_refused(
    swap_node, name, swapped, target, workers
):
    root, client = swap_node
    (image,) = next(iter(client.stream(name, 2, **workers)))
    np.testing.assert_array_equal(image, INSIDE[:2])
    swap_for_symlink(root / "data" / swapped, root / "outside" / target)
    seen, errors = [], []
    # The node's own HDF5 handle, open since the start, first notices the file changed
    # (FAILED_PRECONDITION); reopening it is then refused, as any reopen in a worker is.
    while not errors or (isinstance(errors[-1], FailedPreconditionError) and len(errors) < 2):
        with pytest.raises((FailedPreconditionError, PermissionDeniedError)) as error:
            read_all(client.stream(name, 2, max_reconnects=0, **workers), seen)
        errors.append(error.value)
    *changed, refused = errors
    assert all("changed while open" in str(error) for error in changed)
    assert isinstance(refused, PermissionDeniedError), refused
    assert f"Expected '{swapped}" in str(refused)
    assert_no_server_path(refused, root)
    assert_no_secret(seen)
    assert_still_serving(client)

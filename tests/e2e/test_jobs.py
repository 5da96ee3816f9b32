"""Build jobs end to end: a real node on a loopback port, the real client and CLI.

Matrix: submit + wait with a progress bar, then the register_as dataset streams exactly the
patches create_dataset writes (patch/label arrays, classes); inputs from a served dataset's
array and from a NIfTI file; cancel a running local job (stopped within seconds, no output,
no job process left); streams keep working while one job runs and another fails; the Dask
executor on a distributed.LocalCluster (2 workers) writes the same patches as the local
executor (identical ordered, same multiset random); a restarted node lists ended jobs, fails
the one it interrupted, serves the registered dataset again (a watch open when the node
stops ends with UNAVAILABLE at once); a node killed with SIGKILL (a subprocess) leaves no job
process running and its restart reports the job interrupted; bad inputs get
PERMISSION_DENIED ("..", absolute and symlinked paths, for inputs and output),
INVALID_ARGUMENT (patchsize <= 0 or larger than the image, file_format, mask shape,
existing output) and NOT_FOUND (unknown job for get/cancel/watch, unknown dataset), the node
serving on; the CLI builds, watches, lists and cancels.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import dask
import distributed
import grpc
import h5py
import numpy as np
import pytest
import SimpleITK
import zarr
from leak_check import assert_no_leaks, descendants, forkserver_children
from node_support import start_blocked_job

from data_client import DataNodeClient
from data_client.cli import main
from data_client.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from data_client.jobs import DatasetArray, FileArray, JobState
from data_node.config import load
from data_node.jobs.manager import INTERRUPTED
from data_node.server import build_server
from data_tools.patches import create_dataset
from data_wire.v1 import data_node_pb2_grpc, jobs_pb2

VOLUME = np.random.default_rng(11).random((5, 16, 14), dtype=np.float32)
MASK = (VOLUME * 3).astype(np.uint8)
BIG = np.random.default_rng(12).random((48, 96, 96), dtype=np.float32)
UNREACHABLE = "tcp://127.0.0.1:1"
IMAGE = FileArray("vol.h5", "image")
LABELS = FileArray("vol.h5", "mask")


def write_node(root):
    data = root / "data"
    data.mkdir()
    with h5py.File(data / "vol.h5", "w") as file:
        file["image"] = VOLUME
        file["mask"] = MASK
        file["big"] = BIG
    SimpleITK.WriteImage(SimpleITK.GetImageFromArray(VOLUME), str(data / "vol.nii.gz"))
    outside = root / "outside"
    outside.mkdir()
    (outside / "x.h5").touch()
    (data / "escape.h5").symlink_to(outside / "x.h5")
    (root / "outputs").mkdir()
    (root / "outputs" / "link").symlink_to(outside)
    (root / "node.toml").write_text(
        '[node]\nlisten = "127.0.0.1:0"\ndata_root = "data"\n'
        "[jobs]\nmax_concurrent_jobs = 2\ndask_task_bytes = 4096\n"  # Dask tasks of 40 patches
        '[datasets.vols.arrays]\nimage = { path = "vol.h5", key = "image" }\n'
        'mask = { path = "vol.h5", key = "mask" }\n'
    )
    return load(root / "node.toml")


@pytest.fixture(scope="module")
def job_node(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    config = write_node(root)
    with assert_no_leaks(thread_prefix="data_node-jobs"):
        server, port = build_server(config, "127.0.0.1:0")
        server.start()
        yield config, port
        server.stop(None)
    assert forkserver_children() == set()


@pytest.fixture
def jobs_client(job_node):
    _, port = job_node
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        yield client


def assert_still_serving(client):
    image, mask = next(iter(client.stream("vols", 2)))
    np.testing.assert_array_equal(image, VOLUME[:2])
    np.testing.assert_array_equal(mask, MASK[:2])


def expected_patches(tmp_path, **kwargs):
    """{array: patches} create_dataset writes (hdf5) for VOLUME and MASK."""
    create_dataset(tmp_path / "expected", 3, VOLUME, MASK, **kwargs)
    with h5py.File(tmp_path / "expected" / "patches.h5", "r") as file:
        return {name: file[name][()] for name in file}


def test_submit_wait_and_stream_the_registered_result(jobs_client, tmp_path, capsys):
    job = jobs_client.submit_build(
        "streamed", 3, IMAGE, LABELS, [2, 0], random_order=False, register_as="patches"
    )
    info = job.wait(progress=True)
    assert info.state is JobState.SUCCEEDED, info.error
    assert "patch" in capsys.readouterr().err  # the tqdm bar
    assert info.fraction_done == 1.0
    assert [c.value for c in info.classes] == [2, 0]
    assert info.request.random_order is False
    expected = expected_patches(tmp_path, class_list=[2, 0], random_order=False)
    described = jobs_client.describe("patches")
    assert [(a.name, a.shape[1:]) for a in described.arrays] == [
        ("patch", (1, 3, 3)),
        ("label", ()),
    ]
    assert described.classes == (2, 0)
    patches, labels = next(iter(jobs_client.stream("patches", described.length)))
    np.testing.assert_array_equal(
        patches, np.concatenate([expected["class_2"], expected["class_0"]])
    )
    assert list(labels) == [2] * len(expected["class_2"]) + [0] * len(expected["class_0"])


@pytest.mark.parametrize(
    ("volume", "mask", "slice_axis"),
    [
        (DatasetArray("vols", "image"), DatasetArray("vols", "mask"), -1),
        ("vol.nii.gz", LABELS, 0),
    ],
    ids=["dataset-array", "nifti"],
)
def test_other_inputs(jobs_client, tmp_path, volume, mask, slice_axis):
    output = f"other-{slice_axis}"
    job = jobs_client.submit_build(
        output, 3, volume, mask, random_order=False, slice_axis=slice_axis
    )
    info = job.wait(progress=False)
    assert info.state is JobState.SUCCEEDED, info.error
    expected = expected_patches(tmp_path, random_order=False, slice_axis=slice_axis)
    assert {c.value: c.written for c in info.classes} == {
        int(name.removeprefix("class_")): len(p) for name, p in expected.items()
    }


def test_cancel_a_running_job(job_node, jobs_client):
    config, _ = job_node
    job = jobs_client.submit_build(
        "cancelled",
        9,
        FileArray("vol.h5", "big"),
        random_order=False,
        writer_options={"compression": "gzip", "compression_opts": 9},
    )
    for info in job.watch(timeout=30):
        if info.patches_written:
            break
    assert info.state is JobState.RUNNING
    start = time.monotonic()
    info = job.cancel()
    assert time.monotonic() - start < 5
    assert info.state is JobState.CANCELLED
    assert 0 < info.patches_written < info.patches_total
    assert forkserver_children() == set()
    assert not (config.output_root / "cancelled").exists()
    assert job.wait(progress=False).state is JobState.CANCELLED


def test_streams_keep_flowing_while_jobs_run_and_fail(jobs_client):
    blocked = jobs_client.submit_build(
        "blocked", 3, IMAGE, file_format="zarr", executor="dask", scheduler_address=UNREACHABLE
    )
    failing = jobs_client.submit_build("failing", 3, IMAGE, LABELS, [1, 7])
    assert_still_serving(jobs_client)
    info = failing.wait(progress=False)
    assert info.state is JobState.FAILED
    assert "class_list" in info.error
    assert blocked.status().state is JobState.RUNNING
    assert_still_serving(jobs_client)
    assert blocked.cancel().state is JobState.CANCELLED
    assert_still_serving(jobs_client)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    scratch = str(tmp_path_factory.mktemp("dask"))  # not dask's default /tmp/dask-scratch-space
    with (
        dask.config.set({"temporary-directory": scratch}),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=False,
            protocol="tcp",
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
    ):
        yield cluster


def read_zarr(path):
    group = zarr.open_group(str(path / "patches.zarr"), mode="r")
    return {name: array[...] for name, array in group.arrays()}


def sort_patches(patches):
    return patches[np.lexsort(patches.reshape(len(patches), -1).T[::-1])]


@pytest.mark.parametrize("random_order", [False, True])
def test_dask_executor_writes_the_local_executor_patches(
    job_node, jobs_client, cluster, random_order
):
    config, _ = job_node
    outputs = {}
    for executor in ("local", "dask"):
        output = f"{executor}-{random_order}"
        job = jobs_client.submit_build(
            output,
            5,
            IMAGE,
            LABELS,
            random_order=random_order,
            batchsize=4,
            file_format="zarr",
            max_patches_per_class=150,
            seed=3,
            executor=executor,
            scheduler_address=cluster.scheduler_address if executor == "dask" else None,
        )
        info = job.wait(progress=False)
        assert info.state is JobState.SUCCEEDED, info.error
        assert info.request.executor == executor
        outputs[executor] = read_zarr(config.output_root / output)
    local, dask = outputs["local"], outputs["dask"]
    assert sorted(local) == sorted(dask) == ["class_0", "class_1", "class_2"]
    for name in local:
        assert len(dask[name]) == 150
        if random_order:
            np.testing.assert_array_equal(sort_patches(dask[name]), sort_patches(local[name]))
        else:
            np.testing.assert_array_equal(dask[name], local[name])


def test_a_restarted_node_keeps_its_jobs(tmp_path):
    config = write_node(tmp_path)
    with assert_no_leaks(thread_prefix="data_node-jobs"):
        server, port = build_server(config, "127.0.0.1:0")
        server.start()
        with DataNodeClient(f"127.0.0.1:{port}") as client:
            done = client.submit_build("kept", 3, IMAGE, register_as="kept", random_order=False)
            assert done.wait(progress=False).state is JobState.SUCCEEDED
            blocked = client.submit_build(
                "cut", 3, IMAGE, file_format="zarr", executor="dask", scheduler_address=UNREACHABLE
            )
            before = {info.job_id: info for info in client.jobs()}
            watch = blocked.watch()
            # QUEUED first when the dispatcher is slow to start it (a loaded machine).
            assert (
                next(i for i in watch if i.state is not JobState.QUEUED).state is JobState.RUNNING
            )
            start = time.monotonic()
            server.stop(60)  # the open watch ends at once: stop waits for no grace period
            assert time.monotonic() - start < 30
            with pytest.raises(UnavailableError, match="node is stopping"):
                next(watch)
        assert forkserver_children() == set()
        server, port = build_server(config, "127.0.0.1:0")
        server.start()
        with DataNodeClient(f"127.0.0.1:{port}") as client:
            after = client.jobs()
            assert [info.job_id for info in after] == list(before)
            kept, cut = after
            assert kept == before[done.job_id]
            assert (cut.state, cut.error) == (JobState.FAILED, INTERRUPTED)
            assert cut.job_id == blocked.job_id
            (patches,) = next(iter(client.stream("kept", 10)))[:1]
            np.testing.assert_array_equal(patches[:, 0, 1, 1], VOLUME[0, :10, 0])
        server.stop(None)


def test_a_killed_node_takes_its_jobs_along_and_reports_them_interrupted(tmp_path):
    config = write_node(tmp_path)
    node = subprocess.Popen(
        [sys.executable, "-m", "data_node", "serve", "--config", str(tmp_path / "node.toml")],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        while port is None:
            line = node.stderr.readline()
            assert line, "the node exited before serving"
            if " on port " in line:
                port = int(line.rsplit(" ", 1)[1])
        with DataNodeClient(f"127.0.0.1:{port}") as client:
            job = start_blocked_job(client, "orphan", IMAGE)
        processes = descendants(node.pid)
        assert processes  # the forkserver and the job's process
        node.kill()
        node.wait()
        deadline = time.monotonic() + 5
        while alive := {pid for pid in processes if Path(f"/proc/{pid}").exists()}:
            assert time.monotonic() < deadline, f"left running after the node died: {alive}"
            time.sleep(0.05)
    finally:
        node.kill()
        node.wait()
        node.stderr.close()
    server, port = build_server(config, "127.0.0.1:0")
    server.start()
    try:
        with DataNodeClient(f"127.0.0.1:{port}") as client:
            (info,) = client.jobs()
        assert (info.job_id, info.state, info.error) == (job.job_id, JobState.FAILED, INTERRUPTED)
        assert not (config.output_root / ".jobs" / job.job_id).exists()
    finally:
        server.stop(None)


def file(path, key=""):
    return FileArray(path, key)


@pytest.mark.parametrize(
    ("arguments", "error", "pattern"),
    [
        ({"volume": file("../outside/x.h5", "a")}, PermissionDeniedError, r"volume\.file\.path"),
        ({"volume": file("/etc/hostname")}, PermissionDeniedError, r"volume\.file\.path"),
        ({"mask": file("escape.h5", "a")}, PermissionDeniedError, r"mask\.file\.path"),
        ({"output": "../escaped"}, PermissionDeniedError, r"output: Expected a path inside"),
        # No absolute path in a message, not even the client's own (it may resolve elsewhere).
        (
            {"output": "/tmp/escaped"},
            PermissionDeniedError,
            r"output: Expected a path inside '\.'\. Got '<server path>'",
        ),
        ({"output": "link/escaped"}, PermissionDeniedError, r"output: .*'link/escaped'"),
        ({"patchsize": 6}, InvalidArgumentError, r"patchsize: Expected at most 5, "),
        ({"file_format": "hdf"}, InvalidArgumentError, r"file_format: .*Did you mean 'hdf5'"),
        ({"mask": file("vol.h5", "big")}, InvalidArgumentError, r"mask: Expected the shape"),
        ({"output": "streamed"}, InvalidArgumentError, r"output: Expected a new name"),
        (
            {"volume": DatasetArray("nope", "image")},
            NotFoundError,
            r"volume\.dataset_array\.dataset: Expected one of",
        ),
    ],
)
def test_bad_requests_get_precise_statuses(jobs_client, arguments, error, pattern):
    base = {"output": "bad", "patchsize": 3, "volume": IMAGE, "mask": LABELS}
    with pytest.raises(error, match=pattern):
        jobs_client.submit_build(**(base | arguments))
    assert_still_serving(jobs_client)


def test_patchsize_zero_is_refused_by_the_node(job_node):
    """The client refuses patchsize 0 itself; a raw request reaches the node."""
    _, port = job_node
    request = jobs_pb2.SubmitBuildJobRequest(
        volume=jobs_pb2.ArrayInput(file=jobs_pb2.FileArray(path="vol.h5", key="image")),
        output="zero",
    )
    with (
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        data_node_pb2_grpc.DataNodeStub(channel).SubmitBuildJob(request)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("patchsize: Expected an integer >= 1. Got 0")


def test_unknown_jobs_are_not_found(jobs_client):
    job = jobs_client.job("nope")
    for action in (job.status, job.cancel, lambda: job.wait(progress=False)):
        with pytest.raises(NotFoundError, match="job_id: Expected the id of a job"):
            action()
    assert_still_serving(jobs_client)


def test_cli_builds_lists_watches_and_cancels(job_node, capsys):
    _, port = job_node
    address = ["--address", f"127.0.0.1:{port}"]
    build = ["build", *address, "--output", "cli", "--patchsize", "3", "--volume", "vol.h5:image"]
    assert main([*build, "--mask", "vol.h5:mask", "--class-list", "1", "--no-random-order"]) == 0
    out, err = capsys.readouterr()
    job_id = out.split()[0]
    assert f"job {job_id} submitted" in err
    assert f"{job_id} succeeded" in out
    assert f"class_1={np.count_nonzero(MASK == 1)}/" in out
    assert "patch" in err  # the progress bar
    assert main(["jobs", *address]) == 0
    assert f"{job_id} succeeded" in capsys.readouterr().out
    assert main(["watch", job_id, *address]) == 0
    assert main(["cancel", job_id, *address]) == 0
    assert "succeeded" in capsys.readouterr().out
    assert main(["cancel", "nope", *address]) == 1
    assert "NOT_FOUND: job_id" in capsys.readouterr().err
    assert main([*build[:-1], "missing.h5:image", "--output", "cli-missing"]) == 1
    failing = [*build[:4], "cli-failed", *build[5:], "--mask", "vol.h5:mask", "--class-list", "9"]
    assert main(failing) == 1
    assert "failed" in capsys.readouterr().out

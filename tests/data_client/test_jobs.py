"""The client's build jobs against a fake node: request fields, handles, progress, errors.

Matrix: submit_build maps every argument to its SubmitBuildJobRequest field (defaults; every
argument given; a str volume is a FileArray, DatasetArray inputs) and refuses bad arguments
before any call; JobInfo mirrors the Job message (state enum, classes, totals, output);
status / cancel / jobs; wait() follows WatchJob to the end, drawing a tqdm bar on stderr
only when asked; wait(timeout) raises DeadlineExceededError; an unknown job is NotFoundError
for status, cancel and wait; the bearer token travels with every job call.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from data_client import DataNodeClient
from data_client.errors import DeadlineExceededError, NotFoundError
from data_client.jobs import ClassProgress, DatasetArray, FileArray, JobState
from data_wire.v1 import data_node_pb2_grpc, jobs_pb2

TOTALS = {0: 20, 1: 10}


def job_message(job_id, state, written=0, request=None):
    return jobs_pb2.Job(
        job_id=job_id,
        state=state,
        request=request or jobs_pb2.SubmitBuildJobRequest(output="out"),
        classes=[
            jobs_pb2.ClassProgress(value=v, written=min(written, t), total=t)
            for v, t in TOTALS.items()
        ],
        fraction_done=min(written, 30) / 30,
        elapsed_seconds=1.5,
        created_at=100.0,
    )


class FakeJobsNode(data_node_pb2_grpc.DataNodeServicer):
    """Knows job "j1"; its WatchJob goes RUNNING 0, 10, 20, then SUCCEEDED; "slow" never ends."""

    def __init__(self):
        self.requests = []
        self.metadata = []

    def _known(self, job_id, context):
        self.metadata.append(dict(context.invocation_metadata()))
        if job_id not in ("j1", "slow"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"job_id: no job {job_id!r}")

    def SubmitBuildJob(self, request, context):
        self.requests.append(request)
        return job_message("j1", jobs_pb2.JOB_STATE_QUEUED, request=request)

    def GetJob(self, request, context):
        self._known(request.job_id, context)
        return job_message(request.job_id, jobs_pb2.JOB_STATE_RUNNING, 5)

    def CancelJob(self, request, context):
        self._known(request.job_id, context)
        return job_message(request.job_id, jobs_pb2.JOB_STATE_CANCELLED, 5)

    def ListJobs(self, request, context):
        return jobs_pb2.ListJobsResponse(
            jobs=[
                job_message("j0", jobs_pb2.JOB_STATE_FAILED),
                job_message("j1", jobs_pb2.JOB_STATE_SUCCEEDED, 30),
            ]
        )

    def WatchJob(self, request, context):
        self._known(request.job_id, context)
        if request.job_id == "slow":
            yield job_message("slow", jobs_pb2.JOB_STATE_RUNNING)
            while context.is_active():
                time.sleep(0.01)
            return
        for written in (0, 10, 20):
            yield job_message("j1", jobs_pb2.JOB_STATE_RUNNING, written)
        yield job_message("j1", jobs_pb2.JOB_STATE_SUCCEEDED, 30)


@pytest.fixture
def fake():
    node = FakeJobsNode()
    server = grpc.server(ThreadPoolExecutor(max_workers=4, thread_name_prefix="fake-jobs"))
    data_node_pb2_grpc.add_DataNodeServicer_to_server(node, server)
    node.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield node
    server.stop(None).wait()


@pytest.fixture
def client(fake):
    with DataNodeClient(f"127.0.0.1:{fake.port}", token="secret") as client:
        yield client


def test_submit_defaults(client, fake):
    with pytest.warns(UserWarning, match=r"'vol.nii.gz' is a medical image.*slice_axis=0"):
        job = client.submit_build("out", 5, "vol.nii.gz")
    assert job.job_id == "j1"
    (request,) = fake.requests
    assert request.volume == jobs_pb2.ArrayInput(file=jobs_pb2.FileArray(path="vol.nii.gz"))
    assert not request.HasField("mask")
    assert (request.output, request.patchsize, request.batchsize) == ("out", 5, 32)
    assert request.HasField("random_order")
    assert request.random_order is True
    assert (request.file_format, request.writer_options) == ("hdf5", "")
    assert request.HasField("slice_axis")
    assert request.slice_axis == -1
    assert not request.HasField("seed")
    assert request.max_patches_per_class == 0
    assert (request.register_as, request.overwrite) == ("", False)
    assert (request.executor, request.scheduler_address) == ("", "")
    assert list(request.class_list) == []


def test_submit_every_argument(client, fake):
    client.submit_build(
        "out",
        7,
        FileArray("vol.h5", "/image"),
        DatasetArray("brains", "mask"),
        [2, 0],
        False,
        8,
        "zarr",
        {"chunks": [8, 1, 7, 7]},
        max_patches_per_class=100,
        register_as="built",
        overwrite=True,
        slice_axis=0,
        seed=2**63,
        executor="dask",
        scheduler_address="tcp://h:8786",
    )
    (request,) = fake.requests
    assert request.volume.file == jobs_pb2.FileArray(path="vol.h5", key="/image")
    assert request.mask.dataset_array == jobs_pb2.DatasetArray(dataset="brains", array="mask")
    assert list(request.class_list) == [2, 0]
    assert (request.random_order, request.batchsize, request.file_format) == (False, 8, "zarr")
    assert request.writer_options == '{"chunks": [8, 1, 7, 7]}'
    assert (request.max_patches_per_class, request.register_as) == (100, "built")
    assert (request.overwrite, request.slice_axis, request.seed) == (True, 0, 2**63)
    assert (request.executor, request.scheduler_address) == ("dask", "tcp://h:8786")


@pytest.mark.parametrize(
    ("arguments", "error", "pattern"),
    [
        ({"patchsize": 0}, ValueError, r"patchsize to be an integer >= 1"),
        ({"patchsize": 2.5}, TypeError, r"patchsize to be an integer"),
        ({"volume": 5}, TypeError, r"volume to be a DatasetArray, a FileArray or a path"),
        ({"mask": ("vol.h5", "mask")}, TypeError, r"mask to be a DatasetArray"),
        ({"output": ""}, TypeError, r"output to be a non-empty string"),
        ({"batchsize": 0}, ValueError, r"batchsize to be an integer >= 1"),
        ({"class_list": [1.5]}, TypeError, r"class_list\[0\] to be an integer"),
        ({"writer_options": [("a", 1)]}, TypeError, r"writer_options to be a dict or None"),
        ({"writer_options": {"a": object()}}, TypeError, r"writer_options to be JSON-serial"),
        ({"max_patches_per_class": 0}, ValueError, r"max_patches_per_class to be an integer >= 1"),
        ({"seed": -1}, ValueError, r"seed to be an integer in \[0, "),
    ],
)
def test_bad_arguments_fail_before_any_call(client, fake, arguments, error, pattern):
    with pytest.raises(error, match=pattern):
        client.submit_build(**({"output": "out", "patchsize": 3, "volume": "v.h5"} | arguments))
    assert fake.requests == []


def test_status_cancel_and_list(client, fake):
    job = client.job("j1")
    info = job.status()
    assert info.state is JobState.RUNNING
    assert not info.state.ended
    assert info.classes == (ClassProgress(0, 5, 20), ClassProgress(1, 5, 10))
    assert (info.patches_written, info.patches_total, info.output) == (10, 30, "out")
    assert (info.elapsed_seconds, info.created_at, info.error) == (1.5, 100.0, "")
    assert job.cancel().state is JobState.CANCELLED
    assert [(i.job_id, i.state) for i in client.jobs()] == [
        ("j0", JobState.FAILED),
        ("j1", JobState.SUCCEEDED),
    ]
    assert all(m.get("authorization") == "Bearer secret" for m in fake.metadata)
    assert repr(job) == "BuildJob('j1')"


def test_wait_follows_the_watch_and_draws_a_bar(client, capsys):
    job = client.job("j1")
    states = [info.state for info in job.watch()]
    assert states == [JobState.RUNNING] * 3 + [JobState.SUCCEEDED]
    info = job.wait(progress=False)
    assert info.state is JobState.SUCCEEDED
    assert info.fraction_done == 1.0
    assert capsys.readouterr().err == ""
    job.wait(progress=True)
    err = capsys.readouterr().err
    assert "job j1" in err
    assert "30/30" in err
    assert "succeeded" in err


def test_wait_timeout(client):
    start = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        client.job("slow").wait(progress=False, timeout=0.3)
    assert time.monotonic() - start < 5


def test_unknown_job_is_not_found(client):
    job = client.job("nope")
    for action in (job.status, job.cancel, lambda: job.wait(progress=False)):
        with pytest.raises(NotFoundError, match="job_id: no job 'nope'"):
            action()
    with pytest.raises(TypeError, match="job_id to be a non-empty string"):
        client.job("")


def test_a_watch_closed_early_cancels_its_call(client):
    watch = client.job("slow").watch()
    assert next(watch).state is JobState.RUNNING
    done = threading.Event()
    threading.Thread(target=lambda: (watch.close(), done.set())).start()
    assert done.wait(5)

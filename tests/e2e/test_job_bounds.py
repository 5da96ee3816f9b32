"""What a job stores and plans is bounded; ListJobs answers in pages that fit a message.

Matrix: oversized request fields (60 MiB writer_options, a 5000-byte output, 5000 class_list
values) get INVALID_ARGUMENT naming the field and nothing is stored; ListJobs pages by count
(page_size) and by bytes (21 jobs with 60 KiB writer_options each: a page stays under 1 MiB),
tokens chain through every job in submission order, the client's jobs() reads every page,
and a bad page_token or a negative page_size gets INVALID_ARGUMENT; a plan over
jobs.max_output_bytes is refused at submission when it is known then (no mask:
RESOURCE_EXHAUSTED) and fails the job before any write otherwise (with a mask); a plan over
the free space under the output root likewise (a 1024x1024 volume cut in 1024x1024 patches:
4 TiB), leaving no output.
"""

from __future__ import annotations

import contextlib
import re

import grpc
import h5py
import numpy as np
import pytest
from node_support import start_blocked_job

from data_client import DataNodeClient
from data_client.errors import ResourceExhaustedError
from data_client.jobs import FileArray, JobState
from data_node.config import load
from data_node.jobs.manager import PAGE_BYTES
from data_node.server import build_server
from data_wire.v1 import data_node_pb2_grpc, jobs_pb2

VOLUME = np.random.default_rng(41).random((4, 12, 10), dtype=np.float32)
MASK = (VOLUME * 3).astype(np.uint8)
IMAGE = FileArray("vol.h5", "image")
LABELS = FileArray("vol.h5", "mask")
PLANNED = VOLUME.size * 3 * 3 * 4  # every pixel a 3x3 float32 patch


@contextlib.contextmanager
def node(root, max_output_bytes):
    """A node on ``root`` with ``max_output_bytes``: its config, a client and a raw stub."""
    (root / "data").mkdir()
    with h5py.File(root / "data" / "vol.h5", "w") as file:
        file["image"] = VOLUME
        file["mask"] = MASK
        file["ones"] = np.ones((1024, 1024), dtype=np.uint8)
    (root / "node.toml").write_text(
        '[node]\nlisten = "127.0.0.1:0"\ndata_root = "data"\n'
        f"[jobs]\nmax_concurrent_jobs = 1\nmax_output_bytes = {max_output_bytes}\n"
    )
    config = load(root / "node.toml")
    server, port = build_server(config, "127.0.0.1:0")
    server.start()
    try:
        with (
            DataNodeClient(f"127.0.0.1:{port}") as client,
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            yield config, client, data_node_pb2_grpc.DataNodeStub(channel)
    finally:
        server.stop(None)


@pytest.fixture(scope="module")
def bounded_node(tmp_path_factory):
    with node(tmp_path_factory.mktemp("bounds"), PLANNED - 1) as bounded:
        yield bounded


def raw_request(**fields):
    base = {
        "volume": jobs_pb2.ArrayInput(file=jobs_pb2.FileArray(path="vol.h5", key="image")),
        "mask": jobs_pb2.ArrayInput(file=jobs_pb2.FileArray(path="vol.h5", key="mask")),
        "patchsize": 3,
        "class_list": [1],  # fewer patches than max_output_bytes allows
        "output": "raw",
    }
    return jobs_pb2.SubmitBuildJobRequest(**(base | fields))


@pytest.mark.parametrize(
    ("fields", "pattern"),
    [
        ({"writer_options": "{" + " " * (100 << 10) + "}"}, r"^writer_options: Expected at most"),
        ({"output": "x" * 5000}, r"^output: Expected at most 4096 characters. Got 5000 instead."),
        ({"class_list": range(5000)}, r"^class_list: Expected at most 4096 values"),
    ],
    ids=["writer_options", "output", "class_list"],
)
def test_oversized_fields_are_refused(bounded_node, fields, pattern):
    _, client, stub = bounded_node
    before = client.jobs()
    with pytest.raises(grpc.RpcError) as caught:
        stub.SubmitBuildJob(raw_request(**fields))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert re.match(pattern, caught.value.details()), caught.value.details()
    assert client.jobs() == before


def test_list_jobs_pages_fit_a_message(bounded_node):
    _, client, stub = bounded_node
    blocker = start_blocked_job(client, "blocker", IMAGE, LABELS, [1])
    # 60 KiB of JSON whitespace each: valid, within the 64 KiB bound; 20 make over 1 MiB.
    padded = '{"shuffle": true' + " " * (60 << 10) + "}"
    queued = [
        stub.SubmitBuildJob(raw_request(output=f"padded-{i}", writer_options=padded))
        for i in range(20)
    ]
    assert {job.state for job in queued} == {jobs_pb2.JOB_STATE_QUEUED}
    ids = [info.job_id for info in client.jobs()]
    ours = [blocker.job_id, *(job.job_id for job in queued)]
    assert ids[-len(ours) :] == ours

    first = stub.ListJobs(jobs_pb2.ListJobsRequest())
    assert first.next_page_token
    assert first.ByteSize() <= PAGE_BYTES
    listed, token = [job.job_id for job in first.jobs], first.next_page_token
    while token:
        page = stub.ListJobs(jobs_pb2.ListJobsRequest(page_token=token, page_size=5))
        assert 1 <= len(page.jobs) <= 5
        assert page.ByteSize() <= PAGE_BYTES
        listed += [job.job_id for job in page.jobs]
        token = page.next_page_token
    assert listed == ids

    for request, pattern in (
        (jobs_pb2.ListJobsRequest(page_token="nope"), r"^page_token: Expected the next_page"),
        (jobs_pb2.ListJobsRequest(page_size=-1), r"^page_size: Expected an integer >= 0"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListJobs(request)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert re.match(pattern, caught.value.details())
    for job_id in reversed(ours):
        assert client.job(job_id).cancel().state is JobState.CANCELLED


def test_a_plan_over_max_output_bytes_is_refused(bounded_node):
    config, client, _ = bounded_node
    with pytest.raises(ResourceExhaustedError, match=rf"max_output_bytes: .* {PLANNED} bytes"):
        client.submit_build("too-big", 3, IMAGE)
    info = client.submit_build("too-big", 3, IMAGE, LABELS).wait(progress=False)
    assert info.state is JobState.FAILED
    assert info.error.startswith(f"max_output_bytes: Expected a build of at most {PLANNED - 1}")
    assert not (config.output_root / "too-big").exists()


def test_a_plan_over_the_free_space_is_refused(tmp_path):
    """1024x1024 patches of every pixel of a 1024x1024 slice: 4 TiB, more than the disk has."""
    planned = 1024**4 * 4
    with node(tmp_path, planned) as (config, client, _):
        ones = FileArray("vol.h5", "ones")
        pattern = rf"output: Expected a build that fits the \d+ bytes free .* {planned} bytes"
        with pytest.raises(ResourceExhaustedError, match=pattern):
            client.submit_build("huge", 1024, ones)
        info = client.submit_build("huge", 1024, ones, ones).wait(progress=False)
        assert info.state is JobState.FAILED
        assert re.match(pattern, info.error), info.error
        assert not (config.output_root / "huge").exists()

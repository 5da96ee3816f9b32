"""A fake in-memory DataNode served on a loopback port, for the client's unit tests."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from data_wire.v1 import data_node_pb2, data_node_pb2_grpc, jobs_pb2, tensor_pb2

LENGTH = 10
ARRAYS = {
    "image": np.arange(LENGTH * 6, dtype=np.float32).reshape(LENGTH, 2, 3),
    "mask": (np.arange(LENGTH * 6) % 7).astype(np.uint8).reshape(LENGTH, 2, 3),
    "label": np.arange(LENGTH, dtype=np.int64) * 10,
}
MAX_BATCH_SIZE = 100
DRAWN_SEED = 77


def _tensor(array):
    return tensor_pb2.Tensor(
        dtype=array.dtype.str,
        shape=array.shape,
        data=array.tobytes(),
        codec=tensor_pb2.CODEC_NONE,
        raw_nbytes=array.nbytes,
    )


def _description(name):
    return data_node_pb2.DatasetDescription(
        name=name,
        length=LENGTH,
        arrays=[
            data_node_pb2.ArrayDescription(name=key, dtype=value.dtype.str, shape=value.shape)
            for key, value in ARRAYS.items()
        ],
        classes=[0, 10, 20],
    )


class FakeNode(data_node_pb2_grpc.DataNodeServicer):
    """Serves dataset "toy" in sequential order; "other" exists only in listings and describe.

    Epoch e, shard (rank, world_size): samples rank, rank + world_size, ... in batches of
    batch_size; a resume cursor restarts at its (epoch, batch_index). Every request and its
    metadata are recorded. ``fail_after = k`` makes the next stream abort with UNAVAILABLE
    after k batches (once); ``hold_after = k`` makes the next stream stop sending after k
    batches until its call ends (once), setting ``held``; ``always_unavailable`` aborts every
    stream at once.
    """

    arrays = ARRAYS
    length = LENGTH
    drawn_seed = DRAWN_SEED

    def __init__(self):
        self.server = None
        self.port = 0
        self.requests = []
        self.metadata = []
        self.required_token = None
        self.fail_after = None
        self.hold_after = None
        self.held = threading.Event()
        self.always_unavailable = False
        self.stream_ended = threading.Event()
        self.yielded = 0

    def _check_token(self, context):
        self.metadata.append(dict(context.invocation_metadata()))
        if self.required_token is not None:
            expected = f"Bearer {self.required_token}"
            if self.metadata[-1].get("authorization") != expected:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad or missing bearer token")

    def ListDatasets(self, request, context):
        self._check_token(context)
        return data_node_pb2.ListDatasetsResponse(
            datasets=[_description("other"), _description("toy")]
        )

    def DescribeDataset(self, request, context):
        self._check_token(context)
        if request.dataset not in ("toy", "other"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"dataset: no dataset {request.dataset!r}")
        return _description(request.dataset)

    def StreamBatches(self, request, context):
        self.requests.append(request)
        context.add_callback(self.stream_ended.set)
        self._check_token(context)
        if request.dataset != "toy":
            context.abort(grpc.StatusCode.NOT_FOUND, f"dataset: no dataset {request.dataset!r}")
        if request.batch_size > MAX_BATCH_SIZE:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "batch_size: above the limit 100")
        if self.always_unavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, "node is restarting")
        fail_after, self.fail_after = self.fail_after, None
        hold_after, self.hold_after = self.hold_after, None
        ended = threading.Event()
        context.add_callback(ended.set)
        for sent, batch in enumerate(self._batches(request, context, fail_after)):
            if sent == hold_after:
                self.held.set()
                ended.wait()
                return
            yield batch

    def _batches(self, request, context, fail_after):
        world_size = request.shard.world_size or 1
        order = np.arange(request.shard.rank, LENGTH, world_size)
        starts = range(0, len(order), request.batch_size)
        seed = request.seed if request.HasField("seed") else DRAWN_SEED
        epoch, first = (request.resume.epoch, request.resume.batch_index)
        sent = 0
        while request.loop_forever or epoch < request.epochs:
            for batch_index in range(first, len(starts)):
                if sent == fail_after:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "node is restarting")
                indices = order[starts[batch_index] : starts[batch_index] + request.batch_size]
                last = batch_index + 1 == len(starts)
                cursor = tensor_pb2.Cursor(
                    dataset=request.dataset,
                    seed=seed,
                    epoch=epoch + last,
                    batch_index=0 if last else batch_index + 1,
                    fingerprint="fp",
                )
                sent += 1
                self.yielded += 1
                yield tensor_pb2.Batch(
                    arrays=[_tensor(array[indices]) for array in ARRAYS.values()],
                    cursor=cursor,
                    indices=indices,
                    epoch=epoch,
                    batch_index=batch_index,
                )
            epoch, first = epoch + 1, 0

    @property
    def address(self):
        return f"localhost:{self.port}"

    def start(self):
        """Serve on localhost: a free port the first time, the same port after a stop()."""
        self.server = grpc.server(ThreadPoolExecutor(max_workers=4, thread_name_prefix="fake-node"))
        data_node_pb2_grpc.add_DataNodeServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port(f"localhost:{self.port}")
        self.server.start()

    def stop(self):
        """Stop at once: in-flight calls fail with UNAVAILABLE, as when a node goes down."""
        self.server.stop(None).wait()


class FakeJobsNode(FakeNode):
    """A FakeNode with ended jobs too: ListJobs reports ``job_ids``, GetJob, CancelJob and
    WatchJob answer for them (each SUCCEEDED), NOT_FOUND for any other id."""

    def __init__(self):
        super().__init__()
        self.job_ids = []

    def ListJobs(self, request, context):
        self._check_token(context)
        return jobs_pb2.ListJobsResponse(jobs=[self._job(job_id) for job_id in self.job_ids])

    def GetJob(self, request, context):
        self._check_token(context)
        if request.job_id not in self.job_ids:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job_id: no job {request.job_id!r}")
        return self._job(request.job_id)

    CancelJob = GetJob

    def WatchJob(self, request, context):
        yield self.GetJob(request, context)

    @staticmethod
    def _job(job_id):
        return jobs_pb2.Job(job_id=job_id, state=jobs_pb2.JOB_STATE_SUCCEEDED, fraction_done=1)


def _running_jobs_node():
    node = FakeJobsNode()
    node.start()
    yield node
    node.stop()


@pytest.fixture
def fake_jobs_node():
    """A running FakeJobsNode on a loopback port."""
    yield from _running_jobs_node()


@pytest.fixture
def other_jobs_node():
    """A second running FakeJobsNode, for commands given two nodes."""
    yield from _running_jobs_node()


@pytest.fixture
def fake_node():
    """A running FakeNode on a loopback port (``fake_node.address``)."""
    node = FakeNode()
    node.start()
    yield node
    node.stop()

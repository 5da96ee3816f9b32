"""Faults on a live node: each ends the call it hits with a clear status, the node serves on.

Matrix:

* kill -9 of the worker process running a stream's batch, then of the one running it
  again: tests/e2e/test_worker_pool.py (the batch runs again once, bit-exact; the second
  death ends the stream INTERNAL naming the worker, its pid and SIGKILL);
* a source corrupted mid-stream (a zarr chunk overwritten with garbage, a gzip HDF5 file
  truncated): INTERNAL naming the failed decode, or FAILED_PRECONDITION when H5Source sees
  the file changed first; never a hang or a silent end; an HDF5 file deleted: a stream
  whose worker processes open it gets FAILED_PRECONDITION naming the file; the node serves
  its other datasets;
* the same with the chunk cache on (its own zlib decode of gzip HDF5 chunks): a gzip file
  truncated mid-stream, and a chunk corrupted before the node opened the file (INTERNAL
  naming the file, dataset and chunk);
* a build job whose writes fail (the node runs under RLIMIT_FSIZE, so its job's writes
  fail with EFBIG, as they would with ENOSPC on a full disk): the job is FAILED with the
  OS error's text, leaves no output, and the node streams and runs the next job;
* a request deadline that passes, the client reading or idle, or the stream's batch stuck
  in its preprocessor: the client gets DEADLINE_EXCEEDED, the node's stream count returns
  to 0 (without waiting for the stuck batch) and the stream's workers are gone;
* kill -9 of the node during a build job: tests/e2e/test_jobs.py::
  test_a_killed_node_takes_its_jobs_along_and_reports_them_interrupted (FAILED
  "interrupted" after the restart, its staging output removed, no job process left).
"""

from __future__ import annotations

import os
import sys
import threading
import time

import grpc
import h5py
import numpy as np
import pytest
from leak_check import assert_no_leaks
from node_support import make_data, start_node_process, wait_for_idle, write_config

from data_client import DataNodeClient
from data_client.errors import FailedPreconditionError, InternalError
from data_client.jobs import FileArray, JobState
from data_node.config import load
from data_node.server import build_server
from data_wire.v1 import data_node_pb2

WORKERS = {"nb_proc_workers": 2, "nb_io_workers": 1}


def read_until_error(stream, limit=200):
    """Read ``stream`` until it raises; fail if it yields ``limit`` batches or ends."""
    for _ in range(limit):
        next(stream)
    raise AssertionError(f"the stream yielded {limit} batches after the fault")


# ---------------------------------------------------------------- sources


@pytest.fixture
def fragile_node(tmp_path):
    """A node of its own (its files get damaged) over toy.h5 and a gzip copy, and a zarr."""
    arrays = make_data(tmp_path)
    with h5py.File(tmp_path / "data" / "gzip.h5", "w") as file:
        file.create_dataset("image", data=arrays["image"], chunks=(4, 1, 16, 16), compression=4)
    config = write_config(tmp_path, max_nb_proc_workers=2)
    with config.open("a") as file:
        file.write(
            '[datasets.gzip.arrays]\nimage = { path = "gzip.h5", key = "image" }\n'
            '[datasets.zarr.arrays]\nimage = { path = "extra.zarr", key = "image" }\n'
            # Without the chunk cache: chunks decoded before the damage would be served
            # from memory (correctly), and the damaged ones never read.
            "[cache]\nmax_bytes = 0\n"
        )
    server, port = build_server(load(config), "127.0.0.1:0")
    server.start()
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        yield server, client, tmp_path / "data", arrays
    server.stop(None)


def overwrite_chunks(array_dir):
    for chunk in (array_dir / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(os.urandom(64))


def truncate_half(path):
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize(
    ("dataset", "damage", "pattern"),
    [
        ("zarr", lambda data: overwrite_chunks(data / "extra.zarr" / "image"), "decompression"),
        (
            "gzip",
            lambda data: truncate_half(data / "gzip.h5"),
            # Whichever comes first: the failed decode, or H5Source seeing the file changed.
            r"filter returned failure|truncated file|gzip\.h5' changed while open",
        ),
    ],
    ids=["zarr-chunk-garbage", "hdf5-gzip-truncated"],
)
@pytest.mark.parametrize("workers", [{}, WORKERS], ids=["threads", "processes"])
def test_a_source_corrupted_mid_stream_ends_the_stream(
    fragile_node, dataset, damage, pattern, workers
):
    server, client, data, arrays = fragile_node
    with assert_no_leaks():
        stream = client.stream(dataset, 2, loop_forever=True, max_reconnects=0, **workers)
        next(stream)
        damage(data)
        with pytest.raises((InternalError, FailedPreconditionError), match=pattern):
            read_until_error(stream)
        image, *_ = next(iter(client.stream("toy", 4, **workers)))
        np.testing.assert_array_equal(image, arrays["image"][:4])
        wait_for_idle(server)


@pytest.fixture
def cached_gzip_node(tmp_path):
    """A function that starts a node with the chunk cache on over a gzip copy of toy.h5.

    It takes a function that damages the file before the node opens it (or None).
    """
    arrays = make_data(tmp_path)
    path = tmp_path / "data" / "gzip.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("image", data=arrays["image"], chunks=(4, 1, 16, 16), compression=4)
    config = write_config(tmp_path)
    with config.open("a") as file:
        file.write(
            '[datasets.gzip.arrays]\nimage = { path = "gzip.h5", key = "image" }\n'
            "[cache]\nmax_bytes = 16777216\n"
        )
    servers = []

    def start(damage_before_open):
        if damage_before_open is not None:
            damage_before_open(path)
        server, port = build_server(load(config), "127.0.0.1:0")
        server.start()
        servers.append(server)
        return server, DataNodeClient(f"127.0.0.1:{port}"), path, arrays

    yield start
    for server in servers:
        server.stop(None)


def flip_chunk_bits(path, number):
    """Invert the second half of the stored bytes of chunk ``number`` of ``image``."""
    with h5py.File(path, "r") as file:
        dataset = file["image"]
        info = dataset.id.get_chunk_info_by_coord((number * dataset.chunks[0], 0, 0, 0))
    with open(path, "r+b") as file:
        file.seek(info.byte_offset + info.size // 2)
        tail = file.read(info.size - info.size // 2)
        file.seek(info.byte_offset + info.size // 2)
        file.write(bytes(byte ^ 0xFF for byte in tail))


@pytest.mark.parametrize(
    ("damage_before_open", "damage_mid_stream", "errors", "pattern"),
    [
        (
            None,
            truncate_half,
            (InternalError, FailedPreconditionError),
            r"filter returned failure|gzip\.h5' changed while open",
        ),
        (
            lambda path: flip_chunk_bits(path, 1),
            None,
            InternalError,
            r"chunk 1 \(rows 4 to 7\) of HDF5 dataset 'image' in '.*gzip\.h5': filter returned",
        ),
    ],
    ids=["truncated-mid-stream", "chunk-corrupted-before-open"],
)
def test_a_damaged_gzip_source_read_through_the_cache_ends_the_stream(
    cached_gzip_node, damage_before_open, damage_mid_stream, errors, pattern
):
    """The cache's own zlib decode of gzip HDF5 chunks fails as loudly as h5py's."""
    server, client, path, arrays = cached_gzip_node(damage_before_open)
    with client, assert_no_leaks():
        stream = client.stream("gzip", 2, loop_forever=True, max_reconnects=0)
        np.testing.assert_array_equal(next(stream)[0], arrays["image"][:2])  # chunk 0 is sound
        if damage_mid_stream is not None:
            damage_mid_stream(path)
        with pytest.raises(errors, match=pattern):
            read_until_error(stream)
        image, *_ = next(iter(client.stream("toy", 4)))
        np.testing.assert_array_equal(image, arrays["image"][:4])
        assert server.servicer._registry.cache.stats().misses > 0
        wait_for_idle(server)


def test_a_deleted_source_fails_the_streams_that_open_it(fragile_node):
    server, client, data, arrays = fragile_node
    next(iter(client.stream("gzip", 2)))  # the node has the file open
    (data / "gzip.h5").unlink()
    with assert_no_leaks():
        with pytest.raises(FailedPreconditionError, match=r"gzip\.h5"):
            next(iter(client.stream("gzip", 2, max_reconnects=0, **WORKERS)))
        image, *_ = next(iter(client.stream("toy", 4, **WORKERS)))
        np.testing.assert_array_equal(image, arrays["image"][:4])
        wait_for_idle(server)


# ---------------------------------------------------------------- deadlines


def open_stream(channel, request, timeout):
    """A raw StreamBatches call with a deadline (the client's streams have none)."""
    return channel.unary_stream(
        "/data_wire.v1.DataNode/StreamBatches",
        request_serializer=data_node_pb2.StreamRequest.SerializeToString,
        response_deserializer=bytes,
    )(request, timeout=timeout)


def read_slowly(call):
    for _ in call:
        time.sleep(0.01)


def first_batch_within_deadline(channel, server, request):
    """A stream call whose deadline passes after its first batch, whatever the machine's load.

    The deadline must outlast the workers' start-up, which a loaded machine slows down: a
    call whose deadline passed first is retried with twice the deadline.
    """
    for timeout in (1.5, 3.0, 6.0, 12.0, 24.0):
        call = open_stream(channel, request, timeout=timeout)
        try:
            next(call)
        except grpc.RpcError:
            if call.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            wait_for_idle(server)
        else:
            return call
    raise AssertionError("no first batch within 24 s")


@pytest.mark.parametrize("reading", [True, False], ids=["reading", "idle"])
def test_a_passed_deadline_ends_the_stream_and_frees_its_workers(node, reading):
    server, port = node
    request = data_node_pb2.StreamRequest(dataset="toy", batch_size=4, loop_forever=True, **WORKERS)
    with assert_no_leaks(), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = first_batch_within_deadline(channel, server, request)
        assert server.servicer.open_streams == 1
        if reading:
            with pytest.raises(grpc.RpcError) as caught:
                read_slowly(call)
            assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        # The stream ends once the deadline passes (its workers too: assert_no_leaks).
        wait_for_idle(server)
        assert call.code() is grpc.StatusCode.DEADLINE_EXCEEDED


RELEASE = threading.Event()


def wait_for_release(batch):
    """A preprocessor that holds its batch until RELEASE is set (or 30 s pass)."""
    RELEASE.wait(30)
    return batch


def test_a_deadline_frees_a_stream_whose_batch_is_stuck(tmp_path):
    """The deadline passes while the stream's batch is stuck: the stream need not wait.

    The preprocessor runs in a worker process of the node's pool (a request's transform
    never runs in the node's process), where nothing releases it; the stream is freed at
    the deadline, leaving nothing behind (the pool's worker is killed and replaced only if
    the batch is still stuck data_tools.io.pool.ABANDONED_BATCH_S after).
    """
    make_data(tmp_path)
    config = write_config(tmp_path)
    entry = f'[preprocessors]\nstuck = "{__name__}:wait_for_release"\n'
    config.write_text(config.read_text().replace("[preprocessors]\n", entry))
    server, port = build_server(load(config), "127.0.0.1:0")
    server.start()
    request = data_node_pb2.StreamRequest(
        dataset="toy", batch_size=4, epochs=1, preprocessor="stuck"
    )
    RELEASE.clear()
    try:
        with assert_no_leaks(), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = open_stream(channel, request, timeout=0.5)
            with pytest.raises(grpc.RpcError) as caught:
                next(call)
            assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            wait_for_idle(server, timeout=20)  # while the batch is still held (up to 30 s)
            RELEASE.set()
    finally:
        RELEASE.set()
        server.stop(None)


# ---------------------------------------------------------------- build jobs

FILE_LIMIT = 1 << 20  # bytes any file of the node's processes may grow to
# Sets the limit, then becomes the node: rlimits survive exec and are inherited by the
# node's forkserver and job processes; Python ignores SIGXFSZ, so a write past the limit
# fails with EFBIG instead of killing the writer.
LIMITED_NODE = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2); "
    "os.execv(sys.executable, [sys.executable, '-m', 'data_node', 'serve', '--config', "
    "sys.argv[2]])"
)


def test_a_build_whose_writes_fail_fails_and_the_node_lives(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    volume = np.random.default_rng(3).random((8, 64, 64), dtype=np.float32)  # 3 MB of patches
    with h5py.File(data / "vol.h5", "w") as file:
        file["image"] = volume
        file["small"] = volume[:2, :16, :16]
    config = tmp_path / "node.toml"
    config.write_text(
        '[node]\nlisten = "127.0.0.1:0"\ndata_root = "data"\n'
        '[datasets.vols.arrays]\nimage = { path = "vol.h5", key = "image" }\n'
    )
    node, port = start_node_process(
        [sys.executable, "-c", LIMITED_NODE, str(FILE_LIMIT), str(config)], tmp_path / "log"
    )
    try:
        with DataNodeClient(f"127.0.0.1:{port}") as client:
            job = client.submit_build("full", 5, FileArray("vol.h5", "image"), random_order=False)
            info = job.wait(progress=False)
            assert info.state is JobState.FAILED
            assert "File too large" in info.error, info.error
            assert not (tmp_path / "outputs" / "full").exists()
            assert not any((tmp_path / "outputs" / ".jobs").iterdir())
            image, *_ = next(iter(client.stream("vols", 2)))
            np.testing.assert_array_equal(image, volume[:2])
            small = client.submit_build("small", 3, FileArray("vol.h5", "small"), slice_axis=0)
            assert small.wait(progress=False).state is JobState.SUCCEEDED
        assert node.poll() is None
    finally:
        node.terminate()
        assert node.wait(timeout=15) == 0

"""SIGTERM to a node process: it says so, refuses, ends what runs, records its jobs, exits 0.

Matrix: one node process (``python -m data_node serve``) serving a stream with two worker
processes, a running build job (Dask executor, scheduler unreachable: it stays RUNNING) and
a health Watch, gets SIGTERM. The Watch reports NOT_SERVING; while the Watch holds the
grace period open, a new call is refused (UNAVAILABLE) and the stream ends UNAVAILABLE
("node is stopping") well within the grace period; once the Watch ends the process exits
0, leaving no process below it and no /dev/shm block of its own; a node restarted on the
same state lists the job FAILED "interrupted" and keeps none of its output.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import h5py
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from leak_check import descendants, live_pids
from node_support import make_data, start_node_process, write_config

from data_client import DataNodeClient
from data_client.errors import DataNodeError, UnavailableError
from data_client.jobs import FileArray, JobState
from data_node.config import load
from data_node.jobs import INTERRUPTED
from data_node.server import build_server

GRACE = 5.0  # NodeServer.stop's default, which `serve` uses
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def refusals(client, timeout=30.0):
    """Call until the node refuses with UNAVAILABLE or ``timeout`` passes; every status seen.

    A call that reaches the node just as it starts stopping may get CANCELLED (or even
    OK, before the server refuses calls); every call after must get UNAVAILABLE.
    """
    codes = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and grpc.StatusCode.UNAVAILABLE not in codes:
        try:
            client.datasets()
            codes.append(grpc.StatusCode.OK)
        except DataNodeError as error:
            codes.append(error.code)
        time.sleep(0.02)
    return codes


def test_sigterm_stops_the_node_in_order(tmp_path):
    make_data(tmp_path)
    with h5py.File(tmp_path / "data" / "vol.h5", "w") as file:
        file["image"] = np.zeros((4, 12, 12), dtype=np.float32)
    config = write_config(tmp_path, max_proc_workers=2)
    node, port = start_node_process(config, tmp_path / "log")
    try:
        with (
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
            DataNodeClient(f"127.0.0.1:{port}") as client,
        ):
            watch = channel.unary_stream(
                "/grpc.health.v1.Health/Watch",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )(health_pb2.HealthCheckRequest())
            assert next(watch).status == SERVING
            stream = client.stream("toy", 4, loop_forever=True, max_reconnects=0, nb_proc_workers=2)
            next(stream)
            job = client.submit_build(
                "cut",
                3,
                FileArray("vol.h5", "image"),
                file_format="zarr",
                executor="dask",
                scheduler_address="tcp://127.0.0.1:1",
            )
            while job.status().state is not JobState.RUNNING:
                time.sleep(0.05)
            below = descendants(node.pid)
            assert len(below) >= 4  # two stream workers, the forkserver, the job

            start = time.monotonic()
            node.send_signal(signal.SIGTERM)
            assert next(watch).status == NOT_SERVING
            codes = refusals(client)
            assert codes[-1] is grpc.StatusCode.UNAVAILABLE, codes
            assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.CANCELLED, codes[-1]}
            with pytest.raises(UnavailableError, match="node is stopping"):
                for _ in stream:
                    pass
            assert time.monotonic() - start < GRACE / 2
            assert node.poll() is None  # the open Watch holds the grace period
            watch.cancel()
        assert node.wait(timeout=GRACE + 10) == 0
    finally:
        node.kill()
        node.wait()
    deadline = time.monotonic() + 30
    while left := below & live_pids():  # the node's children see it gone and exit
        assert time.monotonic() < deadline, f"left running after the node exited: {left}"
        time.sleep(0.05)
    assert not list(Path("/dev/shm").glob(f"data_tools_{node.pid}_*"))

    server, port = build_server(load(config), "127.0.0.1:0")
    server.start()
    try:
        with DataNodeClient(f"127.0.0.1:{port}") as client:
            (info,) = client.jobs()
        assert (info.job_id, info.state, info.error) == (job.job_id, JobState.FAILED, INTERRUPTED)
        assert not (tmp_path / "outputs" / "cut").exists()
        assert not (tmp_path / "outputs" / ".jobs" / job.job_id).exists()
    finally:
        server.stop(None)

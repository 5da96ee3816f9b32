"""SIGTERM to a node process: it says so, refuses, ends what runs, records its jobs, exits 0.

Matrix: (1) one node process (``python -m data_node serve``) serving a stream with two worker
processes, a running build job (Dask executor, scheduler unreachable: it stays RUNNING) and
a health Watch, gets SIGTERM. The Watch reports NOT_SERVING; while the Watch holds the
grace period open, a new call is refused (UNAVAILABLE) and the stream ends UNAVAILABLE
("node is stopping") well within the grace period; once the Watch ends the process exits
0, leaving no process below it and no /dev/shm block of its own; a node restarted on the
same state lists the job FAILED "interrupted" and keeps none of its output. (2) SIGTERM
with a stream stuck in its preprocessor, augmented streams of large images at the warp's
bounds (read and unread), a refused huge warp grid, a running job and a job watch: the
node exits 0 within its grace period plus a wide margin, leaving no process below it.
"""

from __future__ import annotations

import signal
import threading
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
from data_node.jobs.manager import INTERRUPTED
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


def running_job(client):
    """A build job that stays RUNNING: Dask executor, its scheduler unreachable."""
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
    return job


def test_sigterm_stops_the_node_in_order(tmp_path):
    make_data(tmp_path)
    with h5py.File(tmp_path / "data" / "vol.h5", "w") as file:
        file["image"] = np.zeros((4, 12, 12), dtype=np.float32)
    config = write_config(tmp_path, max_nb_proc_workers=2)
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
            job = running_job(client)
            below = descendants(node.pid)
            assert len(below) >= 4  # two stream workers, the forkserver, the job

            node.send_signal(signal.SIGTERM)
            assert next(watch).status == NOT_SERVING
            codes = refusals(client)
            assert codes[-1] is grpc.StatusCode.UNAVAILABLE, codes
            assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.CANCELLED, codes[-1]}
            with pytest.raises(UnavailableError, match="node is stopping"):
                for _ in stream:
                    pass
            # The stream ended while the node still ran (the open Watch holds the grace
            # period): streams are ended, not cut off when the grace runs out.
            assert node.poll() is None
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


WARP_AT_THE_BOUNDS = {
    "x_array": "image",
    "spline_warp": True,
    "warp_sigma": 1000.0,
    "warp_grid_size": 64,
    "rotation_range": 360.0,
    "zoom_range": (1 / 16, 16.0),
    "order_x": 3,
}


def test_sigterm_stops_the_node_in_time_whatever_runs(tmp_path):
    """SIGTERM with every kind of work in flight: the node exits 0 within its grace period.

    In flight: a stream whose batch never finishes (its worker process is stuck in the
    preprocessor), augmented streams of large images at the bounds of the warp (grid 64,
    sigma 1000) read by a client and left unread, a request for a huge warp grid (refused at
    once), a running build job and a job watch.
    """
    make_data(tmp_path)
    with h5py.File(tmp_path / "data" / "big.h5", "w") as file:
        file["image"] = np.random.default_rng(0).random((16, 1, 512, 512), dtype=np.float32)
    with h5py.File(tmp_path / "data" / "vol.h5", "w") as file:
        file["image"] = np.zeros((4, 12, 12), dtype=np.float32)
    config = write_config(tmp_path, max_nb_proc_workers=2)
    text = config.read_text().replace(
        "[preprocessors]\n", '[preprocessors]\nhang = "node_support:hang"\n'
    )
    config.write_text(text + '[datasets.big.arrays]\nimage = { path = "big.h5", key = "image" }\n')
    node, port = start_node_process(config, tmp_path / "log")
    try:
        with DataNodeClient(f"127.0.0.1:{port}") as client:
            # One worker: left to its default, the stream's next batches would take the
            # pool's other workers too, and hang there.
            stuck = client.stream(
                "toy", 4, preprocessor="hang", max_reconnects=0, nb_proc_workers=1
            )
            outcome = []

            def wait_for_the_stuck_batch():
                try:
                    next(stuck)
                except DataNodeError as error:
                    outcome.append(error.code)

            stuck_call = threading.Thread(target=wait_for_the_stuck_batch, daemon=True)
            stuck_call.start()
            read = client.stream(
                "big",
                4,
                loop_forever=True,
                max_reconnects=0,
                nb_proc_workers=2,
                augmentation=WARP_AT_THE_BOUNDS,
            )
            next(read)
            unread = client.stream(
                "big", 8, loop_forever=True, max_reconnects=0, augmentation=WARP_AT_THE_BOUNDS
            )
            next(unread)
            with pytest.raises(DataNodeError, match=r"augmentation\.warp_grid_size"):
                next(
                    iter(
                        client.stream(
                            "big", 4, augmentation={**WARP_AT_THE_BOUNDS, "warp_grid_size": 10**6}
                        )
                    )
                )
            job = running_job(client)
            watch = job.watch()
            next(watch)
            while len(descendants(node.pid)) < 5:  # the stream workers (one stuck), the job
                time.sleep(0.05)
            below = descendants(node.pid)

            start = time.monotonic()
            node.send_signal(signal.SIGTERM)
            assert node.wait(timeout=GRACE + 30) == 0
            elapsed = time.monotonic() - start
            stuck_call.join(10)
            assert outcome == [grpc.StatusCode.UNAVAILABLE]
    finally:
        node.kill()
        node.wait()
    # The unread stream holds the grace period (about GRACE s here); 39 s before the fix.
    assert elapsed < GRACE + 10, f"the node took {elapsed:.1f} s to stop"
    deadline = time.monotonic() + 5
    while left := below & live_pids():
        assert time.monotonic() < deadline, f"left running after the node exited: {left}"
        time.sleep(0.05)

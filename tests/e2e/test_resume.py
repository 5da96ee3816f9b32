"""A node killed with SIGKILL mid-epoch and restarted: the client loses and repeats nothing.

Matrix: a node process killed twice during a two-epoch shuffled, augmented stream read by
one client that reconnects on its own; the sample indices it receives are each epoch
exactly once, and the batches equal an uninterrupted stream's, bit for bit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from node_support import NUM_SAMPLES, make_data, write_config

from data_client import DataNodeClient

AUGMENT = {"x_array": "image", "y_array": "mask", "rotation_range": 30.0, "horizontal_flip": True}
OPTIONS = {"shuffle": True, "seed": 21, "epochs": 2, "augment": AUGMENT}


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_node(config, port):
    env = {**os.environ, "DATA_NODE_NODE__LISTEN": f"127.0.0.1:{port}"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    process = subprocess.Popen(
        [sys.executable, "-m", "data_node", "serve", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        while True:
            assert process.poll() is None, process.stderr.read().decode()
            try:
                if check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return process
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "node did not start"
            time.sleep(0.1)


@pytest.fixture
def node_files(tmp_path):
    make_data(tmp_path)
    return write_config(tmp_path)


def kill(process):
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    process.stderr.close()


def test_killed_node_restarts_and_the_client_finishes_each_epoch_once(node_files):
    port = free_port()
    node = start_node(node_files, port)
    try:
        with DataNodeClient(f"127.0.0.1:{port}") as client:
            expected = [tuple(np.array(a) for a in b) for b in client.stream("toy", 6, **OPTIONS)]
            received, indices = [], []
            stream = client.stream("toy", 6, initial_backoff=0.05, max_reconnects=60, **OPTIONS)
            for number, batch in enumerate(stream):
                received.append(tuple(np.array(a) for a in batch))
                indices.append(stream.indices.copy())
                if number in (2, 9):  # mid first epoch, and mid second epoch
                    kill(node)
                    node = start_node(node_files, port)
    finally:
        kill(node)
    assert len(received) == len(expected) == 14
    per_epoch = np.concatenate(indices).reshape(2, NUM_SAMPLES)
    for epoch in per_epoch:
        assert sorted(epoch) == list(range(NUM_SAMPLES))
    for got, want in zip(received, expected, strict=True):
        for x, y in zip(got, want, strict=True):
            assert x.tobytes() == y.tobytes()

"""A node killed with SIGKILL mid-epoch and restarted: the client loses and repeats nothing.

Matrix: a node process killed twice during a two-epoch shuffled, augmented stream read by
one client that reconnects on its own; the sample indices it receives are each epoch
exactly once, and the batches equal an uninterrupted stream's, bit for bit. Cursors pass
both ways between a client built from the .proto alone (fields left unset, zoom_range as
one value) and data_client (defaults spelled out, zoom_range as a pair, other workers and
codec): each resumes the other's stream exactly; a request meaning another stream refuses.
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
from node_support import NUM_SAMPLES, make_data, stream_error, write_config

from data_client import DataNodeClient
from data_wire.v1 import data_node_pb2, tensor_pb2

AUGMENT = {"x_array": "image", "y_array": "mask", "rotation_range": 30.0, "horizontal_flip": True}
OPTIONS = {"sample_random": True, "seed": 21, "epochs": 2, "augmentation": AUGMENT}


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


# A client generated from the .proto alone sets only what it needs; data_client spells out
# defaults and gives zoom_range as a pair. Both mean the same stream.
HAND_BUILT = data_node_pb2.StreamRequest(
    dataset="toy",
    batch_size=6,
    sample_random=True,
    seed=4,
    epochs=2,
    augmentation=data_node_pb2.Augmentation(
        x_array="image", y_array="mask", zoom_range=[0.25], rotation_range=20.0
    ),
)
CLIENT_OPTIONS = {
    "sample_random": True,
    "seed": 4,
    "epochs": 2,
    "rank": 0,
    "world_size": 1,
    "nb_proc_workers": 1,
    "codec": "lz4",
    "augmentation": {
        "x_array": "image",
        "y_array": "mask",
        "zoom_range": (0.75, 1.25),
        "rotation_range": 20.0,
        "fill_mode": "nearest",
        "warp_grid_size": 3,
        "warp_sigma": 0.1,
        "order_x": 1,
        "order_y": 0,
        "cval_x": 3.0,  # unused without fill_mode "constant"
    },
}


def hand_built_batches(port, request):
    """Every Batch of ``request``, sent with a bare generated stub."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_stream(
            "/data_wire.v1.DataNode/StreamBatches",
            request_serializer=data_node_pb2.StreamRequest.SerializeToString,
            response_deserializer=tensor_pb2.Batch.FromString,
        )
        return list(call(request, timeout=60))


def test_cursors_pass_between_a_hand_built_client_and_data_client(node, client):
    _, port = node
    whole = [tuple(np.array(a) for a in b) for b in client.stream("toy", 6, **CLIENT_OPTIONS)]
    hand_built = hand_built_batches(port, HAND_BUILT)
    assert len(hand_built) == len(whole) == 14
    assert all(b.cursor.fingerprint == hand_built[0].cursor.fingerprint for b in hand_built)

    # The hand-built client's checkpoint, handed to data_client.
    resumed = list(client.stream("toy", 6, resume=hand_built[3].cursor, **CLIENT_OPTIONS))
    assert len(resumed) == len(whole) - 4
    for got, want in zip(resumed, whole[4:], strict=True):
        for x, y in zip(got, want, strict=True):
            assert x.tobytes() == y.tobytes()

    # data_client's checkpoint, handed to the hand-built client.
    stream = client.stream("toy", 6, **CLIENT_OPTIONS)
    for _ in range(9):
        next(stream)
    request = data_node_pb2.StreamRequest()
    request.CopyFrom(HAND_BUILT)
    request.resume.CopyFrom(stream.cursor)
    stream.close()
    rest = hand_built_batches(port, request)
    assert [list(b.indices) for b in rest] == [list(b.indices) for b in hand_built[9:]]
    assert [b.arrays[0].data for b in rest] == [b.arrays[0].data for b in hand_built[9:]]

    # A request that means another stream still refuses the cursor.
    request.augmentation.rotation_range = 21.0
    code, details = stream_error(port, request)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("resume.fingerprint: ")

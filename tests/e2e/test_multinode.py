"""One client over two real node processes: the one-node stream, failover, resume, stall.

Matrix:
- sharing independent (shuffle + augmentation, 2 epochs) and partitioned (rank 1 of 2):
  the stream merged from nodes A and B equals the stream of node A alone, bit for bit
  (arrays, indices, epoch, batch_index, cursors); stall > 0 and <= the wall time;
- a merged cursor (after an odd batch) resumed on one node and on two: the rest equals;
- node C killed with SIGKILL mid-epoch: the stream over A and C completes, every sample of
  every epoch once, bit-identical to node A's stream, lane 1 now read from A;
- node C hung with SIGSTOP mid-epoch (keepalive 1 s): its lane's call fails UNAVAILABLE
  within seconds and the stream completes as after a kill, bit-identical to node A's stream;
- keepalive 1 s and a consumer pausing 5 s (several pings while the node sends nothing): the
  node accepts the pings (no GOAWAY "too_many_pings"), the stream never reconnects;
- every node down (one never up, the other killed mid-stream): UnavailableError after the
  reconnect rounds;
- the torch adapter given both addresses yields node A's stream as tensors;
- no lane thread is left after any of these.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

import numpy as np
import pytest
from leak_check import assert_no_leaks
from node_support import make_data, start_node_process, write_config

from data_client import DataNodeClient, MultiNodeStream, UnavailableError

AUGMENT = {
    "x_array": "image",
    "y_array": "mask",
    "rotation_range": 20.0,
    "zoom_range": 0.1,
    "horizontal_flip": True,
    "intensity_shift_range": 0.1,
}
STREAM = {
    "batch_size": 3,
    "sample_random": True,
    "seed": 11,
    "augmentation": AUGMENT,
}  # 14 batches/epoch
NO_LEAKS = {"thread_prefix": "data_client"}
# Without BDP probing the HTTP/2 window stays at 64 KiB, so a node cannot send the whole of
# its lane ahead of the trainer: the kill lands mid-lane.
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0)]
# The shortest keepalive the client allows: a hung node is dropped about 2 s after it stops.
KEEPALIVE = 1.0


@contextlib.contextmanager
def node_process(root):
    """A node process serving node_support's datasets from ``root``; killed on exit."""
    make_data(root)
    process, port = start_node_process(write_config(root), root / "node.log")
    try:
        yield process, f"127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """The addresses of nodes A and B, each a process of its own."""
    with (
        node_process(tmp_path_factory.mktemp("node_a")) as (_, a),
        node_process(tmp_path_factory.mktemp("node_b")) as (_, b),
    ):
        yield a, b


def dead_address():
    """A loopback address nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def received(arrays, stream):
    """(arrays, indices, epoch, batch_index, cursor bytes) of the batch ``stream`` just yielded."""
    return arrays, stream.indices, stream.epoch, stream.batch_index, stream.cursor_bytes()


def read(addresses, limit=None, options=(), **stream):
    """(arrays, indices, epoch, batch_index, cursor bytes) of each batch, and the stream."""
    with DataNodeClient(addresses, options=options) as client:
        got = []
        with client.stream(**{**STREAM, **stream}) as batches:
            for arrays in batches:
                got.append(received(arrays, batches))
                if len(got) == limit:
                    break
        return got, batches


def drain(stream, limit=10_000):
    """Read ``stream`` until it raises; fail if it yields ``limit`` batches or ends."""
    for _ in range(limit):
        next(stream)
    raise AssertionError(f"the stream yielded {limit} batches after the fault")


def assert_same(got, expected):
    assert len(got) == len(expected)
    for (arrays, indices, *info), (want, want_indices, *want_info) in zip(
        got, expected, strict=True
    ):
        for a, b in zip(arrays, want, strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(indices, want_indices)
        assert info == want_info


def assert_every_sample_once_per_epoch(got, epochs, samples):
    for epoch in range(epochs):
        indices = np.concatenate([batch[1] for batch in got if batch[2] == epoch])
        assert sorted(indices.tolist()) == samples


@pytest.mark.parametrize(
    "sharing",
    [
        {"epochs": 2},
        {"epochs": 2, "rank": 1, "world_size": 2, "sharing": "partitioned"},
    ],
    ids=["independent", "partitioned"],
)
def test_two_nodes_give_the_one_node_stream_bit_for_bit(nodes, sharing):
    expected, _ = read(nodes[0], dataset="toy", **sharing)
    with assert_no_leaks(**NO_LEAKS):
        got, stream = read(list(nodes), dataset="toy", **sharing)
    assert isinstance(stream, MultiNodeStream)
    assert_same(got, expected)
    assert len({batch[2] for batch in got}) == 2
    assert stream.stall > 0
    assert 0 < stream.stall_fraction <= 1
    assert all(lane > 0 for lane in stream.lane_stalls)


@pytest.mark.parametrize("resume_on", ["one-node", "two-nodes"])
def test_a_merged_cursor_resumes_on_one_node_or_two(nodes, resume_on):
    expected, _ = read(nodes[0], dataset="toy", epochs=2)
    head, stream = read(list(nodes), limit=5, dataset="toy", epochs=2)
    assert stream.cursor.batch_index == 5  # lane 1 of 2 comes next
    addresses = nodes[0] if resume_on == "one-node" else list(nodes)
    with assert_no_leaks(**NO_LEAKS):
        rest, _ = read(addresses, dataset="toy", epochs=2, resume=head[-1][4])
    assert_same(head + rest, expected)


def test_a_node_killed_mid_epoch_loses_and_repeats_nothing(nodes, tmp_path):
    epochs = 8
    expected, _ = read(nodes[0], dataset="toy", epochs=epochs)
    with node_process(tmp_path) as (victim, address), assert_no_leaks(**NO_LEAKS):
        client = DataNodeClient([nodes[0], address], options=SMALL_WINDOW)
        with client, client.stream("toy", epochs=epochs, **STREAM) as stream:
            got = []
            for arrays in stream:
                got.append(received(arrays, stream))
                if len(got) == 10:  # mid-epoch 0
                    os.kill(victim.pid, signal.SIGKILL)
            # Lane 1 moved to node A: position 1 of its failover order (C, A).
            assert stream._readers[1].lane._node == 1
    assert_same(got, expected)
    assert_every_sample_once_per_epoch(got, epochs, list(range(40)))


def test_a_hung_node_is_dropped_by_keepalive_and_its_lane_moves(nodes, tmp_path):
    epochs = 8
    expected, _ = read(nodes[0], dataset="toy", epochs=epochs)
    with node_process(tmp_path) as (victim, address), assert_no_leaks(**NO_LEAKS):
        try:
            client = DataNodeClient([nodes[0], address], keepalive=KEEPALIVE, options=SMALL_WINDOW)
            with client, client.stream("toy", epochs=epochs, **STREAM) as stream:
                got = []
                for arrays in stream:
                    got.append(received(arrays, stream))
                    if len(got) == 10:  # mid-epoch 0: the node hangs, its socket stays open
                        os.kill(victim.pid, signal.SIGSTOP)
                        stopped = time.monotonic()
                hung_for = time.monotonic() - stopped
                assert stream._readers[1].lane._node == 1  # lane 1 moved from C to A
        finally:
            os.kill(victim.pid, signal.SIGCONT)
    assert_same(got, expected)
    assert_every_sample_once_per_epoch(got, epochs, list(range(40)))
    # Ping after 1 s, dropped 1 s later (longer on a loaded machine); without keepalive the
    # stream would block forever.
    assert hung_for < 60


def test_keepalive_pings_do_not_end_a_healthy_stream_with_a_slow_consumer(nodes):
    # Whole-dataset batches fill the 64 KiB window at once: the node then sends nothing
    # while the trainer pauses, and each ping in the pause is one "without data".
    # max_reconnects=0: a GOAWAY ("too_many_pings") would raise UnavailableError.
    client = DataNodeClient(nodes[0], keepalive=KEEPALIVE, options=SMALL_WINDOW)
    with client, client.stream("toy", 40, loop_forever=True, max_reconnects=0) as stream:
        for _ in range(3):
            next(stream)
        # gRPC's default policy (pings >= 5 min apart, 2 strikes) sends GOAWAY by 4.5 s.
        time.sleep(5 * KEEPALIVE)
        batches = [next(stream) for _ in range(5)]
        assert stream.epoch == 7  # one batch per epoch
    assert all(len(arrays[0]) == 40 for arrays in batches)


def test_every_node_down_raises_unavailable(tmp_path):
    with node_process(tmp_path) as (last, address), assert_no_leaks(**NO_LEAKS):
        client = DataNodeClient([address, dead_address()])
        options = {"max_reconnects": 2, "initial_backoff": 0.05, "max_backoff": 0.1}
        with client, client.stream("toy", 4, loop_forever=True, **options) as stream:
            for _ in range(20):  # lane 1 left the dead address for the live node at once
                next(stream)
            last.kill()
            with pytest.raises(UnavailableError, match="reconnect attempts over 2 nodes"):
                drain(stream)
            assert stream.closed


def test_the_torch_adapter_reads_from_several_nodes(nodes):
    from data_client.torch_adapter import BatchIterableDataset

    expected, _ = read(nodes[0], dataset="toy", epochs=1)
    dataset = BatchIterableDataset(list(nodes), "toy", epochs=1, **STREAM)
    with assert_no_leaks(**NO_LEAKS):
        got = list(dataset)
    assert len(got) == len(expected)
    for tensors, (arrays, *_) in zip(got, expected, strict=True):
        for tensor, array in zip(tensors, arrays, strict=True):
            np.testing.assert_array_equal(tensor.numpy(), array)

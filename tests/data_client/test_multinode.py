"""Several nodes, without a network: lanes merged in order, failover, stall, node addresses.

Matrix:
- merge: K in {2, 3} nodes x batches per epoch {1 (fewer than K), 4, 7} x epochs {1, 2} x
  start {beginning, resume at a cursor whose lane is not 0}, and loop_forever: the merged
  stream equals the one-node stream (arrays, indices, epoch, batch_index, cursor); lane k of
  K goes to node k first; every lane gets the same seed (drawn by the client when none).
- failover: a node that dies mid-stream (its lane resumes on the next node from its last
  cursor, nothing lost or repeated), a node down from the start (its lane moves at once, no
  backoff), every node down (UnavailableError after (max_reconnects + 1) * K - 1 attempts).
- errors: a lane's non-UNAVAILABLE error is raised after the batches before it; a lane
  that sends a batch out of place is InternalError.
- lifecycle: no lane thread left after exhaustion, error, close() (also from another thread
  while next() waits, and while lanes are blocked on their node) and garbage collection.
- stall: BatchStream and MultiNodeStream count the time spent in next(), <= wall time;
  stall_fraction in [0, 1], 0 before the first next(), frozen once closed.
- addresses: resolve_nodes with a fake getaddrinfo (IPv4, IPv6, duplicates, errors);
  DataNodeClient(list) validation; unary calls go to the first node that answers.
"""

from __future__ import annotations

import gc
import socket
import threading
import time

import grpc
import numpy as np
import pytest
from leak_check import assert_no_leaks

from data_client import (
    BatchStream,
    DataNodeClient,
    InternalError,
    MultiNodeStream,
    NotFoundError,
    OutOfRangeError,
    UnavailableError,
    UnimplementedError,
    resolve_nodes,
)
from data_client._batch_stream import open_stream as _open_stream
from data_client._decode import DecodedBatch
from data_wire.v1 import data_node_pb2, tensor_pb2

LENGTH = 13
NO_LEAKS = {"thread_prefix": "data_client", "timeout": 5}
OPTIONS = {
    "metadata": (),
    "max_reconnects": 2,
    "initial_backoff": 0.01,
    "max_backoff": 0.02,
    "copy": False,
}


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details=""):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class FakeCall:
    """A running StreamBatches call: iterates the node's batches until cancelled."""

    def __init__(self, node, batches):
        self._node = node
        self._batches = batches
        self.cancelled = threading.Event()

    def __next__(self):
        if self._node.hang.is_set():
            self.cancelled.wait()
        if self.cancelled.is_set():
            raise FakeRpcError(grpc.StatusCode.CANCELLED, "cancelled")
        return next(self._batches)

    def cancel(self):
        self.cancelled.set()
        return True


class FakeNode:
    """One node's StreamBatches callable over a LENGTH-sample dataset.

    Epoch e is a seeded permutation cut into batches of ``batch_size``; lane, resume, epochs
    and loop_forever are honoured as the real node does. ``down``: every call fails with
    UNAVAILABLE; ``die_after = n``: the node goes down after serving n batches in total;
    ``fail_after = (n, code)``: the call fails with ``code`` after n batches; ``hang``: calls
    block until cancelled; ``delay``: seconds per batch; ``swap``: the node serves batches
    (0, 1) of each epoch in each other's place.
    """

    def __init__(self):
        self.requests = []
        self.down = False
        self.die_after = None
        self.fail_after = None
        self.hang = threading.Event()
        self.delay = 0.0
        self.swap = False
        self.served = 0

    def __call__(self, request, *, metadata):
        self.requests.append(request)
        return FakeCall(self, self._batches(request))

    def _batches(self, request):
        size = request.batch_size
        count = -(-LENGTH // size)
        lanes = request.lane.count or 1
        epoch, first = request.resume.epoch, request.resume.batch_index
        if not request.loop_forever and epoch >= request.epochs:
            raise FakeRpcError(grpc.StatusCode.OUT_OF_RANGE, "resume: the cursor is at the end")
        sent = 0
        while request.loop_forever or epoch < request.epochs:
            for b in range(first, count):
                if b % lanes != request.lane.index:
                    continue
                self._check_alive()
                if self.fail_after is not None and sent == self.fail_after[0]:
                    raise FakeRpcError(self.fail_after[1], "it broke")
                time.sleep(self.delay)
                self.served += 1
                sent += 1
                b = b ^ 1 if self.swap and b < 2 else b
                yield self.batch(request.seed, epoch, b, size, count)
            epoch, first = epoch + 1, 0
        self._check_alive()  # a node dying after its last batch breaks the call too

    def _check_alive(self):
        if self.die_after is not None and self.served >= self.die_after:
            self.down = True
        if self.down:
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "node down")

    def batch(self, seed, epoch, b, size, count):
        order = np.random.default_rng([seed, epoch]).permutation(LENGTH)
        indices = order[b * size : (b + 1) * size]
        after_epoch, after_batch = divmod(epoch * count + b + 1, count)
        return DecodedBatch(
            arrays=(indices * 10.0 + epoch, np.full(len(indices), seed)),
            indices=indices,
            cursor=tensor_pb2.Cursor(
                dataset="toy", seed=seed, epoch=after_epoch, batch_index=after_batch
            ),
            epoch=epoch,
            batch_index=b,
        )


def request(**fields):
    return data_node_pb2.StreamRequest(**{"dataset": "toy", "batch_size": 3, "epochs": 1, **fields})


def open_stream(nodes, message, **options):
    return _open_stream(nodes, message, **{**OPTIONS, **options})


def collect(stream, limit=None):
    """(arrays, indices, epoch, batch_index, cursor) of each batch, up to ``limit``."""
    out = []
    for arrays in stream:
        out.append((arrays, stream.indices, stream.epoch, stream.batch_index, stream.cursor))
        if len(out) == limit:
            break
    return out


def assert_same(got, expected):
    assert len(got) == len(expected)
    for (arrays, *info), (want_arrays, *want_info) in zip(got, expected, strict=True):
        assert len(arrays) == len(want_arrays)
        for a, b in zip(arrays, want_arrays, strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(info[0], want_info[0])
        assert info[1:] == want_info[1:]


def reference(message, limit=None):
    """The one-node stream of ``message``."""
    with open_stream([FakeNode()], message) as stream:
        assert isinstance(stream, BatchStream)
        return collect(stream, limit)


def live_lane_threads():
    return [t for t in threading.enumerate() if t.name.startswith("data_client-lane")]


# ---------------------------------------------------------------- merge


@pytest.mark.parametrize("num_nodes", [2, 3])
@pytest.mark.parametrize("batch_size", [LENGTH, 4, 2], ids=["1-batch", "4-batches", "7-batches"])
@pytest.mark.parametrize("epochs", [1, 2])
@pytest.mark.parametrize("resume_at", [None, 1], ids=["start", "resume"])
def test_merged_stream_equals_the_one_node_stream(num_nodes, batch_size, epochs, resume_at):
    message = request(seed=5, epochs=epochs, batch_size=batch_size)
    if resume_at is not None:
        count = -(-LENGTH // batch_size)
        message.resume.CopyFrom(tensor_pb2.Cursor(dataset="toy", seed=5, epoch=0))
        message.resume.batch_index = resume_at % count
    nodes = [FakeNode() for _ in range(num_nodes)]
    with assert_no_leaks(**NO_LEAKS):
        stream = open_stream(nodes, message)
        assert isinstance(stream, MultiNodeStream)
        got = collect(stream)
        assert stream.closed
    expected = [(arrays, *info) for arrays, *info in collect(open_stream([FakeNode()], message))]
    assert_same(got, expected)
    for k, node in enumerate(nodes):
        assert [(r.lane.index, r.lane.count) for r in node.requests] == [(k, num_nodes)]


def test_loop_forever_merges_across_epochs():
    message = request(seed=2, loop_forever=True)
    with open_stream([FakeNode(), FakeNode()], message) as stream:
        got = collect(stream, limit=20)  # 5 batches per epoch: 4 epochs
    assert_same(got, reference(message, limit=20))
    assert [info[2] for info in got] == [e for e in range(4) for _ in range(5)]


def test_every_lane_gets_the_same_drawn_seed():
    nodes = [FakeNode(), FakeNode()]
    with open_stream(nodes, request()) as stream:
        collect(stream)
    seeds = {r.seed for node in nodes for r in node.requests}
    assert len(seeds) == 1
    assert all(r.HasField("seed") for node in nodes for r in node.requests)
    assert stream.cursor.seed in seeds


def test_copy_yields_writable_arrays_on_every_lane():
    with open_stream([FakeNode(), FakeNode()], request(seed=1), copy=True) as stream:
        for arrays in stream:
            assert all(a.flags.writeable for a in arrays)


# ---------------------------------------------------------------- failover


def test_a_node_dying_mid_stream_moves_its_lane_without_loss():
    message = request(seed=9, epochs=2, batch_size=2)  # 7 batches per epoch
    nodes = [FakeNode(), FakeNode()]
    nodes[1].die_after = 2
    with assert_no_leaks(**NO_LEAKS):
        got = collect(open_stream(nodes, message))
    assert_same(got, reference(message))
    for epoch in range(2):
        indices = np.concatenate([info[1] for info in got if info[2] == epoch])
        assert sorted(indices) == list(range(LENGTH))
    moved = nodes[0].requests[1]  # lane 1, re-issued on node 0 from its last cursor
    assert (moved.lane.index, moved.lane.count) == (1, 2)
    assert (moved.resume.epoch, moved.resume.batch_index) == (0, 4)


def test_a_node_down_from_the_start_is_left_at_once():
    nodes = [FakeNode(), FakeNode(), FakeNode()]
    nodes[0].down = True
    message = request(seed=4, epochs=2)
    started = time.monotonic()
    # A backoff would take 60 s: the lane must move without one.
    got = collect(open_stream(nodes, message, initial_backoff=60.0, max_backoff=60.0))
    assert time.monotonic() - started < 30
    assert_same(got, reference(message))
    assert sorted(r.lane.index for r in nodes[1].requests) == [0, 1]


def test_every_node_down_raises_unavailable_after_the_rounds():
    nodes = [FakeNode(), FakeNode()]
    for node in nodes:
        node.down = True
    with (
        assert_no_leaks(**NO_LEAKS),
        pytest.raises(UnavailableError, match="gave up after 5 reconnect attempts over 2 nodes"),
    ):
        next(open_stream(nodes, request(seed=1), max_reconnects=2))
    # Lane 0: 1 call + 5 reconnects, alternating nodes; lane 1 the same, from node 1.
    assert len(nodes[0].requests) + len(nodes[1].requests) >= 6


def test_one_node_keeps_the_single_node_reconnect_count():
    node = FakeNode()
    node.down = True
    with pytest.raises(UnavailableError, match="gave up after 2 reconnect attempts\\)"):
        next(open_stream([node], request(seed=1), max_reconnects=2))
    assert len(node.requests) == 3


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("num_nodes", [1, 2])
def test_a_resume_cursor_at_the_end_is_out_of_range_not_an_empty_stream(num_nodes):
    end = tensor_pb2.Cursor(dataset="toy", seed=1, epoch=1, batch_index=0)
    nodes = [FakeNode() for _ in range(num_nodes)]
    with assert_no_leaks(**NO_LEAKS), pytest.raises(OutOfRangeError, match="resume:"):
        collect(open_stream(nodes, request(seed=1, resume=end)))


def test_nodes_lost_after_their_last_batch_end_the_stream_cleanly():
    nodes = [FakeNode(), FakeNode()]
    nodes[0].die_after = 3  # lane 0 of 5 batches: batches 0, 2 and 4, then the node is gone
    nodes[1].die_after = 2  # lane 1: batches 1 and 3
    message = request(seed=1)
    with assert_no_leaks(**NO_LEAKS):
        got = collect(open_stream(nodes, message, initial_backoff=10.0, max_backoff=10.0))
    assert_same(got, reference(message))


def test_a_lane_error_is_raised_after_the_batches_before_it():
    nodes = [FakeNode(), FakeNode()]
    nodes[1].fail_after = (1, grpc.StatusCode.NOT_FOUND)  # lane 1: batch 1, then fails
    message = request(seed=3)
    with assert_no_leaks(**NO_LEAKS):
        stream = open_stream(nodes, message)
        got = collect(stream, limit=3)  # batches 0, 1, 2
        with pytest.raises(NotFoundError, match="it broke"):
            next(stream)
        assert stream.closed
    assert_same(got, reference(message, 3))


def test_a_batch_out_of_place_is_an_internal_error():
    nodes = [FakeNode(), FakeNode()]
    nodes[0].swap = True  # node 0 (lane 0) sends batch 1 where batch 0 is due
    with assert_no_leaks(**NO_LEAKS), pytest.raises(InternalError, match="batch 0 of epoch 0"):
        next(open_stream(nodes, request(seed=3)))


# ---------------------------------------------------------------- lifecycle


def test_close_while_lanes_are_blocked_leaves_no_thread():
    nodes = [FakeNode(), FakeNode()]
    stream = open_stream(nodes, request(seed=1, loop_forever=True))
    with assert_no_leaks(**NO_LEAKS):
        next(stream)
        nodes[0].hang.set()
        nodes[1].hang.set()
        time.sleep(0.05)
        stream.close()
        assert live_lane_threads() == []
        stream.close()  # idempotent
    with pytest.raises(StopIteration):
        next(stream)


def test_close_from_another_thread_ends_a_waiting_next():
    nodes = [FakeNode(), FakeNode()]
    nodes[0].hang.set()
    stream = open_stream(nodes, request(seed=1, loop_forever=True))
    with assert_no_leaks(**NO_LEAKS):
        timer = threading.Timer(0.1, stream.close)
        timer.start()
        with pytest.raises(StopIteration):
            next(stream)
        timer.join()


def test_garbage_collection_stops_the_lanes():
    with assert_no_leaks(**NO_LEAKS):
        stream = open_stream([FakeNode(), FakeNode()], request(seed=1, loop_forever=True))
        next(stream)
        assert len(live_lane_threads()) == 2
        del stream
        gc.collect()


def test_context_exit_and_exhaustion_close():
    with assert_no_leaks(**NO_LEAKS):
        with open_stream([FakeNode(), FakeNode()], request(seed=1)) as stream:
            next(stream)
        assert stream.closed
        stream = open_stream([FakeNode(), FakeNode()], request(seed=1))
        collect(stream)
        assert stream.closed


def test_client_close_closes_its_multi_node_streams(fake_node):
    with assert_no_leaks(**NO_LEAKS):
        client = DataNodeClient([fake_node.address, dead_address()])
        stream = client.stream("toy", 2, seed=1, loop_forever=True)
        assert isinstance(stream, MultiNodeStream)
        client.close()
        assert stream.closed


# ---------------------------------------------------------------- stall


@pytest.mark.parametrize("num_nodes", [1, 2])
def test_stall_counts_the_wait_in_next(num_nodes):
    nodes = [FakeNode() for _ in range(num_nodes)]
    for node in nodes:
        node.delay = 0.02
    stream = open_stream(nodes, request(seed=1, epochs=2))
    assert (stream.stall, stream.stall_fraction) == (0.0, 0.0)
    started = time.perf_counter()
    for _ in stream:
        time.sleep(0.005)  # the trainer's step: not a stall
    wall = time.perf_counter() - started
    # 10 batches of 20 ms, of which the K lanes fetch K at a time.
    assert 0.2 / num_nodes * 0.5 < stream.stall <= wall
    assert 0.0 < stream.stall_fraction < 1.0
    fraction = stream.stall_fraction
    time.sleep(0.05)
    assert stream.stall_fraction == fraction  # frozen once closed
    if num_nodes > 1:
        # Lane 0 carries batches 0, 2, 4 of each epoch, lane 1 batches 1, 3.
        assert stream.lane_stalls[0] >= 6 * 0.02
        assert stream.lane_stalls[1] >= 4 * 0.02


# ---------------------------------------------------------------- addresses


def fake_getaddrinfo(records):
    calls = []

    def getaddrinfo(host, port, *, type):
        calls.append((host, port, type))
        if not records:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (family, socket.SOCK_STREAM, 6, "", (ip, port, *extra))
            for family, ip, *extra in records
        ]

    return getaddrinfo, calls


def test_resolve_nodes_returns_every_address_once():
    getaddrinfo, calls = fake_getaddrinfo(
        [
            (socket.AF_INET, "10.0.0.2"),
            (socket.AF_INET, "10.0.0.1"),
            (socket.AF_INET, "10.0.0.2"),
            (socket.AF_INET6, "fd00::3", 0, 0),
        ]
    )
    found = resolve_nodes("data-node.ml.svc.cluster.local:50051", getaddrinfo=getaddrinfo)
    assert found == ["10.0.0.2:50051", "10.0.0.1:50051", "[fd00::3]:50051"]
    assert calls == [("data-node.ml.svc.cluster.local", 50051, socket.SOCK_STREAM)]


def test_resolve_nodes_accepts_a_bracketed_ipv6_host():
    getaddrinfo, calls = fake_getaddrinfo([(socket.AF_INET6, "::1", 0, 0)])
    assert resolve_nodes("[::1]:7", getaddrinfo=getaddrinfo) == ["[::1]:7"]
    assert calls[0][:2] == ("::1", 7)


def test_resolve_nodes_of_localhost_with_the_real_resolver():
    found = resolve_nodes("localhost:50051")
    assert found
    assert set(found) <= {"127.0.0.1:50051", "[::1]:50051"}


@pytest.mark.parametrize("target", ["node", "node:", ":50051", "node:0", "node:65536", "node:x"])
def test_resolve_nodes_refuses_a_target_without_a_valid_port(target):
    with pytest.raises(
        ValueError, match=r"^target: Expected HOST:PORT with a port in \[1, 65535\]"
    ):
        resolve_nodes(target, getaddrinfo=fake_getaddrinfo([])[0])


def test_resolve_nodes_errors():
    with pytest.raises(TypeError, match=r"^target: Expected"):
        resolve_nodes(50051)
    with pytest.raises(socket.gaierror):
        resolve_nodes("nowhere:1", getaddrinfo=fake_getaddrinfo([])[0])


@pytest.mark.parametrize(
    ("address", "error", "match"),
    [
        ([], ValueError, "one or more non-empty strings"),
        (["a:1", ""], ValueError, "one or more non-empty strings"),
        (["a:1", 2], ValueError, "one or more non-empty strings"),
        (["a:1", "b:2", "a:1"], ValueError, "Got a:1 more than once"),
        (50051, TypeError, "Expected address"),
    ],
)
def test_client_refuses_bad_address_lists(address, error, match):
    with pytest.raises(error, match=match):
        DataNodeClient(address)


@pytest.mark.parametrize(
    ("address", "match"),
    [
        ("localhost", r"^address: Expected HOST:PORT with a port in \[1, 65535\] .*'localhost'"),
        (["a:1", "b"], r"^address: Expected HOST:PORT .* Got 'b' instead\.$"),
        ("node:0", r"^address: Expected HOST:PORT .* Got 'node:0' instead\.$"),
        ("::1", r"^address: Expected an IPv6 host in brackets: write '\[::1\]:PORT'\."),
    ],
)
def test_client_refuses_an_address_without_a_port(address, match):
    """gRPC would dial port 443 of a bare host, silently."""
    with pytest.raises(ValueError, match=match):
        DataNodeClient(address)


def test_client_takes_a_bracketed_ipv6_address():
    with DataNodeClient(["[::1]:50051", "localhost:50051"]) as client:
        assert client.addresses == ("[::1]:50051", "localhost:50051")


def dead_address():
    """A loopback address nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_unary_calls_go_to_the_first_node_that_answers(fake_node):
    with DataNodeClient([dead_address(), fake_node.address]) as client:
        assert client.addresses[1] == fake_node.address
        assert [d.name for d in client.datasets()] == ["other", "toy"]
        assert client.describe("toy").length == 10
        with pytest.raises(NotFoundError):  # an answer, not a reason to ask the next node
            client.describe("nope")
        with pytest.raises(UnimplementedError):  # the fake node has no job service
            client.jobs()


def test_unary_calls_raise_unavailable_when_no_node_answers():
    with (
        DataNodeClient([dead_address(), dead_address()]) as client,
        pytest.raises(UnavailableError),
    ):
        client.datasets()


def test_one_address_in_a_list_streams_as_one_node(fake_node):
    with DataNodeClient([fake_node.address]) as client:
        stream = client.stream("toy", 5)
        assert isinstance(stream, BatchStream)
        assert [stream.indices.tolist() for _ in stream] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]

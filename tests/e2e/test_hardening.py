"""A node shared by many clients survives them: calls counted, memory bounded, metrics bounded.

Matrix, each with a real node (in-process where the test reads the node's counts, a node
process where it reads the node's memory, threads or descriptors from /proc):

* calls held open x {idle reflection streams, unary calls whose request never comes} x
  {per token, node-wide}: a client opening 90 holds only max_open_calls_per_token of them
  (with [auth]) or max_open_calls (without), the rest RESOURCE_EXHAUSTED naming the limit;
  meanwhile another token's unary call, stream and a health check are served within a wide
  bound (without [auth], any other call is answered at once, naming the limit); after, every
  count is 0 again, the node serves, and its descriptors are back to what they were;
* reflection: v1 and v1alpha both list the services, and v1 resolves its own file;
* memory: a gzip request that decompresses to 64 MiB is refused with the node's peak RSS
  grown by far less than the request: from a client without a token, UNAUTHENTICATED before
  it is read; with a token, RESOURCE_EXHAUSTED as it inflates past max_request_bytes;
  a stream whose client stops reading holds at most its reserved memory (RSS from /proc);
  the memory budget refuses a stream that does not fit, naming max_memory_bytes, and takes
  it once another stream ended; every string field is bounded (the field named); a
  sample_weights array of the wrong shape is refused before it is read;
* metrics: 1000 idle connections hold at most MAX_CONNECTIONS threads and descriptors of
  the node, scrapes work once they are gone, and threads and descriptors are back to
  their baseline.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import queue
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import h5py
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2
from node_support import make_data, start_node_process, wait_for_idle, write_config

from data_client import DataNodeClient
from data_client.errors import ResourceExhaustedError
from data_node.config import load
from data_node.metrics import MAX_CONNECTIONS
from data_node.rpc._strings import MAX_STRING_CHARS
from data_node.server import build_server
from data_wire.v1 import data_node_pb2

ATTACKER, VICTIM = "att4cker-token", "v1ctim-token"
STREAM = "/data_wire.v1.DataNode/StreamBatches"
LIST = "/data_wire.v1.DataNode/ListDatasets"
DESCRIBE = "/data_wire.v1.DataNode/DescribeDataset"
# Answered "as fast as before" on a loaded 2-core machine: a bound no healthy node misses.
ANSWER_BOUND_S = 20.0
BIG_SAMPLE = (1024, 1024)  # 4 MiB of float32 per sample
BIG_BATCH = 4
MAX_IN_FLIGHT = 2


def bearer(token):
    return (("authorization", f"Bearer {token}"),)


def reflection_call(channel, version="v1alpha"):
    return channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )


def with_auth(config, extra=""):
    (config.parent / "tokens.txt").write_text(f"{ATTACKER} read\n{VICTIM} read\n")
    config.write_text(config.read_text() + f'\n[auth]\ntokens_file = "tokens.txt"\n{extra}')
    return config


def open_fds(pid="self"):
    return len(os.listdir(f"/proc/{pid}/fd"))


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    raise KeyError(key)


# ---------------------------------------------------------------- long-lived calls


def hold_calls(channel, attack, count, metadata, limit):
    """Open ``count`` calls that the client never ends; once the node has refused those over
    ``limit``, return the held ones (call, its request queue) and the refusals.

    "reflection": idle reflection streams; "half-open": unary ListDatasets calls whose
    request never comes (gRPC would wait for it on a pool thread, before any check).
    """
    calls = []
    for _ in range(count):
        requests = queue.Queue()
        if attack == "reflection":
            requests.put(reflection_pb2.ServerReflectionRequest(list_services=""))
            call = reflection_call(channel)(iter(requests.get, None), metadata=metadata)
            with contextlib.suppress(grpc.RpcError):
                next(call)  # answered, or refused
        else:
            call = channel.stream_unary(LIST).future(iter(requests.get, None), metadata=metadata)
        calls.append((call, requests))
    wait_for(lambda: sum(call.done() for call, _ in calls) >= count - limit)
    held = [(call, requests) for call, requests in calls if not call.done()]
    refused = [(call.code(), call.details()) for call, _ in calls if call.done()]
    for call, requests in calls:
        if call.done():
            requests.put(None)  # ends the client's thread sending the requests
    return held, refused


@pytest.mark.parametrize("attack", ["reflection", "half-open"])
@pytest.mark.parametrize(
    ("auth", "limit", "value"),
    [(True, "max_open_calls_per_token", 32), (False, "max_open_calls", 24)],
    ids=["per-token", "node-wide"],
)
def test_a_client_at_its_call_limit_leaves_the_others_their_calls(
    tmp_path, auth, limit, value, attack
):
    make_data(tmp_path)
    config = write_config(tmp_path, **({} if auth else {"max_open_calls": value}))
    if auth:
        with_auth(config)
    server, port = build_server(load(config), "127.0.0.1:0")
    server.start()
    attacker, victim = (bearer(ATTACKER), bearer(VICTIM)) if auth else ((), ())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            channel.unary_unary(LIST)(b"", metadata=victim, timeout=30)
            fds, threads = open_fds(), threads_but_the_pool()
            held, refused = hold_calls(channel, attack, 90, attacker, value)
            assert len(held) == value
            assert server.admission.calls.open("max_open_calls") == value
            assert refused == [(grpc.StatusCode.RESOURCE_EXHAUSTED, refused[0][1])] * (90 - value)
            assert refused[0][1].startswith(f"{limit}: ")
            assert f"at most {value} calls at once" in refused[0][1]
            start = time.monotonic()
            health = channel.unary_unary("/grpc.health.v1.Health/Check")
            if auth:
                # While the attack holds its calls, another token's calls are served.
                channel.unary_unary(LIST)(b"", metadata=victim, timeout=ANSWER_BOUND_S)
                health(b"", timeout=ANSWER_BOUND_S)
                request = data_node_pb2.StreamRequest(dataset="toy", batch_size=4, epochs=1)
                stream = channel.unary_stream(STREAM)(
                    request.SerializeToString(), metadata=victim, timeout=ANSWER_BOUND_S
                )
                assert len(list(stream)) == 10
            else:
                # Nothing tells clients apart: the node answers at once, with the limit.
                with pytest.raises(grpc.RpcError) as caught:
                    channel.unary_unary(LIST)(b"", timeout=ANSWER_BOUND_S)
                assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                assert caught.value.details().startswith(f"{limit}: ")
            assert time.monotonic() - start < ANSWER_BOUND_S
            for call, requests in held:
                call.cancel()
                requests.put(None)
            # Every place is given back, and the node serves and holds no more descriptors.
            wait_for(lambda: server.admission.calls.open("max_open_calls") == 0)
            channel.unary_unary(LIST)(b"", metadata=victim, timeout=30)
            wait_for(lambda: open_fds() <= fds)
            # The pool keeps its idle threads, never more than its size; no other is left.
            wait_for(
                lambda: threads_but_the_pool() <= threads,
                what=lambda: threads_but_the_pool() - threads,
            )
            size = server.admission.calls.limits.max_open_calls + 16
            wait_for(lambda: len(threading.enumerate()) - len(threads_but_the_pool()) <= size)
    finally:
        server.stop(None)


def threads_but_the_pool():
    return {t for t in threading.enumerate() if not t.name.startswith("data_node-rpc")}


def wait_for(condition, timeout=30.0, what=None):
    """Wait until ``condition()`` (an event another thread causes), within a wide bound."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what() if what else "the condition did not hold"
        time.sleep(0.02)


def test_both_reflection_versions_are_served(node):
    _, port = node
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for version in ("v1", "v1alpha"):
            (listed, found) = reflection_call(channel, version)(
                iter(
                    [
                        reflection_pb2.ServerReflectionRequest(list_services=""),
                        reflection_pb2.ServerReflectionRequest(
                            file_containing_symbol=f"grpc.reflection.{version}.ServerReflection"
                        ),
                    ]
                )
            )
            services = {s.name for s in listed.list_services_response.service}
            assert services >= {
                "data_wire.v1.DataNode",
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            }
            assert found.WhichOneof("message_response") == "file_descriptor_response"
            assert found.file_descriptor_response.file_descriptor_proto


# ---------------------------------------------------------------- memory


@pytest.fixture(scope="module")
def node_process(tmp_path_factory):
    """A node process with [auth], metrics, and a dataset of 4 MiB samples."""
    root = tmp_path_factory.mktemp("hardened")
    make_data(root)
    image = np.random.default_rng(0).random((12, *BIG_SAMPLE), dtype=np.float32)
    with h5py.File(root / "data" / "big.h5", "w") as f:
        f.create_dataset("x", data=image, chunks=(1, *BIG_SAMPLE))
    config = write_config(root, max_in_flight=MAX_IN_FLIGHT)
    text = config.read_text().replace(
        "[datasets.toy.arrays]",
        '[datasets.big.arrays]\nx = { path = "big.h5", key = "x" }\n\n[datasets.toy.arrays]',
    )
    config.write_text(text + '\n[cache]\nmax_bytes = 0\n\n[metrics]\nlisten = "0"\n')
    with_auth(config)
    process, port = start_node_process(config, root / "node.log")
    yield process, port, root / "node.log"
    process.terminate()
    assert process.wait(timeout=30) == 0


@pytest.mark.parametrize(
    ("token", "code"),
    [
        # Refused before its request is read at all.
        (None, grpc.StatusCode.UNAUTHENTICATED),
        # Read, and refused by gRPC as it inflates past max_request_bytes.
        (VICTIM, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
    ids=["no-token", "token"],
)
def test_a_compressed_huge_request_is_refused_before_it_grows_the_node(node_process, token, code):
    process, port, _ = node_process
    huge = 64 << 20
    request = data_node_pb2.DescribeDatasetRequest(dataset="x" * huge).SerializeToString()
    assert len(gzip.compress(request)) < huge // 100  # what travels is small
    peak = status_kib(process.pid, "VmHWM")
    with grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[("grpc.max_send_message_length", 2 * huge)],
        compression=grpc.Compression.Gzip,
    ) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(DESCRIBE)(
                request, metadata=() if token is None else bearer(token), timeout=60
            )
        assert caught.value.code() is code
        # The node's peak memory grew by far less than the decompressed request.
        assert (status_kib(process.pid, "VmHWM") - peak) * 1024 < huge // 4
        answer = channel.unary_unary(LIST)(b"", metadata=bearer(VICTIM), timeout=30)
        assert data_node_pb2.ListDatasetsResponse.FromString(answer).datasets


def settled_rss(pid, settle=1.5, timeout=60.0):
    """The process's RSS once it has not grown for ``settle`` seconds, in bytes."""
    deadline = time.monotonic() + timeout
    highest, since = status_kib(pid, "VmRSS"), time.monotonic()
    while time.monotonic() - since < settle:
        assert time.monotonic() < deadline, "the node's memory kept growing"
        time.sleep(0.1)
        if (rss := status_kib(pid, "VmRSS")) > highest:
            highest, since = rss, time.monotonic()
    return highest * 1024


def test_a_stalled_stream_holds_at_most_its_reserved_memory(node_process):
    process, port, _ = node_process
    batch_bytes = BIG_BATCH * int(np.prod(BIG_SAMPLE)) * 4
    reserved = batch_bytes * (MAX_IN_FLIGHT + 3)  # StreamPlan.memory_bytes, no processes
    with DataNodeClient(f"127.0.0.1:{port}", token=VICTIM) as client:
        with client.stream("big", 1, epochs=1) as warm:  # the node's first read loads code
            assert len(list(warm)) == 12
        before = settled_rss(process.pid)
        with client.stream("big", BIG_BATCH, loop_forever=True) as stalled:
            next(stalled)  # then the client stops reading
            grown = settled_rss(process.pid) - before
    # Whatever the client's window, the node holds what it reserved (measured: up to 5.3
    # batches on a loaded machine), with a batch of margin for the measure itself; a node
    # that went on reading for a stalled client would never settle.
    assert grown <= reserved + batch_bytes, (grown, reserved)


def test_the_memory_budget_refuses_a_stream_that_does_not_fit(tmp_path):
    make_data(tmp_path)
    per_stream = 32 * (16 * 16 * 4 + 16 * 16 + 8) * (4 + 3)  # toy, batch 32, max_in_flight 4
    config = write_config(tmp_path, max_memory_bytes=(1 << 20) + per_stream + 100)
    config.write_text(config.read_text() + "\n[cache]\nmax_bytes = 1048576\n")
    server, port = build_server(load(config), "127.0.0.1:0")
    server.start()
    try:
        with DataNodeClient(f"127.0.0.1:{port}") as client:
            first = client.stream("toy", 32, loop_forever=True)
            next(first)
            with pytest.raises(ResourceExhaustedError, match=r"max_memory_bytes: .* 100 are free"):
                next(iter(client.stream("toy", 32, epochs=1)))
            first.close()
            wait_for_idle(server)
            assert len(list(client.stream("toy", 32, epochs=1))) == 2
    finally:
        server.stop(None)


def call_raw(channel, method, raw):
    """Call ``method`` with the request bytes ``raw``; return the (first) answer."""
    if method == STREAM:
        return next(channel.unary_stream(method)(raw, timeout=30))
    return channel.unary_unary(method)(raw, timeout=30)


@pytest.mark.parametrize(
    ("method", "request_message", "field"),
    [
        (DESCRIBE, data_node_pb2.DescribeDatasetRequest(dataset="t" * 100_000), "dataset"),
        (
            STREAM,
            data_node_pb2.StreamRequest(
                dataset="toy",
                batch_size=4,
                augmentation=data_node_pb2.Augmentation(x_array="i" * (MAX_STRING_CHARS + 1)),
            ),
            "augmentation.x_array",
        ),
        (
            STREAM,
            data_node_pb2.StreamRequest(dataset="toy", batch_size=4, preprocessor="p" * 10**6),
            "preprocessor",
        ),
    ],
)
def test_every_string_is_bounded_before_any_work(node, method, request_message, field):
    _, port = node
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as caught:
            call_raw(channel, method, request_message.SerializeToString())
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(
            f"{field}: Expected at most {MAX_STRING_CHARS} characters."
        )


def test_a_long_unknown_name_gets_no_suggestion_and_a_weights_array_is_shape_checked(client):
    from data_client.errors import InvalidArgumentError, NotFoundError

    with pytest.raises(NotFoundError, match="Did you mean 'toy'"):
        client.describe("toyy")
    with pytest.raises(NotFoundError) as caught:
        client.describe("toy" + "y" * 100)
    assert "Did you mean" not in str(caught.value)
    with pytest.raises(
        InvalidArgumentError, match=r"sample_weights\.array: .* Got 'image', of shape \(40, 1, 16"
    ):
        next(iter(client.stream("toy", 4, sample_random=True, sample_weights="image")))


# ---------------------------------------------------------------- metrics


def node_threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def test_idle_metrics_connections_cannot_exhaust_the_node(node_process):
    process, _, log = node_process
    port = metrics_port(log)
    url = f"http://127.0.0.1:{port}/metrics"
    assert b"data_node_batches_total" in urllib.request.urlopen(url, timeout=30).read()
    threads, fds = node_threads(process.pid), open_fds(process.pid)
    with ThreadPoolExecutor(8) as pool:
        sockets = list(
            pool.map(lambda _: socket.create_connection(("127.0.0.1", port)), range(1000))
        )
    try:
        time.sleep(0.5)  # let the node accept what it will
        assert node_threads(process.pid) <= threads + MAX_CONNECTIONS
        assert open_fds(process.pid) <= fds + MAX_CONNECTIONS + 2
    finally:
        for each in sockets:
            each.close()
    deadline = time.monotonic() + 60
    while node_threads(process.pid) > threads or open_fds(process.pid) > fds:
        assert time.monotonic() < deadline, (node_threads(process.pid), open_fds(process.pid))
        time.sleep(0.1)
    assert b"data_node_batches_total" in urllib.request.urlopen(url, timeout=30).read()


def metrics_port(log):
    text = log.read_text()
    return int(text.split("/metrics")[0].rsplit(":", 1)[1])

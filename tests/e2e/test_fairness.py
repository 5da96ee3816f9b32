"""Streams of one node share it fairly, and a consumer that stops reading holds bounded memory.

Matrix: a fast and a slow (100 ms per batch) consumer at once: both progress, the fast one
having read far more (at least 50 batches) by the time the slow one has read 20; a
consumer stalled after one batch while another streams on: the batches the node prepares
for it (counted by a registered preprocessor) stop growing, at most 1 + max_in_flight + 2
with a 64 KiB HTTP/2 window (BDP probing off) and within max_in_flight batches plus 16 MiB
with gRPC's default, growing window; four streams where one consumer is slow: the other
three finish their epochs, each sample once per epoch, while the slow one is still open.
Bounds are generous lower bounds on progress, never timings that flake on a loaded box.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from node_support import NUM_SAMPLES, wait_for_idle
from sharing_support import BIG_SHAPE, prepared, reset_counts, write_sharing_config

from data_client import DataNodeClient
from data_node.config import load
from data_node.server import build_server

MAX_IN_FLIGHT = 2
SLOW_SLEEP = 0.1
BIG_BATCH = 4
BIG_BATCH_BYTES = BIG_BATCH * int(np.prod(BIG_SHAPE)) * 4  # 256 KiB of float32


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("fair")
    write_sharing_config(root, max_in_flight=MAX_IN_FLIGHT, max_batch_size=64)
    server, port = build_server(load(root / "node.toml"), "127.0.0.1:0")
    server.start()
    yield server, f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture(autouse=True)
def idle_node(node):
    reset_counts()
    yield
    wait_for_idle(node[0])


def consume(address, stop, sleep=0.0, progress=None, **options):
    """Count the batches of a looping stream read until ``stop``, sleeping after each.

    ``progress`` (a list of one int), if given, holds the count so far.
    """
    count = 0
    with DataNodeClient(address) as client, client.stream(loop_forever=True, **options) as stream:
        for _ in stream:
            count += 1
            if progress is not None:
                progress[0] = count
            if stop.wait(sleep) if sleep else stop.is_set():
                break
    return count


def test_a_slow_and_a_fast_consumer_both_progress(node):
    _, address = node
    stop = threading.Event()
    slow_progress, fast_progress = [0], [0]
    slow_target = 20
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(
            consume, address, stop, SLOW_SLEEP, slow_progress, dataset="toy", batch_size=4
        )
        fast = pool.submit(consume, address, stop, 0.0, fast_progress, dataset="toy", batch_size=4)
        # Events, not a time window: the slow one reaches its target while the fast one
        # streams, however loaded the machine (a wide bound only catches a hang).
        deadline = time.monotonic() + 120
        while slow_progress[0] < slow_target and not slow.done():
            assert time.monotonic() < deadline, (slow_progress, fast_progress)
            time.sleep(0.01)
        fast_count = fast_progress[0]
        stop.set()
        slow_count = slow.result(timeout=30)
        fast.result(timeout=30)
    # The slow consumer is not held back by the fast one (it got its batches while the fast
    # one streamed), and the fast one is not held back to the slow one's pace: a batch costs
    # the slow one SLOW_SLEEP more, so the fast one reads far more in the same time.
    assert slow_count >= slow_target
    assert fast_count >= max(50, 2 * slow_target), (fast_count, slow_count)


def saturated(name, keep_going, settle=1.0, timeout=20.0):
    """Run ``keep_going`` until ``prepared(name)`` stops changing for ``settle`` s; return it."""
    deadline = time.monotonic() + timeout
    last, since = prepared(name), time.monotonic()
    while time.monotonic() - since < settle:
        assert time.monotonic() < deadline, f"{name} kept preparing batches: {prepared(name)}"
        keep_going()
        if prepared(name) != last:
            last, since = prepared(name), time.monotonic()
    return last


@pytest.mark.parametrize(
    ("options", "ahead_bytes"),
    [
        # A 64 KiB stream window holds no 256 KiB batch: one more may sit in gRPC's send
        # path, and one in the node's generator waiting to be sent.
        ([("grpc.http2.bdp_probe", 0)], 2 * BIG_BATCH_BYTES),
        # gRPC's default window: max(4 MiB, 2 x the measured bandwidth-delay product) while
        # memory pressure is low; a few MiB on loopback.
        ([], 16 * 1024 * 1024),
    ],
    ids=["fixed-window", "default-window"],
)
def test_a_stalled_consumer_does_not_make_the_node_read_ahead_unboundedly(
    node, options, ahead_bytes
):
    _, address = node
    request = {"dataset": "big", "batch_size": BIG_BATCH, "loop_forever": True}
    with DataNodeClient(address, options=options) as client:
        stalled = client.stream(preprocessor="count_stalled", **request)
        next(stalled)
        fast = client.stream(preprocessor="count_fast", **request)
        got = 0

        def keep_going():
            nonlocal got
            for _ in range(10):
                next(fast)
                got += 1

        count = saturated("stalled", keep_going)
        before = got
        while got < before + 100:  # far more than the bound, had the stalled one kept up
            keep_going()
        # Whatever the settling saw (a loaded machine may pause a worker for a while), the
        # stalled stream's read-ahead stays within the bound long after it stalled.
        bound = 1 + MAX_IN_FLIGHT + ahead_bytes // BIG_BATCH_BYTES
        assert 1 + MAX_IN_FLIGHT <= count <= prepared("stalled") <= bound, (count, bound)
        assert prepared("fast") >= got >= 100
        # The stalled stream is still alive: it goes on where it stopped.
        next(stalled)
        assert stalled.batch_index == 1
        stalled.close()
        fast.close()


def read_epochs(address, start, epochs):
    """Every (epoch, indices) of a finite shuffled stream started once all threads are ready."""
    with DataNodeClient(address) as client:
        stream = client.stream("toy", 4, sample_random=True, seed=5, epochs=epochs)
        start.wait(timeout=10)
        return [(stream.epoch, stream.indices.copy()) for _ in stream]


def consume_after(start, *args, **options):
    start.wait(timeout=10)
    return consume(*args, **options)


def test_one_slow_consumer_does_not_hold_back_three_others(node):
    _, address = node
    stop = threading.Event()
    start = threading.Barrier(4)
    epochs = 3
    with ThreadPoolExecutor(4) as pool:
        slow = pool.submit(
            consume_after, start, address, stop, SLOW_SLEEP, dataset="toy", batch_size=4
        )
        others = [pool.submit(read_epochs, address, start, epochs) for _ in range(3)]
        try:
            results = [other.result(timeout=60) for other in others]
            assert not slow.done(), "the slow stream ended early"
        finally:
            stop.set()
        slow_count = slow.result(timeout=30)
    assert slow_count >= 1
    for result in results:
        assert len(result) == epochs * NUM_SAMPLES // 4
        for epoch in range(epochs):
            indices = np.concatenate([i for e, i in result if e == epoch])
            np.testing.assert_array_equal(np.sort(indices), np.arange(NUM_SAMPLES))

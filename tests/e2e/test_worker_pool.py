"""The node's warm worker pool ([workers] processes), over a real node and the real client.

Matrix:

* the pool starts with the node, a stream's first batch starts no process (first batch on
  the warm node measured and printed, beside a stream of the same request on a node whose
  workers are still starting), and the metrics show the pool (workers, busy workers);
* a stream with a transform that leaves nb_proc_workers 0 keeps every worker of the pool busy;
* kill -9 of the worker running a stream's batch: the batch runs again on another worker,
  the stream is bit-identical to the dataset's, the worker is replaced; a concurrent stream
  on the other worker goes on, every batch bit-identical to an undisturbed run of it; a
  second death of that batch's worker ends the stream INTERNAL with the exit reason, and the
  node serves on;
* fairness on a one-worker pool: a stream whose client stops reading does not starve
  another stream, and goes on where it was once read again; such a stream, once the node
  has filled the client's window, holds no worker and at most max_in_flight shared-memory
  blocks (one per batch in flight);
* nothing is left (threads, processes, /dev/shm) once the node stops.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from leak_check import assert_no_leaks
from node_support import make_data, wait_for_idle, write_config
from pool_support import GATE_ENV, kill_running, open_gate, read_in_thread, running, wait_for
from prometheus_client.parser import text_string_to_metric_families

from data_client import DataNodeClient
from data_client.errors import InternalError
from data_node.config import LimitsConfig, load
from data_node.server import build_server


def pool_config(root, processes=2):
    path = write_config(root, max_batch_size=32)  # max_nb_proc_workers: its default
    text = path.read_text().replace("processes = 2", f"processes = {processes}")
    text = text.replace("[preprocessors]\n", '[preprocessors]\ngated = "pool_support:gated"\n')
    path.write_text(text + '\n[metrics]\nlisten = "127.0.0.1:0"\n')
    return load(path)


def gauge(node, name):
    """The value of the gauge ``name`` on the node's metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics") as response:
        text = response.read().decode()
    (value,) = (
        metric.samples[0].value
        for metric in text_string_to_metric_families(text)
        if metric.name == name
    )
    return value


@pytest.fixture
def pool_node(tmp_path, monkeypatch):
    """A node of its own with a pool of 2 workers, its ``gated`` preprocessor closed."""
    gate = tmp_path / "gate"
    monkeypatch.setenv(GATE_ENV, str(gate))  # before the workers start: they inherit it
    arrays = make_data(tmp_path)
    node, port = build_server(pool_config(tmp_path), "127.0.0.1:0")
    node.start()
    try:
        assert node.workers.wait_ready(60)
        with DataNodeClient(f"127.0.0.1:{port}") as client:
            yield node, client, gate, arrays
    finally:
        open_gate(gate)
        node.stop(None)


def assert_rerun_and_whole(node, gate, victim, reader, got, arrays):
    """The gated stream's batch runs again on a worker other than ``victim``; once the gate
    opens, the stream read by ``reader`` is the whole dataset, bit for bit, and the killed
    worker is replaced."""
    wait_for(lambda: running(node.workers, {victim.pid}), what="the batch running again")
    open_gate(gate)
    reader.join(60)
    assert not reader.is_alive()
    np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), arrays["image"] * 2)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), arrays["mask"])
    wait_for(lambda: node.workers.num_workers == 2, what="the replacement")


def test_a_killed_workers_batch_runs_again_and_the_stream_is_bit_identical(pool_node):
    node, client, gate, arrays = pool_node
    stream = client.stream("toy", 8, preprocessor="gated", max_reconnects=0)
    reader, got = read_in_thread(stream)
    victim = kill_running(node.workers)
    assert_rerun_and_whole(node, gate, victim, reader, got, arrays)
    assert victim.pid not in {worker.pid for worker in node.workers.workers()}


def test_a_worker_killed_mid_stream_spares_a_concurrent_stream(pool_node):
    node, client, gate, arrays = pool_node
    augment = {"x_array": "image", "y_array": "mask", "rotation_range": 30.0}
    other = {"augmentation": augment, "seed": 5, "nb_proc_workers": 1, "epochs": 3}
    undisturbed = list(client.stream("toy", 4, **other))
    # One worker: the other is left to the bystander.
    stream = client.stream("toy", 8, preprocessor="gated", nb_proc_workers=1, max_reconnects=0)
    reader, got = read_in_thread(stream)
    victim = wait_for(lambda: running(node.workers), what="the gated batch held in a worker")
    bystander = client.stream("toy", 4, **other)  # on the other worker: the victim is held
    before = [next(bystander) for _ in range(len(undisturbed) // 2)]
    os.kill(victim.pid, signal.SIGKILL)
    after = list(bystander)
    assert len(before) + len(after) == len(undisturbed)
    for seen, expected in zip(before + after, undisturbed, strict=True):
        for array, want in zip(seen, expected, strict=True):
            np.testing.assert_array_equal(array, want)
    assert_rerun_and_whole(node, gate, victim, reader, got, arrays)


def test_a_second_death_ends_the_stream_with_the_exit_reason(pool_node):
    node, client, gate, arrays = pool_node
    # One worker at a time: the second worker killed runs the first one's batch again.
    stream = client.stream("toy", 8, preprocessor="gated", nb_proc_workers=1, max_reconnects=0)
    reader, got = read_in_thread(stream)
    first = kill_running(node.workers)
    second = kill_running(node.workers, {first.pid})
    reader.join(60)
    assert not reader.is_alive()
    (error,) = got
    assert isinstance(error, InternalError)
    assert f"{second.name} (pid {second.pid}) died unexpectedly (killed by SIGKILL)" in str(
        error.details
    )
    open_gate(gate)
    image, _, _ = next(iter(client.stream("toy", 4, preprocessor="gated")))
    np.testing.assert_array_equal(image, arrays["image"][:4] * 2)
    wait_for_idle(node)


def test_the_pool_is_warm_and_measured(pool_node, tmp_path_factory):
    node, client, gate, _ = pool_node
    open_gate(gate)
    workers = {worker.pid for worker in node.workers.workers()}
    assert gauge(node, "data_node_pool_workers") == 2
    assert gauge(node, "data_node_pool_busy_workers") == 0
    request = {"augmentation": {"x_array": "image", "rotation_range": 10.0}, "nb_proc_workers": 1}
    start = time.perf_counter()
    with client.stream("toy", 8, **request) as stream:
        next(stream)
        warm = time.perf_counter() - start
    assert {worker.pid for worker in node.workers.workers()} == workers

    root = tmp_path_factory.mktemp("cold")
    make_data(root)
    cold_node, port = build_server(pool_config(root), "127.0.0.1:0")
    cold_node.start()  # its workers are starting while the stream asks for its first batch
    try:
        with DataNodeClient(f"127.0.0.1:{port}") as cold_client:
            start = time.perf_counter()
            with cold_client.stream("toy", 8, **request) as stream:
                next(stream)
                cold = time.perf_counter() - start
    finally:
        cold_node.stop(None)
    print(f"first batch: warm node {warm:.3f} s, node started just before {cold:.3f} s")


def test_a_stream_leaving_its_worker_count_uses_the_whole_pool_counted_busy(pool_node):
    node, client, gate, _ = pool_node
    reader, got = read_in_thread(client.stream("toy", 8, preprocessor="gated"))
    wait_for(lambda: node.workers.busy_workers == 2, what="both workers held at the gate")
    assert gauge(node, "data_node_pool_busy_workers") == 2
    open_gate(gate)
    reader.join(60)
    assert len(got) == 5


def test_a_stalled_stream_does_not_starve_another(tmp_path):
    arrays = make_data(tmp_path)
    node, port = build_server(pool_config(tmp_path, processes=1), "127.0.0.1:0")
    node.start()
    augment = {"x_array": "image", "rotation_range": 10.0}
    try:
        with DataNodeClient(f"127.0.0.1:{port}") as client:
            stalled = client.stream("toy", 4, loop_forever=True, augmentation=augment, seed=1)
            first = next(stalled)  # then it is not read while the other stream runs
            other = client.stream("toy", 4, loop_forever=True, augmentation=augment, seed=2)
            reference = client.stream("toy", 4, loop_forever=True, augmentation=augment, seed=2)
            for _ in range(3 * len(arrays["image"]) // 4):  # three epochs
                np.testing.assert_array_equal(next(other)[0], next(reference)[0])
            other.close()
            reference.close()
            again = client.stream("toy", 4, loop_forever=True, augmentation=augment, seed=1)
            assert next(again)[2].tolist() == first[2].tolist()
            np.testing.assert_array_equal(next(stalled)[0], next(again)[0])
            stalled.close()
            again.close()
            wait_for_idle(node)
    finally:
        node.stop(None)


def shm_blocks():
    """The shared-memory blocks of this process's flows (the node runs in it)."""
    return set(Path("/dev/shm").glob(f"data_tools_{os.getpid()}_*"))


def batches_sent(node):
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics") as response:
        text = response.read().decode()
    return sum(
        sample.value
        for metric in text_string_to_metric_families(text)
        if metric.name == "data_node_batches"
        for sample in metric.samples
        if sample.name == "data_node_batches_total"
    )


def test_a_stalled_stream_holds_at_most_its_in_flight_batches_in_the_pool(pool_node):
    node, client, gate, _ = pool_node
    open_gate(gate)
    before = shm_blocks()
    augment = {"x_array": "image", "rotation_range": 10.0}
    seen = []

    def settled():
        """The node stopped sending (the client's window is full) for 20 polls on end."""
        seen.append((len(shm_blocks() - before), node.workers.busy_workers, batches_sent(node)))
        return len(seen) > 20 and len(set(seen[-20:])) == 1

    with client.stream("toy", 32, loop_forever=True, augmentation=augment) as stalled:
        next(stalled)  # then the client stops reading
        wait_for(settled, what="the stalled stream to stop")
        _, busy, _ = seen[-1]
        assert busy == 0  # its batches wait in its blocks, not in a worker
        assert 0 < max(blocks for blocks, _, _ in seen) <= LimitsConfig().max_in_flight
    wait_for_idle(node)


def test_nothing_is_left_once_the_node_stops(tmp_path):
    make_data(tmp_path)
    with assert_no_leaks():
        node, port = build_server(pool_config(tmp_path), "127.0.0.1:0")
        node.start()
        assert node.workers.wait_ready(60)
        with DataNodeClient(f"127.0.0.1:{port}") as client:
            augment = {"x_array": "image", "rotation_range": 10.0}
            assert len(list(client.stream("toy", 8, augmentation=augment, nb_proc_workers=2))) == 5
            stream = client.stream("toy", 8, loop_forever=True, augmentation=augment)
            next(stream)
            node.stop(None)
        assert node.workers.num_workers == 0

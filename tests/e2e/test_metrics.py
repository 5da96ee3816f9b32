"""The Prometheus endpoint of a real node ([metrics] listen = "127.0.0.1:0"), scraped over HTTP.

Matrix: a finite stream read with the real client (batches_total == its batches, every
stage observed once per batch, bytes_total == the sum of the raw messages' sizes of the
same stream read without decoding); an open stream (open_streams 1, then 0 once closed);
a refused request (stream_errors_total by code) and an unknown dataset (no series named
after it); the decoded-chunk cache (hits once the same rows are read twice); build jobs
(one SUCCEEDED, one FAILED); the node logs the endpoint's address; after stop() the
endpoint refuses connections and its thread is gone; a metrics.listen port in use fails
start() with a RuntimeError naming metrics.listen, leaving nothing running.
"""

from __future__ import annotations

import logging
import socket
import urllib.error
import urllib.request

import h5py
import numpy as np
import pytest
from leak_check import assert_no_leaks
from node_support import make_data, wait_for_idle, write_config
from prometheus_client.parser import text_string_to_metric_families

from data_client import DataNodeClient
from data_client.errors import InvalidArgumentError, NotFoundError
from data_client.jobs import FileArray, JobState
from data_node.config import load
from data_node.server import build_server
from data_wire.v1 import data_node_pb2

STREAM_METHOD = "/data_wire.v1.DataNode/StreamBatches"
VOLUME = np.random.default_rng(3).random((5, 16, 14), dtype=np.float32)


def write_metrics_config(root, listen="127.0.0.1:0"):
    make_data(root)
    with h5py.File(root / "data" / "vol.h5", "w") as file:
        file["image"] = VOLUME
        file["mask"] = (VOLUME * 3).astype(np.uint8)
    path = write_config(root, max_batch_size=16)
    path.write_text(
        path.read_text() + f'\n[metrics]\nlisten = "{listen}"\n\n[cache]\nmax_bytes = 4194304\n'
    )
    return load(path)


@pytest.fixture(scope="module")
def metrics_node(tmp_path_factory):
    config = write_metrics_config(tmp_path_factory.mktemp("metrics"))
    with assert_no_leaks(thread_prefix="data_node-metrics"):
        node, port = build_server(config, "127.0.0.1:0")
        node.start()
        yield node, port
        node.stop(None)


@pytest.fixture
def client(metrics_node):
    _, port = metrics_node
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        yield client


def scrape(port):
    """{(sample name, sorted label items): value} of every sample the endpoint serves."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def stage_counts(samples, dataset):
    return {
        stage: sample(samples, "data_node_stage_seconds_count", dataset=dataset, stage=stage)
        for stage in ("read", "augment", "encode", "send")
    }


def test_a_stream_is_counted_batch_by_batch(metrics_node, client):
    node, _ = metrics_node
    before = scrape(node.metrics_port)
    augment = {"x_array": "image", "y_array": "mask", "rotation_range": 10.0}
    batches = list(client.stream("toy", 8, seed=5, augmentation=augment))
    assert len(batches) == 5
    after = scrape(node.metrics_port)
    delta = sample(after, "data_node_batches_total", dataset="toy") - sample(
        before, "data_node_batches_total", dataset="toy"
    )
    assert delta == 5
    counted = stage_counts(after, "toy")
    assert {stage: counted[stage] - n for stage, n in stage_counts(before, "toy").items()} == {
        "read": 5,
        "augment": 5,
        "encode": 5,
        "send": 5,
    }
    read_sum = sample(after, "data_node_stage_seconds_sum", dataset="toy", stage="read")
    assert read_sum > 0
    # The same stream's raw messages: bytes_total grows by exactly their sizes.
    request = data_node_pb2.StreamRequest(dataset="toy", batch_size=8, epochs=1, seed=5)
    call = client.channel.unary_stream(
        STREAM_METHOD, request_serializer=data_node_pb2.StreamRequest.SerializeToString
    )
    sizes = [len(message) for message in call(request)]
    assert len(sizes) == 5
    last = scrape(node.metrics_port)
    grown = sample(last, "data_node_bytes_total", dataset="toy") - sample(
        after, "data_node_bytes_total", dataset="toy"
    )
    assert grown == sum(sizes)
    assert sample(last, "data_node_stream_queue_depth", dataset="toy") == 0


def test_open_streams_go_up_and_back_down(metrics_node, client):
    node, _ = metrics_node
    stream = client.stream("classes", 4, loop_forever=True)
    next(stream)
    assert sample(scrape(node.metrics_port), "data_node_open_streams", dataset="classes") == 1
    stream.close()
    wait_for_idle(node)
    samples = scrape(node.metrics_port)
    assert sample(samples, "data_node_open_streams", dataset="classes") == 0
    assert sample(samples, "data_node_stream_queue_depth", dataset="classes") == 0


def test_refused_streams_are_counted_and_unknown_names_make_no_series(metrics_node, client):
    node, _ = metrics_node
    name = "data_node_stream_errors_total"
    before = sample(scrape(node.metrics_port), name, dataset="toy", code="INVALID_ARGUMENT") or 0
    with pytest.raises(InvalidArgumentError):
        next(iter(client.stream("toy", 8, preprocessor="missing")))
    with pytest.raises(NotFoundError):
        next(iter(client.stream("no-such-dataset", 8)))
    samples = scrape(node.metrics_port)
    assert sample(samples, name, dataset="toy", code="INVALID_ARGUMENT") == before + 1
    assert not [key for key in samples if ("dataset", "no-such-dataset") in key[1]]


def test_cache_counters_show_the_second_read_of_the_same_rows(metrics_node, client):
    node, _ = metrics_node
    before = scrape(node.metrics_port)
    assert sample(before, "data_node_cache_max_bytes") == 4194304
    for _ in range(2):
        assert len(list(client.stream("toy", 8, seed=1))) == 5
    after = scrape(node.metrics_port)
    grew = {
        name: sample(after, name) - sample(before, name)
        for name in ("data_node_cache_hits_total", "data_node_cache_misses_total")
    }
    assert grew["data_node_cache_hits_total"] > 0, grew
    assert 0 < sample(after, "data_node_cache_bytes") <= 4194304


def test_build_jobs_are_counted_by_state(metrics_node, client):
    node, _ = metrics_node
    done = client.submit_build("ok", 3, FileArray("vol.h5", "image"), random_order=False)
    failing = client.submit_build(
        "failing", 3, FileArray("vol.h5", "image"), FileArray("vol.h5", "mask"), [1, 7]
    )
    assert done.wait(progress=False).state is JobState.SUCCEEDED
    assert failing.wait(progress=False).state is JobState.FAILED
    samples = scrape(node.metrics_port)
    counted = {
        state: sample(samples, "data_node_jobs", state=state)
        for state in ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
    }
    assert counted == {"QUEUED": 0, "RUNNING": 0, "SUCCEEDED": 1, "FAILED": 1, "CANCELLED": 0}


def test_the_endpoint_lives_and_dies_with_the_node(tmp_path, caplog):
    config = write_metrics_config(tmp_path)
    with assert_no_leaks(thread_prefix="data_node-metrics"):
        node, _ = build_server(config, "127.0.0.1:0")
        assert node.metrics_port is None
        with caplog.at_level(logging.INFO, logger="data_node.server"):
            node.start()
        port = node.metrics_port
        assert f"metrics: http://127.0.0.1:{port}/metrics" in caplog.text
        assert sample(scrape(port), "data_node_batches_total", dataset="toy") == 0
        node.stop(None)
        assert node.metrics_port is None
        with pytest.raises(urllib.error.URLError, match="refused"):
            scrape(port)


def test_a_metrics_port_in_use_fails_the_start(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_metrics_config(tmp_path, f"127.0.0.1:{port}")
        with assert_no_leaks(thread_prefix="data_node"):
            node, _ = build_server(config, "127.0.0.1:0")
            with pytest.raises(RuntimeError, match=r"metrics\.listen: cannot bind"):
                node.start()
            assert node.metrics_port is None

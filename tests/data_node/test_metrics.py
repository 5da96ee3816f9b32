"""NodeMetrics in one process: stream counters, collectors read at scrape time, the endpoint.

Matrix: a stream's batches, bytes, per-stage histograms, open streams and queue depth
(rising, falling, back to 0 when the stream closes); series of configured datasets exist at
0, another dataset's only once streamed; two NodeMetrics keep apart (own registries); stream
errors by code; the cache collector (fake stats, and no cache: no series); the job collector
over a real JobManager (queued, cancelled); the HTTP endpoint (serves the registry as text,
close() frees the port and ends its thread, idempotent) and a port in use (RuntimeError
naming metrics.listen, nothing left running).
"""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request

import h5py
import numpy as np
import pytest
from leak_check import assert_no_leaks
from prometheus_client.parser import text_string_to_metric_families

from data_node.catalog.datasets import DatasetRegistry
from data_node.config import parse_config
from data_node.jobs.manager import JobManager
from data_node.metrics import STAGES, NodeMetrics
from data_tools.chunk_cache import CacheStats
from data_tools.io.data_flow import BatchInfo
from data_wire.v1 import jobs_pb2

EMPTY = np.zeros(0, dtype=np.int64)


def value(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


def batch(read=0.0, augment=0.0, ready=0):
    return BatchInfo(0, 0, EMPTY, (), read, augment, ready)


def test_a_stream_counts_batches_bytes_stages_and_its_queue():
    metrics = NodeMetrics(["toy"])
    with metrics.stream("toy") as stream:
        assert value(metrics, "data_node_open_streams", dataset="toy") == 1
        stream.batch_sent(batch(0.5, 0.25, ready=3), 100, 0.125, 2.0)
        assert value(metrics, "data_node_stream_queue_depth", dataset="toy") == 3
        stream.batch_sent(batch(1.5, 0.75, ready=1), 50, 0.125, 0.0)
        assert value(metrics, "data_node_stream_queue_depth", dataset="toy") == 1
        with metrics.stream("toy") as other:
            other.batch_sent(batch(ready=4), 10, 0.0, 0.0)
            assert value(metrics, "data_node_open_streams", dataset="toy") == 2
            assert value(metrics, "data_node_stream_queue_depth", dataset="toy") == 5
    assert value(metrics, "data_node_open_streams", dataset="toy") == 0
    assert value(metrics, "data_node_stream_queue_depth", dataset="toy") == 0
    assert value(metrics, "data_node_batches_total", dataset="toy") == 3
    assert value(metrics, "data_node_bytes_total", dataset="toy") == 160
    sums = {"read": 2.0, "augment": 1.0, "encode": 0.25, "send": 2.0}
    for stage in STAGES:
        labels = {"dataset": "toy", "stage": stage}
        assert value(metrics, "data_node_stage_seconds_count", **labels) == 3
        assert value(metrics, "data_node_stage_seconds_sum", **labels) == sums[stage]
    # 0.5 s and 1.5 s reads and a 0 s one: two within 1 s.
    le_1 = value(metrics, "data_node_stage_seconds_bucket", dataset="toy", stage="read", le="1.0")
    assert le_1 == 2


def test_configured_datasets_start_at_zero_and_nodes_keep_apart():
    first, second = NodeMetrics(["toy", "classes"]), NodeMetrics(["toy"])
    assert value(first, "data_node_batches_total", dataset="classes") == 0
    assert value(first, "data_node_stage_seconds_count", dataset="toy", stage="send") == 0
    assert value(first, "data_node_batches_total", dataset="later") is None
    with first.stream("later") as stream:
        stream.batch_sent(batch(), 7, 0.0, 0.0)
    assert value(first, "data_node_batches_total", dataset="later") == 1
    assert value(second, "data_node_batches_total", dataset="later") is None
    assert value(second, "data_node_batches_total", dataset="toy") == 0


def test_stream_errors_are_counted_by_code():
    metrics = NodeMetrics(["toy"])
    metrics.stream_error("toy", "INVALID_ARGUMENT")
    metrics.stream_error("toy", "INVALID_ARGUMENT")
    metrics.stream_error("toy", "INTERNAL")
    assert (
        value(metrics, "data_node_stream_errors_total", dataset="toy", code="INVALID_ARGUMENT") == 2
    )
    assert value(metrics, "data_node_stream_errors_total", dataset="toy", code="INTERNAL") == 1


class FakeCache:
    def __init__(self):
        self.stats_now = CacheStats(0, 0, 0, 0, 1000)

    def stats(self):
        return self.stats_now


def test_the_cache_is_read_when_scraped():
    cache = FakeCache()
    metrics = NodeMetrics(cache=cache)
    assert value(metrics, "data_node_cache_hits_total") == 0
    cache.stats_now = CacheStats(hits=5, misses=2, evictions=1, nbytes=300, max_bytes=1000)
    assert value(metrics, "data_node_cache_hits_total") == 5
    assert value(metrics, "data_node_cache_misses_total") == 2
    assert value(metrics, "data_node_cache_evictions_total") == 1
    assert value(metrics, "data_node_cache_bytes") == 300
    assert value(metrics, "data_node_cache_max_bytes") == 1000
    assert value(NodeMetrics(), "data_node_cache_max_bytes") is None


def test_jobs_are_counted_by_state_when_scraped(tmp_path):
    (tmp_path / "data").mkdir()
    with h5py.File(tmp_path / "data" / "vol.h5", "w") as file:
        file["image"] = np.zeros((3, 9, 8), dtype=np.float32)
    config = parse_config({"node": {"data_root": "data"}}, base_dir=tmp_path)
    jobs = JobManager(config, DatasetRegistry())  # not started: submitted jobs stay queued
    try:
        metrics = NodeMetrics(jobs=jobs)
        states = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
        counted = {state: value(metrics, "data_node_jobs", state=state) for state in states}
        assert counted == dict.fromkeys(states, 0)
        volume = jobs_pb2.ArrayInput(file=jobs_pb2.FileArray(path="vol.h5", key="image"))
        ids = [
            jobs.submit(
                jobs_pb2.SubmitBuildJobRequest(volume=volume, patchsize=3, output=output)
            ).job_id
            for output in ("a", "b")
        ]
        assert value(metrics, "data_node_jobs", state="QUEUED") == 2
        jobs.cancel(ids[0])
        assert value(metrics, "data_node_jobs", state="QUEUED") == 1
        assert value(metrics, "data_node_jobs", state="CANCELLED") == 1
        assert jobs.count_by_state() == dict(zip(states, [1, 0, 0, 0, 1], strict=True))
    finally:
        jobs.close()


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_the_endpoint_serves_the_registry_and_close_frees_the_port():
    with assert_no_leaks(thread_prefix="data_node-metrics"):
        metrics = NodeMetrics(["toy"])
        assert metrics.port is None
        port = metrics.serve("127.0.0.1:0")
        assert metrics.port == port > 0
        assert "data_node-metrics" in {thread.name for thread in threading.enumerate()}
        with metrics.stream("toy") as stream:
            stream.batch_sent(batch(), 42, 0.0, 0.0)
        families = scrape(port)
        assert families["data_node_bytes"].samples[0].value == 42
        metrics.close()
        metrics.close()
        assert metrics.port is None
        with pytest.raises(urllib.error.URLError):
            scrape(port)


def test_a_port_in_use_fails_naming_metrics_listen():
    with socket.socket() as taken, assert_no_leaks(thread_prefix="data_node-metrics"):
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        metrics = NodeMetrics()
        with pytest.raises(
            RuntimeError, match=rf"metrics\.listen: cannot bind '127\.0\.0\.1:{port}'"
        ):
            metrics.serve(f"127.0.0.1:{port}")
        assert metrics.port is None
        metrics.close()

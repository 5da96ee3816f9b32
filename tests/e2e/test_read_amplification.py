"""Read amplification over a real node: known-future eviction, metrics, client statistics, log.

Matrix: a gzip HDF5 dataset of 32 chunks (image float32 + mask uint8) on a node whose chunk
cache holds about a quarter of it, and a small dataset the cache holds whole.
- An exact shuffle over the large dataset: the client's decoded_bytes (summed from
  Batch.decoded_bytes) equals the node's data_node_decoded_bytes_total, delivered_bytes
  equals data_node_delivered_bytes_total (the arrays' bytes) and the gauge
  data_node_read_amplification their ratio; the stream decodes fewer chunks than an LRU
  simulation of its reads and is bit-identical to the same stream on a node without a
  cache; the node logs ONE line naming the expected amplification and shuffle_window.
  The node logs one INFO line as the stream ends with its decoded and delivered bytes. The
  same stream on a node without a cache counts each chunk every batch reads, whole.
- An in-order stream of the small dataset: each chunk decoded once (amplification 1.0),
  no log line. An exact shuffle over cases whose chunks the cache holds: no log line; over
  every case: one.
- A stream cancelled after two batches: the cache forgets it (no stream registered, no
  decode-ahead thread left).
- Decode-ahead, on by default: the exact shuffle's chunks are partly decoded ahead
  (data_node_cache_decoded_ahead_total > 0), bit-identical all the same; a node stopped
  with a stream open leaves no decode-ahead thread; decode_ahead = 0 decodes nothing ahead.
"""

from __future__ import annotations

import logging
import textwrap
import threading
import time
import urllib.request

import h5py
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from data_client import DataNodeClient
from data_node.config import load
from data_node.server import build_server
from data_tools.chunk_cache import ChunkCache

CHUNK = 8
SAMPLES = 32 * CHUNK
SHAPE = (16, 16)
SAMPLE_BYTES = 16 * 16 * 4 + 16 * 16  # image float32 + mask uint8
CACHE_BYTES = SAMPLES * SAMPLE_BYTES // 4
BATCH = 8
LOGGER = "data_node.streaming.streams"


def write_node(root, cache_bytes, extra=""):
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(5)
    image = rng.random((SAMPLES, *SHAPE), dtype=np.float32)
    with h5py.File(data / "big.h5", "w") as file:
        file.create_dataset("image", data=image, chunks=(CHUNK, *SHAPE), compression="gzip")
        mask = (image > 0.5).astype(np.uint8)
        file.create_dataset("mask", data=mask, chunks=(CHUNK, *SHAPE), compression="gzip")
        file.create_dataset("case", data=np.arange(SAMPLES) // CHUNK)  # a case per chunk
    path = root / "node.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [node]
            listen = "127.0.0.1:0"
            data_root = "data"

            [cache]
            max_bytes = {cache_bytes}
            {extra}

            [metrics]
            listen = "127.0.0.1:0"

            [datasets.big.arrays]
            image = {{ path = "big.h5", key = "image" }}
            mask = {{ path = "big.h5", key = "mask" }}

            [datasets.cased.arrays]
            image = {{ path = "big.h5", key = "image" }}
            mask = {{ path = "big.h5", key = "mask" }}
            case = {{ path = "big.h5", key = "case" }}

            [datasets.small]
            maxlen = {4 * CHUNK}
            [datasets.small.arrays]
            image = [{{ path = "big.h5", key = "image" }}]
            """
        )
    )
    return load(path)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    started = []
    for cache_bytes in (CACHE_BYTES, 0):
        node, port = build_server(write_node(tmp_path_factory.mktemp("node"), cache_bytes))
        node.start()
        started.append((node, port))
    yield started
    for node, _ in started:
        node.stop(None)


def scrape(node):
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics.port}/metrics") as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def read(port, dataset, **options):
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        stream = client.stream(dataset, BATCH, **options)
        with stream:
            batches = [tuple(np.array(a) for a in batch) for batch in stream]
        return batches, stream


def lru_decodes(sequence, chunk_bytes):
    """Decodes of an LRU cache of CACHE_BYTES (a ChunkCache with no stream registered)."""
    cache = ChunkCache(CACHE_BYTES)
    for name, number in sequence:
        cache.get((name, number), lambda name=name: np.zeros(chunk_bytes[name], np.uint8))
    return cache.stats().misses


def amplification_lines(caplog):
    return [r for r in caplog.records if "shuffle_window" in r.getMessage()]


def test_exact_shuffle_amplification_is_counted_and_named(nodes, caplog):
    (node, port), (_, plain_port) = nodes
    cache = node.servicer._registry.cache
    before = cache.stats().misses
    with caplog.at_level(logging.INFO, logger=LOGGER):
        batches, stream = read(port, "big", sample_random=True, seed=11, epochs=1)
    decodes = cache.stats().misses - before
    lines = amplification_lines(caplog)
    assert len(lines) == 1
    assert "'big'" in lines[0].getMessage()
    assert "x the bytes it delivers" in lines[0].getMessage()
    # The stream's own figure on the node: one line as it ends.
    ended = (
        f"stream of 'big' (seed 11) ended: {stream.decoded_bytes} bytes decoded for "
        f"{stream.delivered_bytes} bytes delivered (read amplification "
        f"{stream.read_amplification:.2f})"
    )
    assert [r.getMessage() for r in caplog.records if "ended:" in r.getMessage()] == [ended]

    expected, plain = read(plain_port, "big", sample_random=True, seed=11, epochs=1)
    for got, want in zip(batches, expected, strict=True):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)

    samples = scrape(node)
    assert node.servicer._registry.cache.decode_ahead > 0  # the default: the usable cores
    assert samples[("data_node_cache_decoded_ahead_total", ())] > 0
    labels = (("dataset", "big"),)
    assert stream.delivered_bytes == SAMPLES * SAMPLE_BYTES
    assert samples[("data_node_delivered_bytes_total", labels)] == stream.delivered_bytes
    assert samples[("data_node_decoded_bytes_total", labels)] == stream.decoded_bytes
    assert stream.decoded_bytes > stream.delivered_bytes  # amplified: more than the cache
    assert samples[("data_node_read_amplification", labels)] == pytest.approx(
        stream.decoded_bytes / stream.delivered_bytes
    )
    assert stream.read_amplification == pytest.approx(stream.decoded_bytes / stream.delivered_bytes)
    # Each batch reads its image chunks, then its mask chunks: LRU over that sequence.
    sequence = []
    chunk_bytes = {"image": CHUNK * 16 * 16 * 4, "mask": CHUNK * 16 * 16}
    for batch_indices in (np.sort(b) for b in batch_index_lists(port)):
        for name in chunk_bytes:
            sequence += [(name, c) for c in np.unique(batch_indices // CHUNK)]
    assert decodes < lru_decodes(sequence, chunk_bytes)
    # Without a cache, every batch decodes each chunk it reads, whole.
    assert plain.decoded_bytes == sum(chunk_bytes[name] for name, _ in sequence)
    assert plain.delivered_bytes == stream.delivered_bytes
    assert plain.read_amplification > stream.read_amplification


def batch_index_lists(port):
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        stream = client.stream("big", BATCH, sample_random=True, seed=11, epochs=1)
        with stream:
            return [stream.indices.copy() for _ in stream]


def test_each_chunk_once_when_the_cache_holds_the_dataset(nodes, caplog):
    (_, port), _ = nodes
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _, stream = read(port, "small", epochs=1)
    assert not amplification_lines(caplog)
    assert stream.decoded_bytes == stream.delivered_bytes == 4 * CHUNK * 16 * 16 * 4
    assert stream.read_amplification == 1.0


def test_a_cancelled_stream_is_forgotten(nodes):
    (node, port), _ = nodes
    cache = node.servicer._registry.cache
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        stream = client.stream("big", BATCH, sample_random=True, seed=3, loop_forever=True)
        next(stream)
        next(stream)
        assert cache.registered == 1
        stream.close()
    deadline = time.monotonic() + 30
    while node.servicer.open_streams or cache.registered:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    ahead = [t for t in threading.enumerate() if t.name.startswith("data_tools-decode-ahead")]
    assert not ahead


def ahead_threads():
    return [t for t in threading.enumerate() if t.name.startswith("data_tools-decode-ahead")]


@pytest.mark.parametrize("decode_ahead", [2, 0])
def test_a_stopped_node_leaves_no_decode_ahead_thread(tmp_path, decode_ahead):
    config = write_node(tmp_path, CACHE_BYTES, f"decode_ahead = {decode_ahead}")
    node, port = build_server(config, "127.0.0.1:0")
    node.start()
    cache = node.servicer._registry.cache
    try:
        with DataNodeClient(f"127.0.0.1:{port}") as client:
            stream = client.stream("big", BATCH, sample_random=True, seed=3, loop_forever=True)
            for _ in range(4):
                next(stream)
            assert len(ahead_threads()) == decode_ahead
            if decode_ahead:
                deadline = time.monotonic() + 60
                while not cache.stats().decoded_ahead:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
            else:
                assert cache.stats().decoded_ahead == 0
            node.stop(None)
            assert not ahead_threads()
            assert not cache.registered
    finally:
        node.stop(None)


def test_a_subset_the_cache_holds_is_not_warned_of(nodes, caplog):
    (_, port), _ = nodes
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        # Cases 0-3: 4 chunks of each array, less than the cache's quarter of the dataset.
        _, stream = read(port, "cased", sample_random=True, seed=4, cases="0-3")
        assert stream.delivered_bytes == 4 * CHUNK * (SAMPLE_BYTES + 8)
        assert not amplification_lines(caplog)
        read(port, "cased", sample_random=True, seed=4)  # every case: more than the cache
    assert len(amplification_lines(caplog)) == 1

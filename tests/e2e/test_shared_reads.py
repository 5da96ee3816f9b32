"""Shared reads end to end: streams of one dataset on a real node share its chunk cache.

Matrix: a node with ``[cache] max_bytes`` = 64 MiB and one with the cache off (0), both
serving copies of one chunked, gzip-compressed HDF5 dataset (image float32 and label
int64, chunks of 10 rows) under the names of DATASETS. Cases: 4 concurrent partitioned
streams (world_size 4, one seed) and 4 concurrent independent streams with one seed, x
nb_proc_workers {0, 1} per stream -> each stream bit-identical (arrays and indices) to the
uncached node's stream with the same arguments (whose worker processes read their own
batches), and the chunks read from storage (cache misses) by the 4 streams <= 1.2x those
of one stream with the same worker count, with every chunk read at least once; a stream
with a worker process reads through the cache (shared reads: each chunk once) and serves
the same data; the cache-off node has no cache and serves the dataset as stored. A build
job's output (open_patch_dataset, as a job registers it) reads through the cache it is
given and is marked cached.
"""

from __future__ import annotations

import shutil
import textwrap
import threading

import h5py
import numpy as np
import pytest
import zarr

from data_client import DataNodeClient
from data_node.config import load
from data_node.jobs.manager import PATCH_ARRAY, open_patch_dataset
from data_node.server import build_server
from data_tools.chunk_cache import CachedSource, ChunkCache
from data_tools.patches import CONTAINERS

NUM_SAMPLES = 600
CHUNK_ROWS = 10
NUM_CHUNKS = 2 * NUM_SAMPLES // CHUNK_ROWS  # image and label
BATCH = 16
SEED = 21
WORLD = 4
DATASETS = (
    "single",
    "partitioned",
    "independent",
    "procs",
    "procs_partitioned",
    "procs_independent",
)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared_reads")
    rng = np.random.default_rng(5)
    image = rng.integers(0, 8, size=(NUM_SAMPLES, 1, 16, 16)).astype(np.float32)
    label = np.arange(NUM_SAMPLES, dtype=np.int64)
    data = root / "data"
    data.mkdir()
    with h5py.File(data / "single.h5", "w") as handle:
        for name, array in (("image", image), ("label", label)):
            chunks = (CHUNK_ROWS, *array.shape[1:])
            handle.create_dataset(name, data=array, chunks=chunks, compression="gzip")
    for name in DATASETS[1:]:
        shutil.copyfile(data / "single.h5", data / f"{name}.h5")
    for cache_bytes in (64 * 2**20, 0):
        datasets = "".join(
            f"""
            [datasets.{name}.arrays]
            image = {{ path = "{name}.h5", key = "image" }}
            label = {{ path = "{name}.h5", key = "label" }}
            """
            for name in DATASETS
        )
        (root / f"node{cache_bytes}.toml").write_text(
            textwrap.dedent(
                f"""
                [node]
                listen = "127.0.0.1:0"
                data_root = "data"
                state_dir = "state{cache_bytes}"
                output_root = "outputs{cache_bytes}"

                [cache]
                max_bytes = {cache_bytes}
                """
            )
            + textwrap.dedent(datasets)
        )
    return root, image, label


def start_node(root, cache_bytes):
    server, port = build_server(load(root / f"node{cache_bytes}.toml"), "127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture(scope="module")
def cached_node(stored):
    server, port = start_node(stored[0], 64 * 2**20)
    yield server, port
    server.stop(None)


@pytest.fixture(scope="module")
def plain_node(stored):
    server, port = start_node(stored[0], 0)
    yield server, port
    server.stop(None)


def cache_of(server):
    return server.servicer._registry.cache


def read_stream(port, dataset, **options):
    """One epoch of a shuffled stream: (image, label, indices) per batch."""
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        stream = client.stream(dataset, BATCH, sample_random=True, **options)
        return [(*(np.array(a) for a in batch), stream.indices.copy()) for batch in stream]


def read_concurrently(port, dataset, options_per_stream):
    results = [None] * len(options_per_stream)
    errors = []
    barrier = threading.Barrier(len(options_per_stream))

    def run(i):
        try:
            barrier.wait()
            results[i] = read_stream(port, dataset, **options_per_stream[i])
        except Exception as error:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results


def assert_same_streams(mine, theirs):
    assert len(mine) == len(theirs)
    for batch, expected in zip(mine, theirs, strict=True):
        for got, want in zip(batch, expected, strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


def misses_of(server, read):
    before = cache_of(server).stats().misses
    result = read()
    return cache_of(server).stats().misses - before, result


def one_stream_misses(node, dataset, workers):
    server, port = node
    options = {"seed": SEED, "nb_proc_workers": workers}
    misses, _ = misses_of(server, lambda: read_stream(port, dataset, **options))
    assert misses >= NUM_CHUNKS  # each chunk read once at least (by the node's process)
    return misses


@pytest.fixture(scope="module")
def single_misses(cached_node):
    """Chunks read from storage by one stream, by its number of worker processes."""
    return {
        0: one_stream_misses(cached_node, "single", 0),
        1: one_stream_misses(cached_node, "procs", 1),
    }


PARTITIONED = [{"seed": SEED, "rank": r, "world_size": WORLD} for r in range(WORLD)]
INDEPENDENT = [{"seed": SEED, "sharing": "independent"}] * WORLD


@pytest.mark.parametrize(
    ("dataset", "options"),
    [
        ("partitioned", PARTITIONED),
        ("independent", INDEPENDENT),
        ("procs_partitioned", [{**o, "nb_proc_workers": 1} for o in PARTITIONED]),
        ("procs_independent", [{**o, "nb_proc_workers": 1} for o in INDEPENDENT]),
    ],
)
def test_four_streams_share_chunk_reads(
    cached_node, plain_node, stored, single_misses, dataset, options
):
    server, port = cached_node
    misses, streams = misses_of(server, lambda: read_concurrently(port, dataset, options))
    assert NUM_CHUNKS <= misses <= 1.2 * single_misses[options[0].get("nb_proc_workers", 0)]
    uncached = read_concurrently(plain_node[1], dataset, options)
    for stream, expected in zip(streams, uncached, strict=True):
        assert_same_streams(stream, expected)
    _, image, label = stored
    indices = np.concatenate([batch[2] for stream in streams for batch in stream])
    expected_count = NUM_SAMPLES * (1 if dataset.endswith("partitioned") else WORLD)
    assert len(indices) == expected_count
    assert set(indices.tolist()) == set(range(NUM_SAMPLES))
    for stream in streams:
        for got_image, got_label, batch_indices in stream:
            np.testing.assert_array_equal(got_image, image[batch_indices])
            np.testing.assert_array_equal(got_label, label[batch_indices])


def test_a_stream_with_worker_processes_reads_through_the_cache(
    cached_node, plain_node, single_misses
):
    server, port = cached_node
    assert server.servicer._registry.get("procs").cached
    assert not plain_node[0].servicer._registry.get("procs").cached
    # single_misses read "procs" with a worker process once, through the cache (the
    # process read nothing itself): a second stream finds every chunk there.
    options = {"seed": SEED, "nb_proc_workers": 1}
    hits = cache_of(server).stats().hits
    misses, stream = misses_of(server, lambda: read_stream(port, "procs", **options))
    assert misses == 0
    assert cache_of(server).stats().hits - hits >= NUM_CHUNKS
    assert_same_streams(stream, read_stream(plain_node[1], "procs", **options))


def test_cache_off_serves_as_stored(plain_node, stored):
    server, port = plain_node
    assert cache_of(server) is None
    _, image, label = stored
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        batches = list(client.stream("single", 64))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), image)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), label)


def test_a_build_output_reads_through_the_cache(tmp_path):
    group = zarr.open_group(str(tmp_path / CONTAINERS["zarr"]), mode="w")
    patches = [np.full((5, 4, 4), value, dtype=np.float32) for value in (0, 1)]
    for value, array in enumerate(patches):
        group.create_array(f"class_{value}", data=array, chunks=(2, 4, 4))
    cache = ChunkCache(2**20)
    dataset = open_patch_dataset("built", tmp_path, "zarr", (0, 1), cache)
    assert dataset.cached
    assert not open_patch_dataset("built", tmp_path, "zarr", (0, 1)).cached
    view = dataset.array(PATCH_ARRAY)
    assert all(isinstance(source, CachedSource) for source in view.source_list)
    np.testing.assert_array_equal(view[:], np.concatenate(patches))
    assert cache.stats().misses == 6  # 3 chunks of 2 rows per class

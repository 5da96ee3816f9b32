"""The flow plan (data_tools.io.FlowSpec): its position arithmetic and the chunk-windowed shuffle.

Matrix: positions (``position_after`` walks every batch once, the end of an epoch is always
``(epoch + 1, 0)``, ``start`` normalizes ``start_batch == batches_per_epoch``); shards
(world_size 1..5) and lanes (1..6) partition every epoch's batches and elements; lane
emptiness; ``stop_epoch`` and ``exhausted``; resume from any position equals the
uninterrupted tail (lanes and shards too); ``starting_at`` checks like the fields. The
partition and resume properties are drawn over exact and windowed specs alike (windows of
every element or of a subset).
Windows: a permutation of the epoch (with a subset, of the subset), deterministic in (seed,
epoch) whatever the start, rank and lane, and in another process (other hash seeds),
different across epochs and from the exact order, made of whole blocks (each window holds
whole read blocks and fewer than shuffle_window + largest block samples), shards and lanes
partition it; read_blocks over numpy, chunked HDF5 and zarr, views of several files
and cached sources; through a cache of three chunks a window decodes each chunk at most
once per epoch (the exact order: most samples). Refusals name the field: shuffle_window {0,
negative, above the epoch, not an int, without sample_random, with replacement, with
weights}; sample weights {shape, negative, NaN, inf, above MAX_WEIGHT, all zero, zero on the
subset, not numbers}.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import zarr
from hypothesis import given
from hypothesis import strategies as st

from data_tools.chunk_cache import ChunkCache, cached
from data_tools.io import (
    FlowSpec,
    Position,
    data_flow,
    decoded_nbytes,
    parse_sample_weights,
    read_blocks,
)
from data_tools.io.flow_spec import MAX_WEIGHT
from data_tools.wrap import delayed_view, multi_source_array

seeds = st.integers(0, 2**32 - 1)


@st.composite
def specs(draw, *, window=False):
    """A valid FlowSpec: every rank has a batch. With ``window``: a windowed shuffle over
    read blocks, of every element or of a subset."""
    world_size = draw(st.integers(1, 5))
    n = draw(st.integers(world_size, 60))
    subset = None
    if window and draw(st.booleans()):
        subset = sorted(draw(st.sets(st.integers(0, n - 1), min_size=world_size)))
    samples = n if subset is None else len(subset)
    batch_size = draw(st.integers(1, 9))
    drop = draw(st.booleans()) and samples // world_size >= batch_size
    fields = {
        "num_elements": n,
        "batch_size": batch_size,
        "seed": draw(seeds),
        "sample_random": window or draw(st.booleans()),
        "drop_incomplete_batches": drop,
        "world_size": world_size,
        "rank": draw(st.integers(0, world_size - 1)),
        "lanes": draw(st.integers(1, 6)),
    }
    fields["lane"] = draw(st.integers(0, fields["lanes"] - 1))
    if window:
        fields["subset"] = subset
        fields["shuffle_window"] = draw(st.integers(1, samples))
        starts = draw(st.sets(st.integers(1, n - 1), max_size=n)) if n > 1 else set()
        fields["read_blocks"] = sorted({0, *starts})
    return FlowSpec(**fields)


any_specs = st.one_of(specs(), specs(window=True))


def elements(spec):
    """The element ids every epoch of ``spec`` draws once each, in increasing order."""
    return np.arange(spec.num_elements) if spec.subset is None else spec.subset


def positions(spec, count):
    """The first ``count`` positions of a flow from (0, 0), via position_after."""
    at = Position(0, 0)
    out = []
    for _ in range(count):
        out.append(at)
        at = spec.position_after(*at)
    return out


@given(spec=specs(), count=st.integers(1, 40))
def test_position_after_walks_every_batch_once(spec, count):
    per_epoch = spec.batches_per_epoch
    assert positions(spec, count) == [Position(*divmod(i, per_epoch)) for i in range(count)]
    # The end of an epoch has one form: the next epoch's first batch.
    assert spec.position_after(7, per_epoch - 1) == Position(8, 0)


@given(spec=specs(), epoch=st.integers(0, 50))
def test_start_at_the_end_of_an_epoch_is_the_next_epochs_start(spec, epoch):
    at_end = dataclasses.replace(spec, start_epoch=epoch, start_batch=spec.batches_per_epoch)
    assert at_end.start == Position(epoch + 1, 0)
    next_epoch = dataclasses.replace(spec, start_epoch=epoch + 1, start_batch=0)
    got = list(itertools.islice(at_end.batches(), 3))
    want = list(itertools.islice(next_epoch.batches(), 3))
    assert [b[:2] for b in got] == [b[:2] for b in want]
    # Stopping after start_epoch, the end of it yields nothing.
    assert dataclasses.replace(at_end, stop_epoch=epoch + 1).exhausted
    assert list(dataclasses.replace(at_end, stop_epoch=epoch + 1).batches()) == []


@given(spec=any_specs, epoch=st.integers(0, 20))
def test_shards_and_lanes_partition_every_epoch(spec, epoch):
    # Every rank's batches over every lane, in rank order, are the epoch exactly once.
    parts = []
    for rank in range(spec.world_size):
        rank_spec = dataclasses.replace(spec, rank=rank, lane=0)
        lanes = [
            list(
                dataclasses.replace(
                    rank_spec, lane=lane, start_epoch=epoch, stop_epoch=epoch + 1
                ).batches()
            )
            for lane in range(spec.lanes)
        ]
        merged = sorted(itertools.chain.from_iterable(lanes), key=lambda b: b[1])
        assert [b[1] for b in merged] == list(range(rank_spec.batches_per_epoch))
        for lane, batches in enumerate(lanes):
            assert all(b[1] % spec.lanes == lane for b in batches)
            empty = dataclasses.replace(rank_spec, lane=lane).lane_is_empty
            assert empty == (not batches) == (lane >= rank_spec.batches_per_epoch)
        rows = np.concatenate([b[2] for b in merged])
        shard = rank_spec.shard_order(epoch)
        if spec.drop_incomplete_batches:
            np.testing.assert_array_equal(rows, shard[: len(rows)])
            assert len(shard) - len(rows) < spec.batch_size
        else:
            np.testing.assert_array_equal(rows, shard)
        parts.append(shard)
    np.testing.assert_array_equal(np.concatenate(parts), spec.epoch_order(epoch))
    np.testing.assert_array_equal(np.sort(spec.epoch_order(epoch)), elements(spec))


@given(spec=any_specs, start=st.integers(0, 60), stop=st.integers(1, 12))
def test_resume_from_any_position_is_the_uninterrupted_tail(spec, start, stop):
    whole = dataclasses.replace(spec, stop_epoch=stop)
    epoch, batch = divmod(start, spec.batches_per_epoch)
    resumed = whole.starting_at(epoch, batch)
    assert resumed.start == Position(epoch, batch)
    tail = [b for b in whole.batches() if (b[0], b[1]) >= (epoch, batch)]
    got = list(resumed.batches())
    assert [b[:2] for b in got] == [b[:2] for b in tail]
    for (_, _, a), (_, _, b) in zip(got, tail, strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed.exhausted == (epoch >= stop)
    assert not (resumed.exhausted and got)


def test_starting_at_checks_the_position_as_the_fields():
    spec = FlowSpec(10, 4, 0)  # 3 batches per epoch
    assert spec.starting_at(2, 3).start == Position(3, 0)
    with pytest.raises(ValueError, match=r"start_batch .* \[0, 3\]"):
        spec.starting_at(0, 4)
    with pytest.raises(ValueError, match="start_epoch"):
        spec.starting_at(-1, 0)


def test_batches_per_epoch_drop_and_lanes():
    spec = FlowSpec(10, 4, 0, drop_incomplete_batches=True, lanes=3, lane=2)
    assert spec.batches_per_epoch == 2
    assert spec.lane_is_empty
    assert list(spec.batches()) == []
    assert not FlowSpec(10, 4, 0, lanes=3, lane=2).lane_is_empty
    assert FlowSpec(10, 4, 0, nb_proc_workers=3).in_flight == 6
    assert FlowSpec(10, 4, 0, nb_io_workers=0).in_flight == 1
    assert FlowSpec(10, 4, 0, max_in_flight=5).in_flight == 5


# ------------------------------------------------------------------ the window


@given(spec=specs(window=True), epoch=st.integers(0, 100))
def test_a_window_order_is_a_permutation_of_the_epoch_and_pure(spec, epoch):
    order = spec.epoch_order(epoch)
    assert order.dtype == np.int64
    np.testing.assert_array_equal(np.sort(order), elements(spec))
    np.testing.assert_array_equal(order, dataclasses.replace(spec).epoch_order(epoch))
    # Pure in (seed, epoch): where the flow starts, and its rank and lane, change nothing.
    later = dataclasses.replace(spec, start_epoch=epoch, rank=0, lane=0)
    np.testing.assert_array_equal(order, later.epoch_order(epoch))


def test_a_window_order_is_the_same_in_another_process():
    """No per-process state (hash seeds, global rngs) enters the order."""
    code = (
        "import numpy as np; from data_tools.io import FlowSpec; "
        "spec = FlowSpec(200, 8, 12345, sample_random=True, shuffle_window=24, "
        "read_blocks=np.arange(0, 200, 7), subset=np.arange(3, 190, 2), world_size=3, rank=1); "
        "print(spec.shard_order(6).tolist())"
    )
    spec = FlowSpec(
        200,
        8,
        12345,
        sample_random=True,
        shuffle_window=24,
        read_blocks=np.arange(0, 200, 7),
        subset=np.arange(3, 190, 2),
        world_size=3,
        rank=1,
    )
    for hash_seed in ("0", "1"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        )
        assert json.loads(run.stdout) == spec.shard_order(6).tolist()


@given(
    n=st.integers(2, 200),
    block=st.integers(1, 20),
    window=st.integers(1, 200),
    seed=seeds,
    epoch=st.integers(0, 100),
)
def test_windows_hold_whole_blocks(n, block, window, seed, epoch):
    window = min(window, n)
    starts = np.arange(0, n, block)
    spec = FlowSpec(n, 1, seed, sample_random=True, shuffle_window=window, read_blocks=starts)
    order = spec.epoch_order(epoch)
    # A cut c splits the order into whole blocks when no block has elements on both sides.
    place = np.empty(n, dtype=np.int64)
    place[order] = np.arange(n)
    first = np.minimum.reduceat(place, starts)
    last = np.maximum.reduceat(place, starts)
    split = np.zeros(n + 2, dtype=np.int64)
    np.add.at(split, first + 1, 1)
    np.add.at(split, last + 1, -1)
    cuts = np.flatnonzero(np.cumsum(split)[: n + 1] == 0)  # includes 0 and n
    # Windows are whole blocks, so whole-block cuts come at least every window + block.
    assert cuts[0] == 0
    assert cuts[-1] == n
    assert np.all(np.diff(cuts) < window + block)


@given(seed=seeds, epoch=st.integers(0, 100))
def test_window_orders_differ_across_epochs_and_from_the_exact_order(seed, epoch):
    spec = FlowSpec(
        200, 8, seed, sample_random=True, shuffle_window=32, read_blocks=np.arange(0, 200, 8)
    )
    order = spec.epoch_order(epoch)
    assert not np.array_equal(order, spec.epoch_order(epoch + 1))
    exact = dataclasses.replace(spec, shuffle_window=None).epoch_order(epoch)
    assert not np.array_equal(order, exact)


def test_a_window_keeps_each_chunk_together():
    """With blocks of 10 and windows of 20, a window's 20 elements are two whole chunks."""
    spec = FlowSpec(
        100, 10, 5, sample_random=True, shuffle_window=20, read_blocks=np.arange(0, 100, 10)
    )
    for epoch in range(5):
        order = spec.epoch_order(epoch)
        for start in range(0, 100, 20):
            chunks = set((order[start : start + 20] // 10).tolist())
            assert len(chunks) == 2
        # The window shuffles: not every chunk comes in storage order.
        assert not all(np.all(np.diff(order[i : i + 10]) == 1) for i in range(0, 100, 10))


def test_windows_of_a_subset_keep_its_blocks():
    subset = np.array([0, 1, 2, 5, 6, 11, 12, 13, 14, 19])  # blocks of 5: {0,1,2} {5,6} ...
    spec = FlowSpec(
        20,
        2,
        3,
        sample_random=True,
        subset=subset,
        shuffle_window=3,
        read_blocks=np.arange(0, 20, 5),
    )
    for epoch in range(10):
        order = spec.epoch_order(epoch)
        np.testing.assert_array_equal(np.sort(order), subset)
        # Elements of one storage block come within one window: positions differ < 3 + 3.
        for block in range(4):
            places = np.flatnonzero(order // 5 == block)
            assert places.max() - places.min() < 6


# ------------------------------------------------------------------ read blocks


def test_read_blocks_follow_the_storage_chunks(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("x", data=np.arange(30), chunks=(8,))
        f.create_dataset("y", data=np.arange(30))  # contiguous: adds no boundary
        f.create_dataset("z", data=np.arange(12), chunks=(5,))
    z = zarr.create_array(store=str(tmp_path / "b.zarr"), shape=(30,), chunks=(6,), dtype="i8")
    with h5py.File(tmp_path / "a.h5", "r") as f:
        np.testing.assert_array_equal(read_blocks([f["x"]]), [0, 8, 16, 24])
        np.testing.assert_array_equal(read_blocks([f["x"], f["y"]]), [0, 8, 16, 24])
        np.testing.assert_array_equal(read_blocks([f["x"], z]), [0, 6, 8, 12, 16, 18, 24])
        np.testing.assert_array_equal(read_blocks([np.arange(30)]), [0])
        # A view spanning two files: blocks restart at the second source.
        both = multi_source_array([f["z"], f["x"]])
        np.testing.assert_array_equal(read_blocks([both]), [0, 5, 10, 12, 20, 28, 36])
        # A view in another order: a block is a run of one chunk.
        view = delayed_view(f["x"])
        view.index_pairs = [[0, 0], [0, 1], [0, 9], [0, 8], [0, 2]]
        np.testing.assert_array_equal(read_blocks([view]), [0, 2, 4])
        # Through a chunk cache.
        source = cached(f["x"], ChunkCache(1 << 20))
        np.testing.assert_array_equal(read_blocks([delayed_view(source)]), [0, 8, 16, 24])


def test_decoded_bytes_are_the_whole_chunks_the_rows_lie_in(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("x", data=np.arange(30), chunks=(8,))  # int64: 8 bytes a row
        f.create_dataset("y", data=np.arange(30))
        f.create_dataset("z", data=np.arange(12), chunks=(5,))
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert decoded_nbytes(f["x"], [1, 3, 2]) == 8 * 8  # one chunk, once
        assert decoded_nbytes(f["x"], [0, 9, 29]) == (8 + 8 + 6) * 8  # the last: 6 rows
        assert decoded_nbytes(f["y"], [0, 9, 29]) == 3 * 8  # contiguous: the rows alone
        assert decoded_nbytes(np.arange(30), [4, 5]) == 2 * 8
        assert decoded_nbytes(f["x"], []) == 0
        # A view of two sources: each one's chunks (z's last chunk has 2 rows).
        both = multi_source_array([f["z"], f["x"]])
        assert decoded_nbytes(both, [11, 12, 13]) == 2 * 8 + 8 * 8


def test_data_flow_windows_read_whole_chunks(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("x", data=np.arange(64), chunks=(8,))
    with h5py.File(tmp_path / "a.h5", "r") as f:
        flow = data_flow(
            [f["x"]],
            16,
            nb_io_workers=0,
            sample_random=True,
            seed=4,
            loop_forever=False,
            shuffle_window=16,
        )
        batches = [batch[0] for batch in flow.flow()]
    assert len(batches) == 4
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(64))
    for batch in batches:  # a window of 16 is two whole chunks of 8
        assert len(set((batch // 8).tolist())) == 2
    np.testing.assert_array_equal(flow.spec.read_blocks, np.arange(0, 64, 8))


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"shuffle_window": 0}, ValueError, r"shuffle_window .* \[1, 20\].* Got 0"),
        ({"shuffle_window": -3}, ValueError, r"shuffle_window .* Got -3"),
        ({"shuffle_window": 21}, ValueError, r"shuffle_window .* \[1, 20\].* Got 21"),
        ({"shuffle_window": 2.5}, TypeError, r"shuffle_window"),
        ({"shuffle_window": 4, "sample_random": False}, ValueError, r"shuffle_window=None when"),
        (
            {"shuffle_window": 4, "sample_with_replacement": True},
            ValueError,
            r"shuffle_window=None with sample_with_replacement",
        ),
        (
            {"shuffle_window": 4, "sample_weights": np.ones(20)},
            ValueError,
            r"shuffle_window=None with sample_weights",
        ),
        ({"read_blocks": [1, 5]}, ValueError, r"read_blocks"),
        ({"read_blocks": [0, 5, 5]}, ValueError, r"read_blocks"),
        ({"read_blocks": [0, 20]}, ValueError, r"read_blocks"),
        ({"stop_epoch": -1}, ValueError, r"stop_epoch"),
        ({"seed": 2**32}, ValueError, r"seed .* < 2\*\*32"),
    ],
)
def test_bad_fields_are_refused_naming_them(fields, error, message):
    base = {"num_elements": 20, "batch_size": 4, "seed": 0, "sample_random": True}
    with pytest.raises(error, match=message):
        FlowSpec(**{**base, **fields})


def test_a_subset_bounds_the_window():
    with pytest.raises(ValueError, match=r"shuffle_window .* \[1, 3\]"):
        FlowSpec(20, 1, 0, sample_random=True, subset=[1, 2, 3], shuffle_window=4)
    assert FlowSpec(20, 1, 0, sample_random=True, subset=[1, 2, 3], shuffle_window=3)


def test_data_flow_refuses_a_bad_window_naming_it():
    with pytest.raises(ValueError, match="shuffle_window"):
        data_flow([np.arange(10)], 2, shuffle_window=3)  # without sample_random
    with pytest.raises(ValueError, match="shuffle_window"):
        data_flow([np.arange(10)], 2, sample_random=True, shuffle_window=11)


@pytest.mark.parametrize(
    ("weights", "error", "message"),
    [
        (np.ones(4), ValueError, r"^w: Expected one weight per sample \(5\)"),
        ([1, 1, -1, 1, 1], ValueError, r"^w: Expected finite weights in \[0, 1e\+100\]"),
        ([1, 1, np.nan, 1, 1], ValueError, r"^w: Expected finite weights"),
        ([1, 1, np.inf, 1, 1], ValueError, r"^w: Expected finite weights"),
        ([1, 1, MAX_WEIGHT * 2, 1, 1], ValueError, r"^w: Expected finite weights"),
        (np.zeros(5), ValueError, r"^w: Expected finite weights .* not all zero"),
        (["a"] * 5, TypeError, r"^w: Expected a sequence of numbers"),
    ],
)
def test_sample_weights_are_checked_once_for_library_and_node(weights, error, message):
    with pytest.raises(error, match=message):
        parse_sample_weights(weights, 5, name="w")


def test_sample_weights_must_weigh_the_subset():
    with pytest.raises(ValueError, match="some element of subset"):
        FlowSpec(5, 1, 0, sample_random=True, sample_weights=[1, 0, 0, 0, 0], subset=[2, 3])
    weights = parse_sample_weights([1, 2, 0, 3, 4], 5)
    assert not weights.flags.writeable
    np.testing.assert_array_equal(weights, [1, 2, 0, 3, 4])


def test_a_window_decodes_each_chunk_once_per_epoch_with_a_small_cache(tmp_path):
    """Windows of 2 chunks through a cache of 3 chunks: <= 8 decodes per epoch, not ~50."""
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("x", data=np.arange(64 * 4.0).reshape(64, 4), chunks=(8, 4))

    def decodes(**window):
        cache = ChunkCache(3 * 8 * 4 * 8)  # three chunks of 8 rows of 4 float64
        with h5py.File(tmp_path / "a.h5", "r") as f:
            view = delayed_view(cached(f["x"], cache))
            flow = data_flow(
                [view], 4, nb_io_workers=0, sample_random=True, seed=1, start_epoch=0, **window
            )
            with flow:
                batches = list(itertools.islice(flow.flow(), 32))  # two epochs
        rows = np.concatenate([b[0][:, 0] // 4 for b in batches]).astype(int)
        assert sorted(rows[:64]) == sorted(rows[64:]) == list(range(64))
        return cache.stats().misses

    # At most once per chunk and epoch (a chunk still cached may serve the next epoch too).
    assert decodes(shuffle_window=16) <= 16
    assert decodes() > 40

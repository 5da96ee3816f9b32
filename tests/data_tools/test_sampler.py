"""Properties of data_flow's pure epoch order (data_tools.io._sampler), batches cut by FlowSpec.

Matrix: order kind {sequential, shuffled, with replacement, weighted with replacement,
weighted without replacement} x epochs x seeds; shards over world_size 1..7 (disjoint,
union exactly once, sizes within one); batch cutting with and without drop; resume from any
(epoch, batch) equals the uninterrupted stream; the sampler and preprocessor streams differ.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from data_tools.io._sampler import (
    SamplingPlan,
    batch_rng,
    epoch_order,
    sampler_rng,
    shard_bounds,
    shard_order,
)
from data_tools.io.flow_spec import FlowSpec

seeds = st.integers(0, 2**32 - 1)
epochs = st.integers(0, 1000)


@given(n=st.integers(1, 200), seed=seeds, epoch=epochs)
def test_orders_without_replacement_are_permutations(n, seed, epoch):
    sequential = epoch_order(SamplingPlan(n, 1, seed=seed), epoch)
    np.testing.assert_array_equal(sequential, np.arange(n))
    shuffled = epoch_order(SamplingPlan(n, 1, shuffle=True, seed=seed), epoch)
    assert shuffled.dtype == np.int64
    np.testing.assert_array_equal(np.sort(shuffled), np.arange(n))
    # Pure: recomputing gives the same order.
    np.testing.assert_array_equal(
        shuffled, epoch_order(SamplingPlan(n, 1, shuffle=True, seed=seed), epoch)
    )


def test_epochs_and_seeds_change_the_order():
    plan = SamplingPlan(100, 10, shuffle=True, seed=7)
    first = epoch_order(plan, 0)
    assert not np.array_equal(first, epoch_order(plan, 1))
    assert not np.array_equal(first, epoch_order(SamplingPlan(100, 10, shuffle=True, seed=8), 0))


@given(n=st.integers(1, 100), seed=seeds, epoch=epochs)
def test_replacement_draws_n_elements_in_range(n, seed, epoch):
    order = epoch_order(SamplingPlan(n, 1, shuffle=True, replacement=True, seed=seed), epoch)
    assert order.shape == (n,)
    assert order.min() >= 0
    assert order.max() < n


def test_weighted_replacement_follows_the_weights():
    weights = np.array([0.0, 1.0, 3.0, 0.0])
    plan = SamplingPlan(4, 1, shuffle=True, replacement=True, weights=weights / 4, seed=1)
    draws = np.concatenate([epoch_order(plan, epoch) for epoch in range(2000)])
    counts = np.bincount(draws, minlength=4)
    assert counts[0] == counts[3] == 0
    assert 2.7 < counts[2] / counts[1] < 3.3


def test_weighted_order_without_replacement():
    weights = np.array([0.0, 100.0, 1.0, 0.0, 1.0])
    plan = SamplingPlan(5, 1, shuffle=True, weights=weights / weights.sum(), seed=3)
    orders = [epoch_order(plan, epoch) for epoch in range(300)]
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(5))
        assert set(order[3:]) == {0, 3}  # zero weights come last
    assert np.mean([order[0] == 1 for order in orders]) > 0.9
    assert {order[3] for order in orders} == {0, 3}  # in random order


@given(
    n=st.integers(1, 60),
    world_size=st.integers(1, 7),
    shuffle=st.booleans(),
    replacement=st.booleans(),
    seed=seeds,
    epoch=epochs,
)
def test_shards_are_disjoint_and_cover_the_epoch_exactly_once(
    n, world_size, shuffle, replacement, seed, epoch
):
    replacement = replacement and shuffle
    plans = [
        SamplingPlan(
            n, 3, shuffle=shuffle, replacement=replacement, seed=seed, rank=r, world_size=world_size
        )
        for r in range(world_size)
    ]
    parts = [shard_order(plan, epoch) for plan in plans]
    # Positions: contiguous, disjoint, covering [0, n); sizes within one.
    bounds = [shard_bounds(n, r, world_size) for r in range(world_size)]
    assert bounds[0][0] == 0
    assert bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1
    # Elements: the union of the parts, in rank order, is the epoch.
    np.testing.assert_array_equal(np.concatenate(parts), epoch_order(plans[0], epoch))
    if not replacement:
        assert len(set(np.concatenate(parts).tolist())) == n


@given(
    n=st.integers(1, 50),
    batch_size=st.integers(1, 12),
    drop=st.booleans(),
    world_size=st.integers(1, 3),
    seed=seeds,
)
def test_batches_cut_each_rank_part(n, batch_size, drop, world_size, seed):
    for rank in range(world_size):
        plan = SamplingPlan(
            n,
            batch_size,
            shuffle=True,
            drop_incomplete=drop,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
        try:
            spec = FlowSpec(
                n,
                batch_size,
                seed,
                sample_random=True,
                drop_incomplete_batches=drop,
                rank=rank,
                world_size=world_size,
                start_epoch=4,
                stop_epoch=5,
            )
        except ValueError:  # no batch for this rank
            assert drop or n < world_size
            continue
        batches = list(spec.batches())
        assert len(batches) == spec.batches_per_epoch
        assert [b[:2] for b in batches] == [(4, i) for i in range(len(batches))]
        sizes = [len(b[2]) for b in batches]
        assert all(size == batch_size for size in sizes[:-1])
        part = shard_order(plan, 4)
        if drop:
            assert sizes == [batch_size] * (len(part) // batch_size)
        else:
            cut = np.concatenate([b[2] for b in batches] + [np.empty(0, np.int64)])
            np.testing.assert_array_equal(cut, part)


@given(
    n=st.integers(1, 30),
    batch_size=st.integers(1, 8),
    drop=st.booleans(),
    start=st.integers(0, 40),
    seed=seeds,
)
def test_resume_yields_the_rest_of_the_uninterrupted_stream(n, batch_size, drop, start, seed):
    if drop and n < batch_size:
        return  # no batch at all
    spec = FlowSpec(n, batch_size, seed, sample_random=True, drop_incomplete_batches=drop)
    count = spec.batches_per_epoch
    full = list(itertools.islice(spec.batches(), start + 10))
    epoch, batch = divmod(start, count)
    resumed_spec = dataclasses.replace(spec, start_epoch=epoch, start_batch=batch)
    resumed = list(itertools.islice(resumed_spec.batches(), 10))
    assert [(e, b) for e, b, _ in resumed] == [(e, b) for e, b, _ in full[start:]]
    for (_, _, got), (_, _, want) in zip(resumed, full[start:], strict=True):
        np.testing.assert_array_equal(got, want)


def test_one_epoch_ends_and_the_end_position_is_empty():
    def batches(start_batch, stop_epoch):
        spec = FlowSpec(10, 4, 0, start_epoch=2, start_batch=start_batch, stop_epoch=stop_epoch)
        assert spec.batches_per_epoch == 3
        return spec.batches()

    assert [b for _, b, _ in batches(1, 3)] == [1, 2]
    assert list(batches(3, 3)) == []
    assert [e_b[:2] for e_b in itertools.islice(batches(3, None), 2)] == [
        (3, 0),
        (3, 1),
    ]


@given(seed=seeds, epoch=st.integers(0, 100))
def test_sampler_and_preprocessor_streams_differ(seed, epoch):
    draw = sampler_rng(seed, epoch).integers(2**63, size=2)
    for batch_index, rank in [(0, 0), (1, 0), (0, 1)]:
        assert not np.array_equal(
            draw, batch_rng(seed, epoch, batch_index, rank).integers(2**63, size=2)
        )
    # Rank 0's generator is the documented np.random.default_rng([seed, epoch, batch]).
    np.testing.assert_array_equal(
        batch_rng(seed, epoch, 5, 0).random(3), np.random.default_rng([seed, epoch, 5]).random(3)
    )

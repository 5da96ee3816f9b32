"""Epoch order for data_flow: shuffle, replacement, weights and rank shards, as pure functions.

Everything here is a function of a frozen ``SamplingPlan`` and an epoch number, so any
process can recompute any batch of any epoch (resume) and every rank of a data-parallel
job computes the same epoch order and takes its own part of it (shard).

Random streams (``seed`` is an integer in ``[0, 2**32)``):

* the epoch order draws from ``np.random.default_rng(np.random.SeedSequence([seed, epoch],
  spawn_key=(0,)))``;
* the preprocessor of batch ``batch_index`` of ``epoch`` on ``rank`` gets
  ``np.random.default_rng([seed, epoch, batch_index, rank])`` (for rank 0 that equals
  ``np.random.default_rng([seed, epoch, batch_index])``).

A ``SeedSequence`` pads its entropy to four words before it appends a spawn key, so with a
one-word seed the two streams hash five and four words: they can never coincide.

Subsets: with ``subset`` (sorted, distinct element ids) an epoch draws ``len(subset)``
positions as above and maps each position ``p`` to element ``subset[p]``: the elements
outside the subset never come, and every yielded index is still an element id.

Shards: the epoch order of ``num_samples`` positions is cut into ``world_size`` contiguous
parts whose sizes differ by at most one (the first ``num_samples % world_size`` ranks get one
more). Nothing is dropped or padded, so the parts are disjoint and their union is the epoch
exactly once; ranks may therefore have one batch more or fewer than each other. With
``drop_incomplete`` each rank drops the last batch of its own part when it is short.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "SEED_LIMIT",
    "SamplingPlan",
    "batch_rng",
    "epoch_order",
    "iter_batches",
    "num_batches",
    "sampler_rng",
    "shard_bounds",
    "shard_order",
]

SEED_LIMIT = 2**32
_SAMPLER_STREAM = 0

IndexArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class SamplingPlan:
    """How one epoch is drawn and cut into batches (already validated).

    Attributes:
        num_samples: Number of elements drawn from (``len(subset)`` with a subset); also the
            number of draws per epoch.
        batch_size: Maximum number of elements per batch.
        shuffle: Draw in random order (else ``0, 1, ..., num_samples - 1``).
        replacement: Draw with replacement (only with ``shuffle``).
        weights: Probabilities of each element (sum 1), or None for uniform (only with
            ``shuffle``).
        drop_incomplete: Drop the last batch of a rank's part when it is short.
        seed: Seed of every random stream, in ``[0, SEED_LIMIT)``.
        rank: This consumer's part of each epoch, in ``[0, world_size)``.
        world_size: Number of parts each epoch is cut into.
        subset: The element ids position ``p`` of an epoch stands for (``subset[p]``), or
            None: position ``p`` is element ``p``. Weights are then one per subset element.
    """

    num_samples: int
    batch_size: int
    shuffle: bool = False
    replacement: bool = False
    weights: npt.NDArray[np.float64] | None = None
    drop_incomplete: bool = False
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    subset: IndexArray | None = None


def sampler_rng(seed: int, epoch: int) -> np.random.Generator:
    """Return the generator that draws the order of ``epoch``."""
    return np.random.default_rng(
        np.random.SeedSequence([seed, epoch], spawn_key=(_SAMPLER_STREAM,))
    )


def batch_rng(seed: int, epoch: int, batch_index: int, rank: int) -> np.random.Generator:
    """Return the generator handed to the preprocessor for one batch."""
    return np.random.default_rng([seed, epoch, batch_index, rank])


def _weighted_order(rng: np.random.Generator, weights: npt.NDArray[np.float64]) -> IndexArray:
    """Order all elements as successive weighted draws without replacement.

    Efraimidis-Spirakis keys ``log(u) / w`` sorted in decreasing order give exactly the
    distribution of drawing one element at a time with probability proportional to its
    weight among those left. Zero-weight elements follow, in uniformly random order.
    """
    uniform = rng.random(weights.size)
    positive = np.flatnonzero(weights > 0)
    keys = np.log(uniform[positive]) / weights[positive]
    first = positive[np.argsort(-keys, kind="stable")]
    rest = rng.permutation(np.flatnonzero(weights == 0))
    return np.concatenate([first, rest]).astype(np.int64)


def epoch_order(plan: SamplingPlan, epoch: int) -> IndexArray:
    """Return the element drawn at each position of ``epoch``, for all ranks together."""
    order = _position_order(plan, epoch)
    return order if plan.subset is None else plan.subset[order]


def _position_order(plan: SamplingPlan, epoch: int) -> IndexArray:
    """Return the position (in ``[0, num_samples)``) drawn at each place of ``epoch``."""
    n = plan.num_samples
    if not plan.shuffle:
        return np.arange(n, dtype=np.int64)
    rng = sampler_rng(plan.seed, epoch)
    if plan.replacement:
        if plan.weights is None:
            return rng.integers(0, n, size=n, dtype=np.int64)
        return rng.choice(n, size=n, replace=True, p=plan.weights).astype(np.int64)
    if plan.weights is None:
        return rng.permutation(n).astype(np.int64)
    return _weighted_order(rng, plan.weights)


def shard_bounds(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """Return ``(start, stop)`` of ``rank``'s contiguous part of an epoch's positions."""
    base, extra = divmod(num_samples, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_order(plan: SamplingPlan, epoch: int) -> IndexArray:
    """Return this rank's part of the order of ``epoch``."""
    start, stop = shard_bounds(plan.num_samples, plan.rank, plan.world_size)
    return epoch_order(plan, epoch)[start:stop]


def num_batches(plan: SamplingPlan) -> int:
    """Return the number of batches in one epoch for this rank."""
    start, stop = shard_bounds(plan.num_samples, plan.rank, plan.world_size)
    full, rest = divmod(stop - start, plan.batch_size)
    return full if plan.drop_incomplete or rest == 0 else full + 1


def iter_batches(
    plan: SamplingPlan,
    start_epoch: int,
    start_batch: int,
    loop_forever: bool,
    lane: int = 0,
    lanes: int = 1,
) -> Iterator[tuple[int, int, IndexArray]]:
    """Yield ``(epoch, batch_index, indices)`` from ``(start_epoch, start_batch)`` on.

    Without ``loop_forever`` only the rest of ``start_epoch`` is yielded. ``start_batch``
    may equal ``num_batches(plan)``: the position just after the end of ``start_epoch``.
    Only batches with ``batch_index % lanes == lane`` are yielded.
    """
    count = num_batches(plan)
    if lane >= count:
        return  # more lanes than batches per epoch: this lane never has one
    epoch, first = start_epoch, start_batch
    while True:
        # The first batch index >= first that belongs to the lane.
        first += (lane - first) % lanes
        if first < count:
            order = shard_order(plan, epoch)
            for batch_index in range(first, count, lanes):
                start = batch_index * plan.batch_size
                yield epoch, batch_index, order[start : start + plan.batch_size].copy()
        if not loop_forever:
            return
        epoch, first = epoch + 1, 0

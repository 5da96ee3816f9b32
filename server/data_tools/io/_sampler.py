"""Epoch order for a FlowSpec: shuffle, windows, replacement, weights, shards; pure functions.

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
exactly once; ranks may therefore have one batch more or fewer than each other. Cutting a
part into batches, and every position, is ``flow_spec.FlowSpec``'s.

Windows: with ``shuffle_window`` the order is the chunk-windowed shuffle that
``flow_spec`` describes, drawn from the same generator as the exact permutation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "SEED_LIMIT",
    "SamplingPlan",
    "batch_rng",
    "epoch_order",
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
        shuffle_window: Samples per window of the chunk-windowed shuffle, or None: the exact
            permutation (only with ``shuffle``, without replacement or weights).
        blocks: The first position of each read block (increasing, from 0), with
            ``shuffle_window``.
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
    shuffle_window: int | None = None
    blocks: IndexArray | None = None


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


def _windowed_order(
    rng: np.random.Generator, blocks: IndexArray, n: int, window: int
) -> IndexArray:
    """Permute the blocks, cut them into windows of whole blocks, permute inside each window.

    A block goes to window ``floor(s / window)``, ``s`` being where it starts once the
    permuted blocks are concatenated; sorting by (window, random key) then permutes the
    positions of each window uniformly.
    """
    sizes = np.diff(np.append(blocks, n))
    permuted = rng.permutation(len(blocks))
    sizes = sizes[permuted]
    offsets = np.cumsum(sizes) - sizes  # where each permuted block starts
    # The positions of the permuted blocks, each block in storage order.
    concatenated = np.repeat(blocks[permuted] - offsets, sizes) + np.arange(n)
    windows = np.repeat(offsets // window, sizes)
    keys = rng.random(n)
    return concatenated[np.lexsort((keys, windows))].astype(np.int64)


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
    if plan.shuffle_window is not None:
        assert plan.blocks is not None
        return _windowed_order(rng, plan.blocks, n, plan.shuffle_window)
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

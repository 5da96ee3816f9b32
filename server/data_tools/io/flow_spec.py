"""FlowSpec: the plan of a minibatch flow, checked once, and the only place for its positions.

A ``FlowSpec`` says which batches a flow yields: sampling (seed, random order, replacement,
weights, chunk-windowed shuffle, dropping the short last batch), the subset drawn from, the
shard (rank, world size), the lane (lane, lanes), where the flow starts and stops, and how
many workers produce it. Building one checks every field (``Expected X. Got Y instead.``,
naming the field); afterwards nothing needs checking again.

It alone owns the position arithmetic every layer needs: the batches of one epoch for this
rank (``batches_per_epoch``), the position just after a batch (``position_after``), whether
a lane ever has a batch (``lane_is_empty``), each epoch's order (``epoch_order``,
``shard_order``) and the batches the flow yields (``batches``). A position is an
``(epoch, batch_index)`` pair naming the next batch; the end of an epoch has one form, the
first batch of the next epoch: ``(epoch + 1, 0)``.

``data_flow`` builds a FlowSpec from its arguments; a data node builds one from a stream
request and runs it with ``data_flow.from_spec``.

Chunk-windowed shuffle (``shuffle_window``): reading samples in an exact random order
touches a random storage chunk for almost every sample, so a dataset larger than the chunk
cache decodes each chunk about once per sample of it, per epoch. With ``shuffle_window``
each epoch instead permutes the data's read blocks (runs of consecutive elements lying in
one storage chunk of one source, see ``read_blocks``) and concatenates them, cuts that
order into windows of whole blocks (a block belongs to window ``floor(s / shuffle_window)``
where ``s`` is where it starts in the concatenated order, so a window holds fewer than
``shuffle_window`` plus one block of samples), and permutes the samples inside each window.
A reader then needs only the chunks of one window (two at its edges) at a time: each chunk
is decoded about once per epoch with a cache of about ``shuffle_window`` samples. The
price is a weaker shuffle: a sample's batch-mates come from its window, so samples of one
chunk stay within about ``shuffle_window`` positions of each other; a larger window is a
better shuffle for more memory. Every element still comes once per epoch, the order is a
pure function of (seed, epoch), and shards, lanes and resume work as with the exact
permutation. It needs ``sample_random`` and is refused with replacement or weights (their
draws are not one permutation of the epoch that windows could localize).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from data_tools._parse import parse_bool, parse_int, parse_non_negative_int, parse_positive_int
from data_tools.io._read_blocks import length, read_blocks
from data_tools.io._sampler import (
    SEED_LIMIT,
    SamplingPlan,
    epoch_order,
    shard_bounds,
    shard_order,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = ["MAX_WEIGHT", "FlowSpec", "Position", "parse_sample_weights", "weights_digest"]

#: The largest relative sampling weight: the sum of any realistic number of them stays finite.
MAX_WEIGHT = 1e100

IndexArray = npt.NDArray[np.int64]


class Position(NamedTuple):
    """Where a flow is: the next batch to yield, ``batch_index`` of ``epoch``."""

    epoch: int
    batch_index: int


def parse_sample_weights(
    weights: Any, num_elements: int, *, name: str = "sample_weights"
) -> npt.NDArray[np.float64]:
    """Return ``weights`` as float64 relative weights, one per element, checked.

    Args:
        weights: One finite weight in ``[0, MAX_WEIGHT]`` per element, not all zero.
        num_elements: The number of elements.
        name: The field named in error messages. Default ``"sample_weights"``.

    Raises:
        TypeError: If ``weights`` is not a sequence of numbers.
        ValueError: If it does not hold one weight per element, or a weight is out of range,
            or all are zero.
    """
    try:
        array = np.array(weights, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name}: Expected a sequence of numbers. Got {type(weights).__name__} instead."
        ) from error
    if array.shape != (num_elements,):
        raise ValueError(
            f"{name}: Expected one weight per sample ({num_elements}). "
            f"Got shape {array.shape} instead."
        )
    if not np.all((array >= 0) & (array <= MAX_WEIGHT)) or not array.sum() > 0:
        raise ValueError(
            f"{name}: Expected finite weights in [0, {MAX_WEIGHT:g}], not all zero. Got "
            f"weights from {np.min(array)} to {np.max(array)} instead."
        )
    array.flags.writeable = False
    return array


def weights_digest(weights: npt.NDArray[np.float64]) -> str:
    """What checked weights mean: SHA-256 of the probabilities they normalize to."""
    probabilities = np.ascontiguousarray(weights / weights.sum(), dtype="<f8")
    return hashlib.sha256(probabilities.tobytes()).hexdigest()


def _parse_subset(subset: Any, num_elements: int) -> IndexArray | None:
    if subset is None:
        return None
    array = np.asarray(subset)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            "Expected subset to be a non-empty 1-D sequence of element ids. "
            f"Got {array.size} value(s) of dtype {array.dtype} and shape {array.shape} instead."
        )
    ids = array.astype(np.int64)
    if ids[0] < 0 or ids[-1] >= num_elements or np.any(np.diff(ids) <= 0):
        raise ValueError(
            f"Expected subset to hold distinct element ids in [0, {num_elements}), in "
            f"increasing order. Got ids from {ids.min()} to {ids.max()} instead."
        )
    ids.flags.writeable = False
    return ids


def _parse_read_blocks(read_blocks: Any, num_elements: int) -> IndexArray | None:
    if read_blocks is None:
        return None
    starts = np.asarray(read_blocks)
    if (
        starts.ndim != 1
        or starts.size == 0
        or not np.issubdtype(starts.dtype, np.integer)
        or starts[0] != 0
        or starts[-1] >= num_elements
        or np.any(np.diff(starts) <= 0)
    ):
        raise ValueError(
            "Expected read_blocks to be the first element of each read block: increasing "
            f"integers from 0, below {num_elements}. Got {starts!r} instead."
        )
    result = starts.astype(np.int64)
    result.flags.writeable = False
    return result


def _position_blocks(
    read_blocks: IndexArray | None, subset: IndexArray | None, num_positions: int
) -> IndexArray:
    """The first position of each read block among an epoch's positions."""
    if read_blocks is None:
        return np.arange(num_positions, dtype=np.int64)  # every element its own block
    if subset is None:
        return read_blocks
    block_of = np.searchsorted(read_blocks, subset, side="right")
    return np.flatnonzero(np.diff(block_of, prepend=-1)).astype(np.int64)


@dataclass(frozen=True, eq=False)
class FlowSpec:
    """Which batches a minibatch flow yields, and the arithmetic of its positions.

    Every field is checked when the spec is built; array fields are stored read-only.

    Attributes:
        num_elements: The number of elements of the data (``len(data[0])``), >= 1.
        batch_size: The most elements per batch, >= 1.
        seed: The seed of every random stream, an integer in ``[0, 2**32)``.
        sample_random: Draw each epoch in random order. Default False.
        sample_with_replacement: Draw each epoch's elements with replacement (needs
            ``sample_random``). Default False.
        sample_weights: One relative weight per element (see ``parse_sample_weights``), or
            None: uniform (needs ``sample_random``). Default None.
        drop_incomplete_batches: Drop the short last batch of each rank's part. Default False.
        shuffle_window: Samples per window of the chunk-windowed shuffle (see the module
            docstring), from 1 to the number of elements drawn per epoch, or None: the exact
            permutation. Needs ``sample_random``; not with replacement or weights. Default
            None.
        read_blocks: The first element of each read block (increasing, from 0), as
            ``read_blocks(data)`` gives; used by ``shuffle_window``. Default None: every
            element is a block of its own.
        subset: The element ids (distinct, increasing) drawn from, or None: every element.
            An epoch then has ``len(subset)`` draws. Default None.
        rank: Which part of every epoch this flow yields, in ``[0, world_size)``. Default 0.
        world_size: Number of contiguous parts (sizes within one) each epoch is cut into.
            Default 1.
        lane: Which lane of the batches this flow yields (those with
            ``batch_index % lanes == lane``), in ``[0, lanes)``. Default 0.
        lanes: Number of lanes. Default 1.
        start_epoch: The epoch the flow starts in, >= 0. Default 0.
        start_batch: The batch index it starts at, in ``[0, batches_per_epoch]``
            (``batches_per_epoch`` is the end of ``start_epoch``, that is batch 0 of the
            next; see ``start``). Default 0.
        stop_epoch: The flow ends before this epoch, or None: it never ends. Default None.
        nb_io_workers: Reader threads, >= 0. Default 1.
        nb_proc_workers: Worker processes, >= 0. Default 0.
        max_in_flight: The most batches prepared ahead of the consumer, >= 1, or None:
            twice the processes (or io threads without processes), at least 1. Default None.

    Raises:
        TypeError: A field has the wrong type.
        ValueError: A field is out of range or contradicts another; the message names it.
    """

    num_elements: int
    batch_size: int
    seed: int
    sample_random: bool = False
    sample_with_replacement: bool = False
    sample_weights: Any = None
    drop_incomplete_batches: bool = False
    shuffle_window: int | None = None
    read_blocks: Any = None
    subset: Any = None
    rank: int = 0
    world_size: int = 1
    lane: int = 0
    lanes: int = 1
    start_epoch: int = 0
    start_batch: int = 0
    stop_epoch: int | None = None
    nb_io_workers: int = 1
    nb_proc_workers: int = 0
    max_in_flight: int | None = None
    _sampling: SamplingPlan = field(init=False, repr=False)
    _batches_per_epoch: int = field(init=False, repr=False)
    _in_flight: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        parsed = self._parse()
        for name, value in parsed.items():
            object.__setattr__(self, name, value)

    def _parse(self) -> dict[str, Any]:
        num_elements = parse_positive_int("num_elements", self.num_elements)
        subset = _parse_subset(self.subset, num_elements)
        num_positions = num_elements if subset is None else len(subset)
        batch_size = parse_positive_int("batch_size", self.batch_size)
        nb_io_workers = parse_non_negative_int("nb_io_workers", self.nb_io_workers)
        nb_proc_workers = parse_non_negative_int("nb_proc_workers", self.nb_proc_workers)
        shuffle = parse_bool("sample_random", self.sample_random)
        replacement = parse_bool("sample_with_replacement", self.sample_with_replacement)
        if replacement and not shuffle:
            raise ValueError(
                "Expected sample_random to be true when sample_with_replacement is set "
                "(replacement only applies to random sampling). Got False instead."
            )
        weights = probabilities = None
        if self.sample_weights is not None:
            if not shuffle:
                raise ValueError(
                    "Expected sample_random to be true when sample_weights is set (weights "
                    "only apply to random sampling). Got False instead."
                )
            weights = parse_sample_weights(self.sample_weights, num_elements)
            drawn = weights if subset is None else weights[subset]
            if not drawn.sum() > 0:
                raise ValueError(
                    "Expected sample_weights to give some element of subset a weight > 0. "
                    "Got only zeros there instead."
                )
            probabilities = drawn / drawn.sum()
        window = self._parse_window(shuffle, replacement, weights is not None, num_positions)
        read_blocks = _parse_read_blocks(self.read_blocks, num_elements)
        seed = parse_non_negative_int("seed", self.seed)
        if seed >= SEED_LIMIT:
            raise ValueError(f"Expected seed to be an integer < 2**32. Got {seed} instead.")
        world_size = parse_positive_int("world_size", self.world_size)
        rank = parse_non_negative_int("rank", self.rank)
        if rank >= world_size:
            raise ValueError(
                f"Expected rank to be an integer in [0, world_size={world_size}). "
                f"Got {rank} instead."
            )
        lanes = parse_positive_int("lanes", self.lanes)
        lane = parse_non_negative_int("lane", self.lane)
        if lane >= lanes:
            raise ValueError(
                f"Expected lane to be an integer in [0, lanes={lanes}). Got {lane} instead."
            )
        drop = parse_bool("drop_incomplete_batches", self.drop_incomplete_batches)
        sampling = SamplingPlan(
            num_samples=num_positions,
            batch_size=batch_size,
            shuffle=shuffle,
            replacement=replacement,
            weights=probabilities,
            drop_incomplete=drop,
            seed=seed,
            rank=rank,
            world_size=world_size,
            subset=subset,
            shuffle_window=window,
            blocks=None if window is None else _position_blocks(read_blocks, subset, num_positions),
        )
        batches_per_epoch = _batches_per_epoch(sampling)
        if batches_per_epoch == 0:
            raise ValueError(
                f"Expected batch_size to give rank {rank} at least one batch per epoch. Got "
                f"batch_size={batch_size} for {num_positions} elements over {world_size} "
                "rank(s) with drop_incomplete_batches=True instead."
                if drop
                else f"Expected rank {rank} to get at least one element per epoch. Got "
                f"{num_positions} elements over world_size={world_size} ranks instead."
            )
        start_epoch, start_batch = _parse_start(
            self.start_epoch, self.start_batch, batches_per_epoch
        )
        stop_epoch = self.stop_epoch
        if stop_epoch is not None:
            stop_epoch = parse_non_negative_int("stop_epoch", stop_epoch)
        max_in_flight = self.max_in_flight
        if max_in_flight is None:
            workers = nb_proc_workers or nb_io_workers
            in_flight = 2 * workers if workers else 1
        else:
            in_flight = max_in_flight = parse_positive_int("max_in_flight", max_in_flight)
        return {
            "num_elements": num_elements,
            "batch_size": batch_size,
            "seed": seed,
            "sample_random": shuffle,
            "sample_with_replacement": replacement,
            "sample_weights": weights,
            "drop_incomplete_batches": drop,
            "shuffle_window": window,
            "read_blocks": read_blocks,
            "subset": subset,
            "rank": rank,
            "world_size": world_size,
            "lane": lane,
            "lanes": lanes,
            "start_epoch": start_epoch,
            "start_batch": start_batch,
            "stop_epoch": stop_epoch,
            "nb_io_workers": nb_io_workers,
            "nb_proc_workers": nb_proc_workers,
            "max_in_flight": max_in_flight,
            "_sampling": sampling,
            "_batches_per_epoch": batches_per_epoch,
            "_in_flight": in_flight,
        }

    @classmethod
    def for_data(cls, data: Sequence[Any], **fields: Any) -> FlowSpec:
        """A spec over ``data`` (arrays of equal length) with the other ``fields`` given.

        ``num_elements`` is the length of ``data[0]`` and, with a ``shuffle_window``,
        ``read_blocks`` is ``read_blocks(data)``: the storage layout is read only then.
        """
        window = fields.get("shuffle_window")
        return cls(
            num_elements=length(data[0]),
            read_blocks=None if window is None else read_blocks(data),
            **fields,
        )

    def _parse_window(
        self, shuffle: bool, replacement: bool, weighted: bool, num_positions: int
    ) -> int | None:
        if self.shuffle_window is None:
            return None
        window = parse_int("shuffle_window", self.shuffle_window)
        if not 1 <= window <= num_positions:
            raise ValueError(
                f"Expected shuffle_window to be an integer in [1, {num_positions}] (the "
                f"samples of one epoch) or None. Got {window} instead."
            )
        if not shuffle:
            raise ValueError(
                "Expected shuffle_window=None when sample_random=False (the window shuffles "
                f"a random order). Got {window} instead."
            )
        if replacement or weighted:
            other = "sample_with_replacement" if replacement else "sample_weights"
            raise ValueError(
                f"Expected shuffle_window=None with {other} (their draws are not one "
                f"permutation of the epoch to cut into windows). Got {window} instead."
            )
        return window

    @property
    def num_samples(self) -> int:
        """Elements drawn per epoch, over all ranks: ``len(subset)``, else ``num_elements``."""
        return self._sampling.num_samples

    @property
    def in_flight(self) -> int:
        """The most batches prepared ahead of the consumer: ``max_in_flight`` or its default."""
        return self._in_flight

    @property
    def batches_per_epoch(self) -> int:
        """The batches of one epoch for this rank (every lane together), >= 1."""
        return self._batches_per_epoch

    @property
    def lane_is_empty(self) -> bool:
        """Whether this lane never has a batch (more lanes than batches per epoch)."""
        return self.lane >= self._batches_per_epoch

    @property
    def start(self) -> Position:
        """The first position, with the end of an epoch written as the next epoch's start."""
        return self._normalized(self.start_epoch, self.start_batch)

    @property
    def exhausted(self) -> bool:
        """Whether the flow yields nothing: it starts at or after ``stop_epoch``."""
        return self.stop_epoch is not None and self.start.epoch >= self.stop_epoch

    def starting_at(self, epoch: int, batch_index: int) -> FlowSpec:
        """This spec, starting at batch ``batch_index`` of ``epoch`` (checked as in the fields).

        Raises:
            TypeError, ValueError: As for ``start_epoch`` and ``start_batch``.
        """
        start_epoch, start_batch = _parse_start(epoch, batch_index, self._batches_per_epoch)
        spec = copy.copy(self)
        object.__setattr__(spec, "start_epoch", start_epoch)
        object.__setattr__(spec, "start_batch", start_batch)
        return spec

    def position_after(self, epoch: int, batch_index: int) -> Position:
        """The position just after batch ``batch_index`` of ``epoch`` (of any lane)."""
        return self._normalized(epoch, batch_index + 1)

    def _normalized(self, epoch: int, batch_index: int) -> Position:
        extra, batch_index = divmod(batch_index, self._batches_per_epoch)
        return Position(epoch + extra, batch_index)

    def epoch_order(self, epoch: int) -> IndexArray:
        """The element drawn at each position of ``epoch``, for every rank together."""
        return epoch_order(self._sampling, epoch)

    def shard_order(self, epoch: int) -> IndexArray:
        """This rank's contiguous part of ``epoch_order(epoch)``."""
        return shard_order(self._sampling, epoch)

    def batches(self) -> Iterator[tuple[int, int, IndexArray]]:
        """Yield ``(epoch, batch_index, element ids)`` of this lane from ``start`` on.

        The flow stops before ``stop_epoch`` (never when it is None). Batch contents and
        indices are those of the whole flow whatever the lane.
        """
        if self.lane_is_empty:
            return
        epoch, first = self.start
        while self.stop_epoch is None or epoch < self.stop_epoch:
            # The first batch index >= first that belongs to the lane.
            first += (self.lane - first) % self.lanes
            if first < self._batches_per_epoch:
                order = self.shard_order(epoch)
                for batch_index in range(first, self._batches_per_epoch, self.lanes):
                    start = batch_index * self.batch_size
                    yield epoch, batch_index, order[start : start + self.batch_size].copy()
            epoch, first = epoch + 1, 0


def _parse_start(epoch: Any, batch_index: Any, batches_per_epoch: int) -> tuple[int, int]:
    start_epoch = parse_non_negative_int("start_epoch", epoch)
    start_batch = parse_int("start_batch", batch_index)
    if not 0 <= start_batch <= batches_per_epoch:
        raise ValueError(
            f"Expected start_batch to be an integer in [0, {batches_per_epoch}) (a batch of "
            f"the epoch) or {batches_per_epoch} (its end, read as the next epoch's start), so "
            f"in [0, {batches_per_epoch}]. Got {start_batch} instead."
        )
    return start_epoch, start_batch


def _batches_per_epoch(sampling: SamplingPlan) -> int:
    """The batches of one epoch for ``sampling``'s rank."""
    start, stop = shard_bounds(sampling.num_samples, sampling.rank, sampling.world_size)
    full, rest = divmod(stop - start, sampling.batch_size)
    return full if sampling.drop_incomplete or rest == 0 else full + 1

"""One batch's work: its task, reading its rows, running its preprocessor, and the outcome.

Each batch carries the seconds its rows took to read and its preprocessor to run, measured
where that work happened (a process sends them back with the batch).
"""

from __future__ import annotations

import functools
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from data_tools.errors import WorkerError
from data_tools.io._sampler import batch_rng
from data_tools.io.preprocessing import as_arrays, call_preprocessor
from data_tools.storage import row_taker

if TYPE_CHECKING:
    import queue
    from collections.abc import Callable, Sequence

__all__ = [
    "Arrays",
    "BatchInfo",
    "Done",
    "IndexArray",
    "Outcome",
    "Preprocess",
    "Read",
    "Task",
    "as_consumer_error",
    "preprocessed",
    "read_batch",
    "run_caught",
    "run_into",
]

Arrays = tuple[npt.NDArray[Any], ...]
IndexArray = npt.NDArray[np.int64]
# The rows of one batch as read, one array per source, and the seconds the read took.
Read = tuple[list[npt.NDArray[Any]], float]


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """One batch and where it sits in the stream.

    In an ordered flow, one started at ``start_epoch=epoch, start_batch=batch_index + 1``
    yields exactly what follows this batch; ``flow.spec.position_after(epoch, batch_index)``
    is that position in its one form (the end of an epoch is the next epoch's batch 0).

    Attributes:
        epoch: The epoch the batch belongs to.
        batch_index: Its position in the epoch (for this rank), from 0.
        indices: The global indices of its elements in ``data``, in batch order.
        arrays: One array per output of the preprocessor (per array of ``data`` without
            one), stacked along the first axis.
        read_seconds: Wall-clock seconds spent reading the batch's rows from ``data``, in
            the thread or process that read them (a read ahead counts when it ran, not
            while the batch waited).
        preprocess_seconds: Wall-clock seconds the preprocessor took on the batch (0.0
            without one, bar the call overhead).
        ready: Batches finished and waiting behind this one when it was handed out (from
            0 to ``max_in_flight``; always 0 without workers): the flow's queue depth. High
            values mean the consumer is the bottleneck, 0 that it waits for the workers.
    """

    epoch: int
    batch_index: int
    indices: IndexArray
    arrays: Arrays
    read_seconds: float = 0.0
    preprocess_seconds: float = 0.0
    ready: int = 0


@dataclass(frozen=True, slots=True)
class Task:
    seq: int
    epoch: int
    batch_index: int
    indices: IndexArray


@dataclass(frozen=True, slots=True)
class Done:
    """A batch's arrays and the seconds its two steps took (see BatchInfo)."""

    arrays: Arrays
    read_seconds: float
    preprocess_seconds: float


Outcome = Done | BaseException


@dataclass(frozen=True)
class Preprocess:
    """The compute step of a batch: a picklable preprocessor and its random stream.

    Attributes:
        function: The user's preprocessor, or None to pass batches through.
        keywords: Which of ``rng``, ``epoch`` and ``indices`` the function accepts; each is
            passed as a keyword: the batch's generator, its epoch, its global indices.
        out: Whether the function names an ``out`` keyword: a list of arrays, one per
            result, to write its results into and return (see ``preprocessing.accepts_out``).
        seed: Seed of the flow.
        rank: Rank of the flow; part of each batch's random stream.
    """

    function: Callable[..., Any] | None
    keywords: frozenset[str]
    seed: int
    rank: int
    out: bool = False

    def __call__(
        self,
        batch: list[npt.NDArray[Any]],
        epoch: int,
        batch_index: int,
        indices: IndexArray,
        out: list[npt.NDArray[Any]] | None = None,
    ) -> Arrays:
        """Return the preprocessed arrays of one batch read as ``batch``.

        ``out`` (passed on only if the function takes it): arrays shaped as the results,
        which the function may fill and return instead of allocating its own.
        """
        if self.function is None:
            return tuple(batch)
        function = self.function
        if out is not None and self.out:
            function = functools.partial(function, out=out)
        rng = (
            batch_rng(self.seed, epoch, batch_index, self.rank) if "rng" in self.keywords else None
        )
        return as_arrays(
            call_preprocessor(function, self.keywords, batch, rng=rng, epoch=epoch, indices=indices)
        )


def read_batch(sources: Sequence[Any], indices: IndexArray) -> Read:
    start = time.perf_counter()
    batch = [row_taker(source)(indices) for source in sources]
    return batch, time.perf_counter() - start


def preprocessed(
    read: Read, preprocess: Preprocess, task: Task, out: list[npt.NDArray[Any]] | None = None
) -> Done:
    """Run ``preprocess`` on the rows ``read`` for ``task`` (into ``out`` if it takes it)."""
    batch, read_seconds = read
    start = time.perf_counter()
    arrays = preprocess(batch, task.epoch, task.batch_index, task.indices, out)
    return Done(arrays, read_seconds, time.perf_counter() - start)


def _run_task(sources: Sequence[Any], preprocess: Preprocess, task: Task) -> Done:
    return preprocessed(read_batch(sources, task.indices), preprocess, task)


def as_consumer_error(error: BaseException) -> BaseException:
    """Return what the consumer raises for ``error`` caught in a worker."""
    if isinstance(error, Exception):
        return error
    text = "".join(traceback.format_exception(error))
    return WorkerError(f"A worker stopped with {error!r}.\n\nWorker traceback:\n{text}")


def run_caught(sources: Sequence[Any], preprocess: Preprocess, task: Task) -> Outcome:
    try:
        return _run_task(sources, preprocess, task)
    except BaseException as error:  # noqa: BLE001 - every failure goes to the consumer
        return as_consumer_error(error)


def run_into(
    results: queue.Queue[tuple[int, Outcome]],
    sources: Sequence[Any],
    preprocess: Preprocess,
    task: Task,
) -> None:
    """Run ``task`` (as ``run_caught``) and put ``(task.seq, outcome)`` on ``results``."""
    results.put((task.seq, run_caught(sources, preprocess, task)))

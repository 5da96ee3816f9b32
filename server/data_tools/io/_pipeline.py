"""The ordered Pipeline of a flow and its three runners: inline, threads, a worker pool.

Where a batch is read and preprocessed (one runner each):

* inline (no threads, no processes): in the consumer's thread, one batch per ``next()``;
* io threads: each of the threads reads a whole batch from the caller's arrays and
  preprocesses it;
* a worker pool (``pool.WorkerPool``): its processes preprocess the batch and either read it
  themselves or, with shared reads, get the rows io threads of this process read. The pool
  is the flow's own (started with it) or one shared by many flows (a data node's).

The consumer keeps at most ``max_in_flight`` batches submitted but not yet yielded, and a
reorder buffer (bounded by the same count) hands them out in sampling order.

Shutdown: closing a Pipeline closes its runner, which stops its io threads
(``_io_threads``), leaves its pool (stopping the pool if the flow owns it) and frees its
shared memory.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import queue
import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from data_tools.io._batch import BatchInfo, Task, run_caught, run_into
from data_tools.io._io_threads import POLL_S, IoThreads
from data_tools.io.pool import WorkerPool

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from data_tools.io._batch import IndexArray, Outcome, Preprocess

__all__ = ["Pipeline", "build_pipeline"]


class _Runner(Protocol):
    def submit(self, task: Task) -> None: ...

    def receive(self, timeout: float) -> list[tuple[int, Outcome]]:
        """Wait up to ``timeout`` seconds for results; then take every one finished."""
        ...

    def collect(self) -> list[tuple[int, Outcome]]:
        """The results finished by now, without waiting or running anything."""
        ...

    def close(self) -> None: ...


class _InlineRunner:
    """Runs each batch in the consumer's thread when it is asked for."""

    def __init__(self, sources: Sequence[Any], preprocess: Preprocess) -> None:
        self._sources = sources
        self._preprocess = preprocess
        self._pending: deque[Task] = deque()

    def submit(self, task: Task) -> None:
        self._pending.append(task)

    def receive(self, timeout: float) -> list[tuple[int, Outcome]]:
        task = self._pending.popleft()
        return [(task.seq, run_caught(self._sources, self._preprocess, task))]

    def collect(self) -> list[tuple[int, Outcome]]:
        return []

    def close(self) -> None:
        self._pending.clear()


class _ThreadRunner:
    """Runs batches on io threads of this process, each reading and preprocessing a batch."""

    def __init__(self, sources: Sequence[Any], preprocess: Preprocess, num_threads: int) -> None:
        self._results: queue.Queue[tuple[int, Outcome]] = queue.Queue()
        # The io threads call the batch's work itself, which puts its outcome on the queue.
        self._threads = IoThreads(
            num_threads, functools.partial(run_into, self._results, sources, preprocess)
        )

    def submit(self, task: Task) -> None:
        self._threads.submit(task)

    def receive(self, timeout: float) -> list[tuple[int, Outcome]]:
        try:
            first = self._results.get(timeout=timeout)
        except queue.Empty:
            return []
        return [first, *self.collect()]

    def collect(self) -> list[tuple[int, Outcome]]:
        received = []
        with contextlib.suppress(queue.Empty):
            while True:
                received.append(self._results.get_nowait())
        return received

    def close(self) -> None:
        self._threads.close()


_LIVE_PIPELINES: weakref.WeakSet[Pipeline] = weakref.WeakSet()


@atexit.register
def _close_live_pipelines() -> None:
    """Backstop for flows left open at interpreter exit: stop workers, free memory.

    Registered after multiprocessing's own exit hook, so it runs first (atexit is LIFO),
    while the worker processes can still be joined.
    """
    for pipeline in list(_LIVE_PIPELINES):
        pipeline.close()


class Pipeline:
    """Iterator over the batches of one flow, in sampling order unless unordered.

    ``close()`` (idempotent, safe from another thread and from ``__del__``) stops every
    thread and process of the flow and frees its shared memory; iteration then ends. So
    does setting ``stop``: it is looked at every ``POLL_S`` seconds while the consumer
    waits for a batch (a batch run inline, without workers, is not interrupted).
    """

    def __init__(
        self,
        batches: Iterator[tuple[int, int, IndexArray]],
        runner: _Runner,
        *,
        max_in_flight: int,
        ordered: bool,
        stop: threading.Event | None = None,
    ) -> None:
        self._batches = batches
        self._runner: _Runner | None = runner
        self._max_in_flight = max_in_flight
        self._ordered = ordered
        self._stop = stop
        self._lock = threading.Lock()
        self._submitted: dict[int, Task] = {}
        self._done: dict[int, Outcome] = {}
        self._next_seq = 0
        self._next_yield = 0
        self._exhausted = False
        _LIVE_PIPELINES.add(self)

    def __iter__(self) -> Pipeline:
        return self

    def _fill(self, runner: _Runner) -> None:
        while not self._exhausted and len(self._submitted) < self._max_in_flight:
            try:
                epoch, batch_index, indices = next(self._batches)
            except StopIteration:
                self._exhausted = True
                return
            task = Task(self._next_seq, epoch, batch_index, indices)
            self._submitted[task.seq] = task
            self._next_seq += 1
            runner.submit(task)

    def _take_done(self) -> tuple[int, Outcome] | None:
        if self._ordered:
            if self._next_yield in self._done:
                seq = self._next_yield
                self._next_yield += 1
                return seq, self._done.pop(seq)
            return None
        if self._done:
            seq = next(iter(self._done))
            return seq, self._done.pop(seq)
        return None

    def _wait(self, runner: _Runner) -> tuple[int, Outcome]:
        while (taken := self._take_done()) is None:
            if not self._submitted or self._runner is None:
                raise StopIteration
            if self._stop is not None and self._stop.is_set():
                raise StopIteration
            for seq, outcome in runner.receive(POLL_S):
                self._done[seq] = outcome
        return taken

    def __next__(self) -> BatchInfo:
        runner = self._runner
        if runner is None:
            raise StopIteration
        try:
            self._fill(runner)
            seq, outcome = self._wait(runner)
            task = self._submitted.pop(seq)
            if not isinstance(outcome, BaseException):
                # Submit the replacement before handing the batch over, so the workers
                # stay busy while the consumer uses it.
                self._fill(runner)
                # Take what finished meanwhile, so that ``ready`` counts it.
                self._done.update(runner.collect())
                return BatchInfo(
                    task.epoch,
                    task.batch_index,
                    task.indices,
                    outcome.arrays,
                    outcome.read_seconds,
                    outcome.preprocess_seconds,
                    len(self._done),
                )
        except BaseException:
            closed_meanwhile = self._runner is None
            self.close()
            if closed_meanwhile:
                raise StopIteration from None
            raise
        self.close()
        raise outcome

    def close(self) -> None:
        """Stop every worker and free every block (idempotent)."""
        with self._lock:
            runner, self._runner = self._runner, None
        if runner is not None:
            runner.close()

    def __del__(self) -> None:
        self.close()


def build_pipeline(
    batches: Iterator[tuple[int, int, IndexArray]],
    sources: Sequence[Any],
    preprocess: Preprocess,
    *,
    nb_io_workers: int,
    num_processes: int,
    max_in_flight: int,
    ordered: bool,
    start_method: str,
    block_nbytes: int,
    shared_reads: bool = False,
    stop: threading.Event | None = None,
    pool: WorkerPool | None = None,
) -> Pipeline:
    """Start the workers of one flow and return the iterator over its batches.

    ``num_processes`` > 0: the flow's batches run on ``pool`` (using at most that many of
    its workers at once), or on a pool of that many processes of its own (default).
    ``shared_reads`` (with processes only): read in this process, preprocess in the workers.
    """
    runner: _Runner
    if num_processes:
        owns_pool = pool is None
        if pool is None:
            pool = WorkerPool(num_processes, start_method=start_method, retries=0)
            pool.start()
        try:
            runner = pool.open_stream(
                sources,
                preprocess,
                cap=num_processes,
                num_slots=max_in_flight,
                block_nbytes=block_nbytes,
                shared_reads=shared_reads,
                nb_io_workers=nb_io_workers,
                owns_pool=owns_pool,
            )
        except BaseException:
            if owns_pool:
                pool.close()
            raise
    elif nb_io_workers:
        runner = _ThreadRunner(sources, preprocess, nb_io_workers)
    else:
        runner = _InlineRunner(sources, preprocess)
    return Pipeline(batches, runner, max_in_flight=max_in_flight, ordered=ordered, stop=stop)

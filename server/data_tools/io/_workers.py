"""Execution for data_flow: io threads, worker processes, ordered reassembly and shutdown.

Where a batch is read and preprocessed:

* no threads, no processes: in the consumer's thread, one batch per ``next()``;
* io threads only: each of the threads reads a whole batch from the caller's arrays and
  preprocesses it;
* worker processes: each process reads its batches itself, from sources it received in
  picklable form (HDF5 datasets travel as path and key and are reopened in the process;
  numpy arrays are copied once into shared memory that every process maps). h5py runs every
  call of a process behind one lock, so reads only run in parallel across processes. Inside a
  process, io threads read ahead while its main thread preprocesses. Results come back through
  a reusable pool of shared-memory blocks owned by the parent; a batch that does not fit its
  block travels pickled once and the pool's blocks grow for the next ones;
* worker processes with shared reads: io threads of the parent read each batch from the
  caller's sources (so a cache they read through serves every flow of the process), write
  its rows into the batch's block and send the order to the least busy process, which
  copies the rows out, preprocesses them and writes the result into the same block. Rows
  that do not fit travel pickled with the order. The processes receive no sources.

The consumer keeps at most ``max_in_flight`` batches submitted but not yet yielded, and a
reorder buffer (bounded by the same count) hands them out in sampling order. Each batch
carries the seconds its rows took to read and its preprocessor to run, measured where that
work happened (a process sends them back with the batch).

Shutdown: the parent stops its io threads, closes the task and result pipes of every process
(a worker exits on end of file, which also happens when the parent dies, so no orphan is
left), joins them, then terminates and kills stragglers, and unlinks every block once no
process can write. Threads stop on one Event and are joined with a timeout; a leftover is
logged by name.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from data_tools._sources import as_picklable
from data_tools.errors import WorkerError
from data_tools.io._sampler import batch_rng
from data_tools.io._shm import (
    ArrayLayout,
    BlockCache,
    BlockPool,
    SharedArray,
    buffer_of,
    layout_arrays,
    read_arrays,
    release_block,
    share_array,
    write_arrays,
)
from data_tools.wrap import _read_source

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from multiprocessing.shared_memory import SharedMemory

__all__ = ["BatchInfo", "Pipeline", "Preprocess", "build_pipeline", "read_rows"]

logger = logging.getLogger(__name__)

Arrays = tuple[npt.NDArray[Any], ...]
IndexArray = npt.NDArray[np.int64]
# The rows of one batch as read, one array per source, and the seconds the read took.
Read = tuple[list[npt.NDArray[Any]], float]

_POLL_S = 0.1
_THREAD_JOIN_S = 1.0
_PROCESS_GRACE_S = 0.5
_PROCESS_KILL_S = 0.3
# numpy arrays smaller than this are pickled to each worker rather than shared.
_SHARE_MIN_NBYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """One batch and where it sits in the stream.

    In an ordered flow, one started at ``start_epoch=epoch, start_batch=batch_index + 1``
    yields exactly what follows this batch: ``(epoch, batch_index + 1)`` is the cursor.

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
class _Task:
    seq: int
    epoch: int
    batch_index: int
    indices: IndexArray


@dataclass(frozen=True, slots=True)
class _Done:
    """A batch's arrays and the seconds its two steps took (see BatchInfo)."""

    arrays: Arrays
    read_seconds: float
    preprocess_seconds: float


Outcome = _Done | BaseException


def _as_arrays(result: Any) -> Arrays:
    if isinstance(result, np.ndarray):
        return (result,)
    if isinstance(result, tuple | list):
        return tuple(np.asarray(item) for item in result)
    raise TypeError(
        "Expected preprocessor to return a numpy array or a tuple/list of arrays. "
        f"Got {type(result).__name__} instead."
    )


@dataclass(frozen=True)
class Preprocess:
    """The compute step of a batch: a picklable preprocessor and its random stream.

    Attributes:
        function: The user's preprocessor, or None to pass batches through.
        keywords: Which of ``rng``, ``epoch`` and ``indices`` the function accepts; each is
            passed as a keyword: the batch's generator, its epoch, its global indices.
        seed: Seed of the flow.
        rank: Rank of the flow; part of each batch's random stream.
    """

    function: Callable[..., Any] | None
    keywords: frozenset[str]
    seed: int
    rank: int

    def __call__(
        self, batch: list[npt.NDArray[Any]], epoch: int, batch_index: int, indices: IndexArray
    ) -> Arrays:
        """Return the preprocessed arrays of one batch read as ``batch``."""
        if self.function is None:
            return tuple(batch)
        extra: dict[str, Any] = {}
        if "rng" in self.keywords:
            extra["rng"] = batch_rng(self.seed, epoch, batch_index, self.rank)
        if "epoch" in self.keywords:
            extra["epoch"] = epoch
        if "indices" in self.keywords:
            extra["indices"] = indices
        return _as_arrays(self.function(batch, **extra))


def read_rows(source: Any, indices: IndexArray) -> npt.NDArray[Any]:
    """Return ``source[indices]`` as a new array the caller may modify in place.

    Sources other than numpy arrays are read as views read them: once per distinct index,
    in increasing order (as h5py requires), as slices where possible.
    """
    if isinstance(source, np.ndarray):
        return np.asarray(np.take(source, indices, axis=0))
    unique, inverse = np.unique(indices, return_inverse=True)
    rows = np.asarray(_read_source(source, unique.astype(np.intp), ()))
    if unique.size != indices.size or not np.array_equal(unique, indices):
        return rows[inverse]
    # A source may hand back a view of memory it keeps; the preprocessor may write.
    return rows if rows.flags.owndata else rows.copy()


def _read_batch(sources: Sequence[Any], indices: IndexArray) -> Read:
    start = time.perf_counter()
    batch = [read_rows(source, indices) for source in sources]
    return batch, time.perf_counter() - start


def _preprocessed(read: Read, preprocess: Preprocess, task: _Task) -> _Done:
    batch, read_seconds = read
    start = time.perf_counter()
    arrays = preprocess(batch, task.epoch, task.batch_index, task.indices)
    return _Done(arrays, read_seconds, time.perf_counter() - start)


def _run_task(sources: Sequence[Any], preprocess: Preprocess, task: _Task) -> _Done:
    return _preprocessed(_read_batch(sources, task.indices), preprocess, task)


def _as_consumer_error(error: BaseException) -> BaseException:
    """Return what the consumer raises for ``error`` caught in a worker."""
    if isinstance(error, Exception):
        return error
    text = "".join(traceback.format_exception(error))
    return WorkerError(f"A worker stopped with {error!r}.\n\nWorker traceback:\n{text}")


def _run_caught(sources: Sequence[Any], preprocess: Preprocess, task: _Task) -> Outcome:
    try:
        return _run_task(sources, preprocess, task)
    except BaseException as error:  # noqa: BLE001 - every failure goes to the consumer
        return _as_consumer_error(error)


class _RemoteTracebackError(Exception):
    """The traceback text of an exception raised in a worker process."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class _RemoteFailure:
    """An exception caught in a worker process, in a form that always crosses the pipe."""

    pickled: bytes | None
    summary: str
    text: str

    @classmethod
    def capture(cls, error: BaseException) -> _RemoteFailure:
        text = "".join(traceback.format_exception(error))
        summary = "".join(traceback.format_exception_only(error)).strip()
        pickled: bytes | None = None
        if isinstance(error, Exception):
            try:
                pickled = pickle.dumps(error)
                pickle.loads(pickled)
            except Exception:  # noqa: BLE001 - any failure means "send the text only"
                pickled = None
        return cls(pickled, summary, text)

    def to_exception(self) -> BaseException:
        """Rebuild the original exception, its remote traceback as ``__cause__``.

        An exception that cannot be rebuilt becomes a WorkerError carrying the text.
        """
        if self.pickled is not None:
            with contextlib.suppress(Exception):
                error: BaseException = pickle.loads(self.pickled)
                error.__cause__ = _RemoteTracebackError(self.text)
                return error
        return WorkerError(
            f"A worker process raised {self.summary}\n\nWorker traceback:\n{self.text}"
        )


@dataclass(frozen=True, slots=True)
class _Rows:
    """The rows of a batch read by the parent (shared reads), on their way to a worker process.

    ``layouts`` when they were written into the order's block, ``arrays`` (pickled with the
    order) when they did not fit; ``read_seconds`` as measured in the parent.
    """

    read_seconds: float
    layouts: tuple[ArrayLayout, ...] | None = None
    arrays: list[npt.NDArray[Any]] | None = None


@dataclass(frozen=True, slots=True)
class _Order:
    """Parent to worker process: run ``task`` and write its result into ``block_name``.

    ``rows`` with shared reads: the batch as the parent read it; None: the process reads it.
    """

    task: _Task
    slot: int
    block_name: str
    block_size: int
    rows: _Rows | None = None


@dataclass(frozen=True, slots=True)
class _Reply:
    """Worker process to parent: where the result of batch ``seq`` is.

    ``layouts`` when it was written into the order's block; ``arrays`` (and the
    ``nbytes`` a block would have needed) when it did not fit; ``failure`` on error. The
    ``seconds`` are the read and preprocess seconds of ``_Done``, measured in the process.
    """

    seq: int
    layouts: tuple[ArrayLayout, ...] | None = None
    arrays: Arrays | None = None
    nbytes: int = 0
    failure: _RemoteFailure | None = None
    seconds: tuple[float, float] = (0.0, 0.0)


class _Runner(Protocol):
    def submit(self, task: _Task) -> None: ...

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
        self._pending: deque[_Task] = deque()

    def submit(self, task: _Task) -> None:
        self._pending.append(task)

    def receive(self, timeout: float) -> list[tuple[int, Outcome]]:
        task = self._pending.popleft()
        return [(task.seq, _run_caught(self._sources, self._preprocess, task))]

    def collect(self) -> list[tuple[int, Outcome]]:
        return []

    def close(self) -> None:
        self._pending.clear()


_Item = TypeVar("_Item")


def _thread_main(
    items: queue.Queue[_Item], stop: threading.Event, work: Callable[[_Item], None]
) -> None:
    while not stop.is_set():
        try:
            item = items.get(timeout=_POLL_S)
        except queue.Empty:
            continue
        work(item)


class _IoThreads(Generic[_Item]):
    """Io threads of this process, named ``data_tools-io-N``, that run ``work`` on each item.

    ``work`` must not raise: it reports its failures itself.
    """

    def __init__(self, num_threads: int, work: Callable[[_Item], None]) -> None:
        self._items: queue.Queue[_Item] = queue.Queue()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=_thread_main,
                args=(self._items, self._stop, work),
                name=f"data_tools-io-{index}",
                daemon=True,
            )
            for index in range(num_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, item: _Item) -> None:
        self._items.put(item)

    def close(self) -> None:
        """Stop the threads: each ends once its current item is done (joined with a timeout)."""
        self._stop.set()
        deadline = time.monotonic() + _THREAD_JOIN_S
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.warning("thread %s did not stop within %.1f s", thread.name, _THREAD_JOIN_S)


class _ThreadRunner:
    """Runs batches on io threads of this process, each reading and preprocessing a batch."""

    def __init__(self, sources: Sequence[Any], preprocess: Preprocess, num_threads: int) -> None:
        self._sources = sources
        self._preprocess = preprocess
        self._results: queue.Queue[tuple[int, Outcome]] = queue.Queue()
        self._threads = _IoThreads(num_threads, self._run)

    def _run(self, task: _Task) -> None:
        self._results.put((task.seq, _run_caught(self._sources, self._preprocess, task)))

    def submit(self, task: _Task) -> None:
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


def _take_rows(order: _Order, blocks: BlockCache) -> Read:
    """Return copies of the rows the parent read for ``order`` (shared reads)."""
    rows = order.rows
    assert rows is not None
    if rows.layouts is None:
        assert rows.arrays is not None
        return rows.arrays, rows.read_seconds
    # Copies: the preprocessor may modify them in place, and its result reuses the block.
    buffer = buffer_of(blocks.attach(order.slot, order.block_name))
    return list(read_arrays(buffer, rows.layouts)), rows.read_seconds


def _taken_now(order: _Order, blocks: BlockCache) -> Future[Read]:
    """Take the order's rows in this thread; return the outcome as a finished future."""
    future: Future[Read] = Future()
    try:
        future.set_result(_take_rows(order, blocks))
    except BaseException as error:  # noqa: BLE001 - raised where the batch is answered
        future.set_exception(error)
    return future


def _read_ahead(
    readers: ThreadPoolExecutor | None,
    sources: Sequence[Any],
    order: _Order,
    blocks: BlockCache,
) -> Future[Read] | None:
    """Start getting the order's rows, or return None: the main thread reads them."""
    if order.rows is not None:
        # Copied out on arrival: ahead of the preprocessor, and off the main thread, where
        # large copies between the preprocessor's allocations cost page faults (about 7x).
        return _taken_now(order, blocks)
    if readers is None:
        return None
    return readers.submit(_read_batch, sources, order.task.indices)


def _fit(
    arrays: Sequence[npt.NDArray[Any]], block_size: int
) -> tuple[tuple[ArrayLayout, ...] | None, int]:
    """Return the layouts of ``arrays`` in a block (None if they do not fit) and their bytes.

    Arrays of Python objects never fit (they cannot live in shared memory): 0 bytes.
    """
    placed = layout_arrays(arrays)
    if placed is None:
        return None, 0
    layouts, nbytes = placed
    return (layouts if nbytes <= block_size else None), nbytes


def _answer(
    order: _Order,
    future: Future[Read] | None,
    sources: Sequence[Any],
    preprocess: Preprocess,
    blocks: BlockCache,
) -> _Reply:
    task = order.task
    try:
        read = future.result() if future is not None else _read_batch(sources, task.indices)
        done = _preprocessed(read, preprocess, task)
        seconds = (done.read_seconds, done.preprocess_seconds)
        layouts, nbytes = _fit(done.arrays, order.block_size)
        if layouts is None:
            return _Reply(task.seq, arrays=done.arrays, nbytes=nbytes, seconds=seconds)
        # A block that cannot be attached (unlinked behind our back) fails this batch with
        # its own error, rather than ending the worker with an unexplained exit.
        write_arrays(buffer_of(blocks.attach(order.slot, order.block_name)), done.arrays, layouts)
    except BaseException as error:  # noqa: BLE001 - every failure goes to the parent
        return _Reply(task.seq, failure=_RemoteFailure.capture(error))
    return _Reply(task.seq, layouts=layouts, seconds=seconds)


_Pending = tuple[_Order, Future[Read] | None] | None


def _receive_orders(
    tasks: Connection,
    pending: queue.Queue[_Pending],
    readers: ThreadPoolExecutor | None,
    sources: Sequence[Any],
) -> None:
    """Move orders from the pipe to ``pending`` as they arrive, starting their reads.

    Reading orders on their own thread keeps the task pipe drained, so the parent never
    blocks on sending an order while this process blocks on sending it a large result.
    The rows the parent read are copied out here, through this thread's own view of the
    blocks (a BlockCache serves one thread).
    """
    blocks = BlockCache()
    try:
        while True:
            order: _Order = tasks.recv()
            pending.put((order, _read_ahead(readers, sources, order, blocks)))
    except (EOFError, OSError):
        pass  # The parent closed the pipe (or died).
    except RuntimeError:
        pass  # The readers shut down: the process is stopping.
    finally:
        blocks.close()
    pending.put(None)


def _serve(
    sources: Sequence[Any],
    preprocess: Preprocess,
    readers: ThreadPoolExecutor | None,
    tasks: Connection,
    results: Connection,
) -> None:
    pending: queue.Queue[_Pending] = queue.Queue()
    receiver = threading.Thread(
        target=_receive_orders,
        args=(tasks, pending, readers, sources),
        name="data_tools-orders",
        daemon=True,
    )
    receiver.start()
    blocks = BlockCache()
    try:
        while (item := pending.get()) is not None:
            order, future = item
            reply = _answer(order, future, sources, preprocess, blocks)
            try:
                results.send(reply)
            except (TypeError, AttributeError, pickle.PicklingError) as error:
                # A result holding objects that cannot be pickled (send pickles first).
                results.send(_Reply(reply.seq, failure=_RemoteFailure.capture(error)))
    finally:
        blocks.close()


def process_main(
    descriptions: Sequence[Any],
    preprocess: Preprocess,
    num_io_threads: int,
    tasks: Connection,
    results: Connection,
) -> None:
    """Body of a worker process: serve orders until the parent closes the pipes."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    mapped: list[SharedMemory] = []
    sources: list[Any] = []
    for description in descriptions:
        if isinstance(description, SharedArray):
            block, array = description.attach()
            mapped.append(block)
            sources.append(array)
        else:
            sources.append(description)
    readers = (
        ThreadPoolExecutor(num_io_threads, thread_name_prefix="data_tools-io")
        if num_io_threads
        else None
    )
    try:
        _serve(sources, preprocess, readers, tasks, results)
    except (EOFError, OSError):
        pass  # The parent closed the pipes (or died): stop.
    finally:
        if readers is not None:
            readers.shutdown(wait=True, cancel_futures=True)
        sources.clear()
        for block in mapped:
            with contextlib.suppress(BufferError):
                block.close()
    # Everything this process owns is released: skip the interpreter's teardown, which
    # takes a few hundred milliseconds per process on a busy machine and delays close().
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@dataclass
class _Worker:
    process: Any  # multiprocessing's process classes have no public common type
    tasks: Connection
    results: Connection
    outstanding: int = 0
    # Held while an order is sent: with shared reads, several io threads send.
    sending: threading.Lock = dataclasses.field(default_factory=threading.Lock)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


class _ProcessRunner:
    """Runs batches on worker processes named ``data_tools-proc-N``.

    With ``shared_reads``, io threads of this process read each batch and hand its rows to
    the processes (see the module docstring); the consumer's thread then only submits and
    receives.
    """

    def __init__(
        self,
        sources: Sequence[Any],
        preprocess: Preprocess,
        *,
        num_processes: int,
        num_io_threads: int,
        num_slots: int,
        block_nbytes: int,
        start_method: str,
        shared_reads: bool,
    ) -> None:
        self._sources = sources
        self._shared: list[SharedMemory] = []
        self._pool = BlockPool(num_slots, block_nbytes)
        self._workers: list[_Worker] = []
        self._slots: dict[int, int] = {}  # seq -> slot of every batch submitted, not settled
        # Guards the workers' outstanding counts and the pool's size, which io threads change
        # while the consumer settles replies. Held briefly: never while reading or sending.
        self._lock = threading.Lock()
        self._failed_reads: queue.SimpleQueue[tuple[int, BaseException]] = queue.SimpleQueue()
        self._reads: _IoThreads[_Order] | None = None
        try:
            descriptions = [] if shared_reads else [self._describe(s) for s in sources]
            worker_io_threads = 0 if shared_reads else num_io_threads
            context = mp.get_context(start_method)
            for index in range(num_processes):
                self._workers.append(
                    self._start(context, index, descriptions, preprocess, worker_io_threads)
                )
            if shared_reads:
                self._reads = _IoThreads(max(1, num_io_threads), self._read_and_send)
        except BaseException:
            self.close()
            raise

    def _describe(self, source: Any) -> Any:
        shareable = type(source) is np.ndarray and not source.dtype.hasobject
        if shareable and source.nbytes >= _SHARE_MIN_NBYTES:
            block, description = share_array(source)
            self._shared.append(block)
            return description
        return as_picklable(source)

    @staticmethod
    def _start(
        context: Any,
        index: int,
        descriptions: Sequence[Any],
        preprocess: Preprocess,
        num_io_threads: int,
    ) -> _Worker:
        task_reader, task_writer = context.Pipe(duplex=False)
        result_reader, result_writer = context.Pipe(duplex=False)
        process = context.Process(
            target=process_main,
            args=(descriptions, preprocess, num_io_threads, task_reader, result_writer),
            name=f"data_tools-proc-{index}",
            daemon=True,
        )
        try:
            process.start()
        except (TypeError, AttributeError, pickle.PicklingError) as error:
            task_writer.close()
            result_reader.close()
            sent = (
                "every array of data and the preprocessor" if descriptions else "the preprocessor"
            )
            raise TypeError(
                f"Expected {sent} to be picklable, as nb_proc_workers > 0 sends them to "
                f"worker processes. Got {error} instead."
            ) from error
        finally:
            # The child holds its own ends now; closing ours lets each side see EOF.
            task_reader.close()
            result_writer.close()
        return _Worker(process, task_writer, result_reader)

    def submit(self, task: _Task) -> None:
        slot, block = self._pool.acquire()
        self._slots[task.seq] = slot
        order = _Order(task, slot, block.name, block.size)
        if self._reads is None:
            self._send(order)
        else:
            self._reads.submit(order)

    def _send(self, order: _Order) -> None:
        """Send ``order`` to the worker with the fewest outstanding batches.

        Raises:
            WorkerError: That worker is dead.
        """
        with self._lock:
            worker = min(self._workers, key=lambda candidate: candidate.outstanding)
            worker.outstanding += 1  # stays counted if the send fails: the flow then ends
        try:
            with worker.sending:
                worker.tasks.send(order)
        except OSError:
            raise self._death(worker) from None

    def _read_and_send(self, order: _Order) -> None:
        """Io thread, shared reads: read the order's rows, place them in its block, send it."""
        try:
            batch, seconds = _read_batch(self._sources, order.task.indices)
            layouts, nbytes = _fit(batch, order.block_size)
            if layouts is None:
                self._require(nbytes)
                rows = _Rows(seconds, arrays=batch)
            else:
                write_arrays(self._pool.buffer(order.slot), batch, layouts)
                rows = _Rows(seconds, layouts=layouts)
            self._send(dataclasses.replace(order, rows=rows))
        except BaseException as error:  # noqa: BLE001 - every failure goes to the consumer
            self._failed_reads.put((order.task.seq, _as_consumer_error(error)))

    def _require(self, nbytes: int) -> None:
        with self._lock:
            self._pool.require(nbytes)

    def _death(self, worker: _Worker) -> WorkerError:
        worker.process.join(_POLL_S)
        return WorkerError(
            f"Worker process {worker.process.name} (pid {worker.process.pid}) died "
            f"unexpectedly ({_describe_exit(worker.process.exitcode)}); the flow stopped."
        )

    def _settle(self, worker: _Worker, reply: _Reply) -> Outcome:
        slot = self._slots.pop(reply.seq)
        with self._lock:
            worker.outstanding -= 1
        try:
            if reply.failure is not None:
                return reply.failure.to_exception()
            if reply.layouts is not None:
                arrays = read_arrays(self._pool.buffer(slot), reply.layouts)
            else:
                assert reply.arrays is not None
                self._require(reply.nbytes)
                arrays = reply.arrays
            return _Done(arrays, *reply.seconds)
        finally:
            self._pool.release(slot)

    def _take_failed_reads(self) -> list[tuple[int, Outcome]]:
        """The batches whose read (or sending) failed on an io thread; frees their slots."""
        failed: list[tuple[int, Outcome]] = []
        with contextlib.suppress(queue.Empty):
            while True:
                seq, error = self._failed_reads.get_nowait()
                self._pool.release(self._slots.pop(seq))
                failed.append((seq, error))
        return failed

    def collect(self) -> list[tuple[int, Outcome]]:
        received = self._take_failed_reads()
        for worker in self._workers:
            with contextlib.suppress(EOFError):  # a dead worker: receive() reports it
                while worker.results.poll():
                    reply: _Reply = worker.results.recv()
                    received.append((reply.seq, self._settle(worker, reply)))
        return received

    def receive(self, timeout: float) -> list[tuple[int, Outcome]]:
        # A failed read is seen here, at the latest one poll period (timeout) after it.
        if failed := self._take_failed_reads():
            return failed
        by_handle: dict[Any, _Worker] = {}
        for worker in self._workers:
            by_handle[worker.results] = worker
            by_handle[worker.process.sentinel] = worker
        received = []
        for handle in wait(list(by_handle), timeout):
            worker = by_handle[handle]
            if handle is not worker.results:
                raise self._death(worker)
            try:
                reply: _Reply = worker.results.recv()
            except EOFError:
                raise self._death(worker) from None
            received.append((reply.seq, self._settle(worker, reply)))
        return received

    def close(self) -> None:
        # Io threads first, so that none sends an order or writes a block from now on (one
        # still stuck sending to a hung worker past the join timeout fails once it is killed).
        if self._reads is not None:
            self._reads.close()
        for worker in self._workers:
            worker.tasks.close()
            worker.results.close()
        deadline = time.monotonic() + _PROCESS_GRACE_S
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(_PROCESS_KILL_S)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(_PROCESS_KILL_S)
            if not worker.process.is_alive():
                worker.process.close()
        self._workers.clear()
        self._slots.clear()
        self._pool.close()
        for block in self._shared:
            release_block(block)
        self._shared.clear()


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
    does setting ``stop``: it is looked at every ``_POLL_S`` seconds while the consumer
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
        self._submitted: dict[int, _Task] = {}
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
            task = _Task(self._next_seq, epoch, batch_index, indices)
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
            for seq, outcome in runner.receive(_POLL_S):
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
    num_io_threads: int,
    num_processes: int,
    max_in_flight: int,
    ordered: bool,
    start_method: str,
    block_nbytes: int,
    shared_reads: bool = False,
    stop: threading.Event | None = None,
) -> Pipeline:
    """Start the workers of one flow and return the iterator over its batches.

    ``shared_reads`` (with processes only): read in this process, preprocess in the workers.
    """
    runner: _Runner
    if num_processes:
        runner = _ProcessRunner(
            sources,
            preprocess,
            num_processes=num_processes,
            num_io_threads=num_io_threads,
            num_slots=max_in_flight,
            block_nbytes=block_nbytes,
            start_method=start_method,
            shared_reads=shared_reads,
        )
    elif num_io_threads:
        runner = _ThreadRunner(sources, preprocess, num_io_threads)
    else:
        runner = _InlineRunner(sources, preprocess)
    return Pipeline(batches, runner, max_in_flight=max_in_flight, ordered=ordered, stop=stop)

"""WorkerPool: warm worker processes that compute the batches of every flow that uses them.

A pool starts its processes (named ``data_tools-proc-N``) once; each imports what it needs
once (``preload``), then serves any flow. A flow opened on the pool (``open_stream``) sends
its sources and preprocessor to a worker the first time that worker runs one of its batches,
pickled once for all workers. A data node keeps one pool for all its streams; an in-process
``data_flow`` with ``nb_proc_workers > 0`` starts a pool of its own for each flow, unless it
is given one.

Scheduling: one thread of the parent (``data_tools-pool``) sends every order, receives every
reply and watches every process. A worker runs one batch at a time and holds at most
``ORDERS_PER_WORKER`` orders: the one it runs and the next, queued in the worker, which it
starts as soon as it sends a result (no round trip to this thread between two batches).
Whenever a worker is idle, the flows that have a batch waiting take turns (round robin), each
flow using at most ``cap`` workers at once, so no flow starves another; a busy worker gets
a next order of the flow it runs only while no other flow waits for a worker. A flow submits at most its
``max_in_flight`` batches ahead of its consumer (the Pipeline's bound), so a flow whose
consumer stopped reading holds at most that many batches, and its results wait in its own
shared-memory blocks, never in a worker. A worker that already served a flow is preferred
for it (its sources are open there).

A worker's death: the batch it was running is a pure function of (plan, epoch, indices), so
it is sent again, to another worker, up to ``retries`` times (its queued next order goes
back to its flow's waiting batches as it is); one more death fails its flow
with "Worker process data_tools-proc-N (pid P) died unexpectedly (killed by SIGKILL); the
flow stopped." The dead worker is replaced by a new process. A flow that owns its pool
(``data_flow``'s own workers, ``retries=0``) ends at the death of any of its workers, as a
sign that something is wrong with it.

Shutdown: closing a flow drops its waiting batches, discards the results of those still
running and unlinks its blocks; its workers forget it after the orders they hold. A worker still running one
of its batches ``ABANDONED_BATCH_S`` seconds after the flow closed is killed and replaced. Closing the pool stops its
thread, closes every pipe (a worker exits on end of file, which also happens when the
parent dies, so no orphan is left), then terminates and kills stragglers.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing as mp
import os
import pickle
import queue
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from data_tools.errors import WorkerError
from data_tools.io._batch import Done, as_consumer_error, read_batch
from data_tools.io._io_threads import POLL_S, IoThreads
from data_tools.io._messages import READY, Forget, Order, Rows, Setup, fit
from data_tools.io._shm import BlockPool, read_arrays, release_block, share_array, write_arrays
from data_tools.io._worker_main import worker_main
from data_tools.storage import as_picklable
from data_tools.supervise import exit_reason, stop_process

if TYPE_CHECKING:
    from collections.abc import Sequence
    from multiprocessing.connection import Connection
    from multiprocessing.shared_memory import SharedMemory

    from data_tools.io._batch import Outcome, Preprocess, Task
    from data_tools.io._messages import Reply

__all__ = ["PoolStream", "WorkerInfo", "WorkerPool"]

logger = logging.getLogger(__name__)

_GRACE_S = 0.5
_KILL_S = 0.3
_THREAD_JOIN_S = 5.0
# How long a worker may go on with a batch of a flow that ended before it is killed (and
# replaced): a stuck batch must not hold a worker for ever, a slow one need not cost a
# process start.
ABANDONED_BATCH_S = 10.0
# Workers in a row that may die before they are ready; then the pool gives up.
_MAX_FAILED_STARTS = 3
# numpy arrays smaller than this are pickled to each worker rather than shared.
_SHARE_MIN_NBYTES = 1 << 20
# Orders a worker holds at once: the batch it runs and the next one, so that it never idles
# waiting for this process between two batches.
ORDERS_PER_WORKER = 2


@dataclass(frozen=True)
class WorkerInfo:
    """One worker process of a pool, as it is now.

    Attributes:
        name: ``data_tools-proc-N``.
        pid: Its process id.
        ready: Whether it has imported what it preloads and takes batches.
        stream: The id of the flow whose batch it runs, or None: idle.
    """

    name: str
    pid: int
    ready: bool
    stream: int | None


@dataclass(eq=False)
class _Worker:
    process: Any  # multiprocessing's process classes have no public common type
    orders: Connection
    results: Connection
    ready: bool = False
    # Orders sent and not answered, in the worker's order: the first is the one it runs.
    orders_held: deque[tuple[PoolStream, Order]] = field(default_factory=deque)
    streams: set[int] = field(default_factory=set)  # flows whose Setup it received
    forget: list[int] = field(default_factory=list)  # ended flows it still holds

    def info(self) -> WorkerInfo:
        stream = self.orders_held[0][0].stream_id if self.orders_held else None
        return WorkerInfo(self.process.name, self.process.pid, self.ready, stream)


_LIVE_POOLS: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


@atexit.register
def _close_live_pools() -> None:
    """Backstop for pools left open at interpreter exit (runs before multiprocessing's)."""
    for pool in list(_LIVE_POOLS):
        pool.close()


class WorkerPool:
    """Warm worker processes shared by any number of flows.

    Args:
        num_workers: Worker processes kept running (dead ones are replaced), >= 1.
        start_method: ``"spawn"`` (default) or ``"forkserver"``.
        retries: How many times a batch whose worker died is sent to another worker before
            its flow fails. Default 1.
        preload: Modules every worker imports as it starts, before it takes batches (so a
            flow's first batch does not wait for them). Default: none.

    ``start()`` starts the processes; ``close()`` (idempotent) stops them. Also a context
    manager doing both.
    """

    def __init__(
        self,
        num_workers: int,
        *,
        start_method: str = "spawn",
        retries: int = 1,
        preload: Sequence[str] = (),
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"Expected num_workers >= 1. Got {num_workers} instead.")
        self._num_workers = num_workers
        self._context: Any = mp.get_context(start_method)
        self._retries = retries
        self._preload = tuple(preload)
        self._numbers = itertools.count()
        self._stream_ids = itertools.count()
        # Lock order: this lock, then nothing. Guards the workers' list and state and every
        # flow's queue, count of running batches and open flag; never held while sending.
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._workers: list[_Worker] = []
        self._streams: deque[PoolStream] = deque()  # open flows, in turn order
        self._thread: threading.Thread | None = None
        self._closing = False
        self._broken = False  # its thread failed: it takes no more flows
        self._failed_starts = 0  # workers in a row that died before they were ready
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        _LIVE_POOLS.add(self)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------ public

    def start(self) -> None:
        """Start the worker processes and the pool's thread (they import in the background).

        Raises:
            RuntimeError: The pool was closed, or already started.
        """
        with self._lock:
            if self._closing or self._thread is not None:
                raise RuntimeError("Expected a pool that was neither started nor closed.")
            self._thread = threading.Thread(target=self._run, name="data_tools-pool", daemon=True)
        try:
            for _ in range(self._num_workers):
                self._spawn()
        except BaseException:
            self.close()
            raise
        self._thread.start()

    @property
    def num_workers(self) -> int:
        """Worker processes alive now (replacements included, ready or not)."""
        with self._lock:
            return len(self._workers)

    @property
    def busy_workers(self) -> int:
        """Worker processes running a batch now."""
        with self._lock:
            return sum(bool(worker.orders_held) for worker in self._workers)

    def workers(self) -> list[WorkerInfo]:
        """Every worker process now: name, pid, ready, the flow it runs a batch of."""
        with self._lock:
            return [worker.info() for worker in self._workers]

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every worker is ready; return whether so."""
        with self._ready:
            return self._ready.wait_for(
                lambda: sum(w.ready for w in self._workers) >= self._num_workers or self._closing,
                timeout,
            )

    def open_stream(
        self,
        sources: Sequence[Any],
        preprocess: Preprocess,
        *,
        cap: int,
        num_slots: int,
        block_nbytes: int,
        shared_reads: bool = False,
        nb_io_workers: int = 1,
        owns_pool: bool = False,
    ) -> PoolStream:
        """Open a flow on this pool: the runner its Pipeline submits batches to.

        Args:
            sources: The flow's arrays.
            preprocess: Its per-batch work.
            cap: The most workers it uses at once (>= 1).
            num_slots: Its most batches in flight (one shared-memory block each).
            block_nbytes: The initial size of each block.
            shared_reads: Read each batch here, on ``nb_io_workers`` threads, and hand the
                rows to the workers (they then receive no sources).
            nb_io_workers: See ``shared_reads``.
            owns_pool: Close the pool when the flow closes.

        Raises:
            TypeError: The sources (without ``shared_reads``) or the preprocessor cannot
                be pickled.
            RuntimeError: The pool is closed.
        """
        return PoolStream(
            self,
            next(self._stream_ids),
            sources,
            preprocess,
            cap=cap,
            num_slots=num_slots,
            block_nbytes=block_nbytes,
            shared_reads=shared_reads,
            nb_io_workers=nb_io_workers,
            owns_pool=owns_pool,
        )

    def close(self) -> None:
        """Stop the pool's thread and every worker process (idempotent)."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            streams = list(self._streams)
            self._streams.clear()
            self._ready.notify_all()
        self._wake()
        thread = self._thread
        if thread is not None and thread.ident is not None:
            thread.join(_THREAD_JOIN_S)
            if thread.is_alive():
                logger.warning("thread %s did not stop within %.1f s", thread.name, _THREAD_JOIN_S)
        for stream in streams:
            stream.fail(WorkerError("The worker pool was closed; the flow stopped."))
        with self._lock:
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.orders.close()
            worker.results.close()
        deadline = time.monotonic() + _GRACE_S
        for worker in workers:
            stop_process(
                worker.process, grace_s=max(0.0, deadline - time.monotonic()), kill_s=_KILL_S
            )
            worker.process.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # ------------------------------------------------------------ called by flows

    def _add(self, stream: PoolStream) -> None:
        with self._lock:
            if self._closing or self._broken or self._thread is None:
                raise RuntimeError("Expected a started, open worker pool. It is not.")
            self._streams.append(stream)

    def _enqueue(self, stream: PoolStream, order: Order) -> None:
        with self._lock:
            if not stream.is_open:
                return
            stream.waiting.append(order)
        self._wake()

    def _remove(self, stream: PoolStream) -> None:
        with self._lock:
            stream.is_open = False
            stream.closed_at = time.monotonic()
            stream.waiting.clear()
            with contextlib.suppress(ValueError):
                self._streams.remove(stream)
            for worker in self._workers:
                if stream.stream_id in worker.streams:
                    worker.streams.discard(stream.stream_id)
                    worker.forget.append(stream.stream_id)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
            os.write(self._wake_w, b"\0")

    # ------------------------------------------------------------ the pool's thread

    def _spawn(self) -> None:
        order_reader, order_writer = self._context.Pipe(duplex=False)
        result_reader, result_writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_main,
            args=(self._preload, order_reader, result_writer),
            name=f"data_tools-proc-{next(self._numbers)}",
            daemon=True,
        )
        try:
            process.start()
        finally:
            # The child holds its own ends now; closing ours lets each side see EOF.
            order_reader.close()
            result_writer.close()
        with self._lock:
            self._workers.append(_Worker(process, order_writer, result_reader))

    def _run(self) -> None:
        try:
            self._serve()
        except Exception as error:
            # Nothing would answer the flows any more: end them rather than let them wait.
            logger.exception("the worker pool's thread failed")
            with self._lock:
                self._broken = True
                streams = list(self._streams)
                self._streams.clear()
            for stream in streams:
                stream.fail(WorkerError(f"The worker pool failed ({error}); the flow stopped."))

    def _serve(self) -> None:
        while not self._closing:
            with self._lock:
                workers = list(self._workers)
            handles: dict[Any, _Worker] = {}
            for worker in workers:
                handles[worker.results] = worker
                handles[worker.process.sentinel] = worker
            for handle in wait([self._wake_r, *handles], POLL_S):
                if handle == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                    continue
                worker = handles[handle]
                if worker not in self._workers:
                    continue  # seen dead through its other handle
                if handle is worker.results and self._receive(worker):
                    continue
                self._died(worker)
            if not self._closing:
                self._kill_abandoned()
                self._dispatch()

    def _receive(self, worker: _Worker) -> bool:
        """Take one message of ``worker``; False if it has died."""
        try:
            message: str | Reply = worker.results.recv()
        except (EOFError, OSError):
            return False
        with self._lock:
            if message == READY:
                worker.ready = True
                self._ready.notify_all()
                return True
            assert not isinstance(message, str)
            stream, order = worker.orders_held.popleft()
            if not any(held is stream for held, _ in worker.orders_held):
                stream.running -= 1
            if stream.is_open:
                stream.results.put((order.task.seq, message))
        return True

    def _died(self, worker: _Worker) -> None:
        with contextlib.suppress(EOFError, OSError):
            while worker.results.poll():  # replies sent before it died still count
                if not self._receive(worker):
                    break
        worker.process.join(POLL_S)
        died = (
            f"Worker process {worker.process.name} (pid {worker.process.pid}) died "
            f"unexpectedly ({exit_reason(worker.process.exitcode)})"
        )
        text = f"{died}; the flow stopped."
        with self._lock:
            self._workers.remove(worker)
            held, worker.orders_held = list(worker.orders_held), deque()
            for stream in {id(stream): stream for stream, _ in held}.values():
                stream.running -= 1
            # Back to the front of their flows' queues, the one it ran first.
            for index, (stream, order) in reversed(list(enumerate(held))):
                if not stream.is_open:
                    pass
                elif index > 0:  # queued, not started: it did not cause the death
                    stream.waiting.appendleft(order)
                elif order.attempt < self._retries:
                    logger.warning("%s; its batch runs again on another worker", died)
                    stream.waiting.appendleft(dataclasses.replace(order, attempt=order.attempt + 1))
                else:
                    # At once, not in its turn: batches before it may wait for ever.
                    stream.fail(WorkerError(text))
            for stream in self._streams:
                if stream.owns_pool:  # its own workers: any death ends it, as it always did
                    stream.fail(WorkerError(text))
        worker.orders.close()
        worker.results.close()
        if worker.process.exitcode is not None:
            worker.process.close()
        self._failed_starts = 0 if worker.ready else self._failed_starts + 1
        if self._failed_starts >= _MAX_FAILED_STARTS:
            # Workers die as they start (a main module that cannot be imported, no memory):
            # starting more would only repeat that.
            raise WorkerError(f"{_MAX_FAILED_STARTS} workers in a row died as they started")
        if not self._closing:
            self._spawn()

    def _kill_abandoned(self) -> None:
        """Kill workers stuck on a batch of a flow closed ABANDONED_BATCH_S ago or more."""
        now = time.monotonic()
        with self._lock:
            stuck = [
                worker
                for worker in self._workers
                if worker.orders_held
                and not worker.orders_held[0][0].is_open
                and now - worker.orders_held[0][0].closed_at >= ABANDONED_BATCH_S
            ]
        for worker in stuck:
            logger.warning(
                "killing %s: it ran a batch of a closed flow for %.0f s or more",
                worker.process.name,
                ABANDONED_BATCH_S,
            )
            worker.process.kill()  # its sentinel reports it; it is replaced then

    def _dispatch(self) -> None:
        """Give workers batches (idle ones first, one per flow in turn); send Forgets."""
        while (sends := self._next_sends()) is not None:
            worker, messages = sends
            try:
                for message in messages:
                    worker.orders.send(message)
            except OSError:
                pass  # it died: its sentinel says so, and its batch is sent again then

    def _next_sends(self) -> tuple[_Worker, list[Any]] | None:
        with self._lock:
            ready = [w for w in self._workers if w.ready]
            for worker in ready:
                if worker.forget:
                    forget, worker.forget = worker.forget, []
                    return worker, [Forget(tuple(forget))]
            idle = [w for w in ready if not w.orders_held]
            if idle and (stream := self._next_turn()) is not None:
                stream.running += 1
                worker = next((w for w in idle if stream.stream_id in w.streams), idle[0])
                return worker, self._order(worker, stream)
            # Every flow that wants a worker has one: queue next orders behind running ones.
            for worker in ready:
                if 0 < len(worker.orders_held) < ORDERS_PER_WORKER:
                    stream = worker.orders_held[0][0]
                    if stream.waiting and not self._others_wait(stream):
                        return worker, self._order(worker, stream)
            return None

    def _next_turn(self) -> PoolStream | None:
        """The next flow, in turn, with a batch waiting and a worker to spare under its cap."""
        for _ in range(len(self._streams)):
            stream = self._streams[0]
            self._streams.rotate(-1)
            if stream.waiting and stream.running < stream.cap:
                return stream
        return None

    def _others_wait(self, stream: PoolStream) -> bool:
        return any(
            other is not stream and other.waiting and other.running < other.cap
            for other in self._streams
        )

    @staticmethod
    def _order(worker: _Worker, stream: PoolStream) -> list[Any]:
        """Hand ``worker`` the next waiting batch of ``stream``: the messages to send."""
        order = stream.waiting.popleft()
        worker.orders_held.append((stream, order))
        messages: list[Any] = []
        if stream.stream_id not in worker.streams:
            worker.streams.add(stream.stream_id)
            messages.append(Setup(stream.stream_id, stream.payload))
        messages.append(order)
        return messages


class PoolStream:
    """One flow's use of a WorkerPool: the runner its Pipeline submits batches to.

    Results come back through the flow's own pool of shared-memory blocks (one per batch in
    flight); a batch that does not fit its block travels pickled once and the flow's blocks
    grow for the next ones. With shared reads, io threads of this process
    (``data_tools-io-N``) read each batch, write its rows into the batch's block and queue
    it; the worker copies them out, preprocesses and writes the result into the same block.
    """

    def __init__(
        self,
        pool: WorkerPool,
        stream_id: int,
        sources: Sequence[Any],
        preprocess: Preprocess,
        *,
        cap: int,
        num_slots: int,
        block_nbytes: int,
        shared_reads: bool,
        nb_io_workers: int,
        owns_pool: bool,
    ) -> None:
        self.stream_id = stream_id
        self.cap = cap
        # Guarded by the pool's lock:
        self.waiting: deque[Order] = deque()
        self.running = 0
        self.is_open = True
        self.closed_at = 0.0
        self.results: queue.SimpleQueue[tuple[int, Reply | BaseException]] = queue.SimpleQueue()
        self._pool = pool
        self.owns_pool = owns_pool
        self._sources = sources
        self._shared: list[SharedMemory] = []
        self._blocks = BlockPool(num_slots, block_nbytes)
        self._slots: dict[int, int] = {}  # seq -> slot of every batch submitted, not settled
        self._blocks_lock = threading.Lock()  # the blocks' size: io threads grow it too
        self._reads: IoThreads[Order] | None = None
        self._closed = False
        try:
            descriptions = [] if shared_reads else [self._describe(s) for s in sources]
            self.payload = self._pickle(descriptions, preprocess)
            pool._add(self)
            if shared_reads:
                self._reads = IoThreads(max(1, nb_io_workers), self._read_and_queue)
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
    def _pickle(descriptions: Sequence[Any], preprocess: Preprocess) -> bytes:
        try:
            return pickle.dumps((list(descriptions), preprocess))
        except (TypeError, AttributeError, pickle.PicklingError) as error:
            sent = (
                "every array of data and the preprocessor" if descriptions else "the preprocessor"
            )
            raise TypeError(
                f"Expected {sent} to be picklable, as nb_proc_workers > 0 sends them to "
                f"worker processes. Got {error} instead."
            ) from error

    def fail(self, error: BaseException) -> None:
        """End the flow with ``error`` at its next receive, whatever batches it waits for."""
        self.results.put((-1, error))

    # ------------------------------------------------------------ runner

    def submit(self, task: Task) -> None:
        slot, block = self._blocks.acquire()
        self._slots[task.seq] = slot
        order = Order(self.stream_id, task, slot, block.name, block.size)
        if self._reads is None:
            self._pool._enqueue(self, order)
        else:
            self._reads.submit(order)

    def _read_and_queue(self, order: Order) -> None:
        """Io thread, shared reads: read the order's rows, place them in its block, queue it."""
        try:
            batch, seconds = read_batch(self._sources, order.task.indices)
            layouts, nbytes = fit(batch, order.block_size)
            if layouts is None:
                self._require(nbytes)
                rows = Rows(seconds, arrays=batch)
            else:
                write_arrays(self._blocks.buffer(order.slot), batch, layouts)
                rows = Rows(seconds, layouts=layouts)
            self._pool._enqueue(self, dataclasses.replace(order, rows=rows))
        except BaseException as error:  # noqa: BLE001 - every failure goes to the consumer
            self.results.put((order.task.seq, as_consumer_error(error)))

    def _require(self, nbytes: int) -> None:
        with self._blocks_lock:
            self._blocks.require(nbytes)

    def _settle(self, seq: int, reply: Reply | BaseException) -> Outcome:
        if seq < 0:  # the pool failed the whole flow
            assert isinstance(reply, BaseException)
            raise reply
        slot = self._slots.pop(seq)
        try:
            if isinstance(reply, BaseException):
                return reply
            if reply.failure is not None:
                return reply.failure.to_exception()
            if reply.layouts is not None:
                arrays = read_arrays(self._blocks.buffer(slot), reply.layouts)
            else:
                assert reply.arrays is not None
                self._require(reply.nbytes)
                arrays = reply.arrays
            return Done(arrays, *reply.seconds)
        finally:
            self._blocks.release(slot)

    def collect(self) -> list[tuple[int, Outcome]]:
        received = []
        with contextlib.suppress(queue.Empty):
            while True:
                seq, reply = self.results.get_nowait()
                received.append((seq, self._settle(seq, reply)))
        return received

    def receive(self, timeout: float) -> list[tuple[int, Outcome]]:
        try:
            seq, reply = self.results.get(timeout=timeout)
        except queue.Empty:
            return []
        return [(seq, self._settle(seq, reply)), *self.collect()]

    def close(self) -> None:
        """Leave the pool: drop waiting batches, free every block (idempotent)."""
        if self._closed:
            return
        self._closed = True
        # Io threads first, so that none queues an order or writes a block from now on.
        if self._reads is not None:
            self._reads.close()
        self._pool._remove(self)
        self._slots.clear()
        # A worker still running one of its batches writes into an unlinked block: its
        # mapping lives until the worker forgets the flow; the name is gone now.
        self._blocks.close()
        for block in self._shared:
            release_block(block)
        self._shared.clear()
        if self.owns_pool:
            self._pool.close()

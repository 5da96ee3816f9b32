"""Worker processes of a flow, seen from the parent: start them, send orders, settle replies.

Results come back through a reusable pool of shared-memory blocks owned by the parent; a
batch that does not fit its block travels pickled once and the pool's blocks grow for the
next ones.

With shared reads, io threads of the parent read each batch from the caller's sources (so a
cache they read through serves every flow of the process), write its rows into the batch's
block and send the order to the least busy process, which copies the rows out, preprocesses
them and writes the result into the same block. Rows that do not fit travel pickled with the
order. The processes receive no sources.

Shutdown: the parent stops its io threads, closes the task and result pipes of every process
(a worker exits on end of file, which also happens when the parent dies, so no orphan is
left), joins them, then terminates and kills stragglers, and unlinks every block once no
process can write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import pickle
import queue
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

import numpy as np

from data_tools.errors import WorkerError
from data_tools.io._batch import Done, as_consumer_error, read_batch
from data_tools.io._io_threads import POLL_S, IoThreads
from data_tools.io._messages import Order, Rows, fit
from data_tools.io._shm import BlockPool, read_arrays, release_block, share_array, write_arrays
from data_tools.io._worker_process import process_main
from data_tools.storage import as_picklable

if TYPE_CHECKING:
    from collections.abc import Sequence
    from multiprocessing.connection import Connection
    from multiprocessing.shared_memory import SharedMemory

    from data_tools.io._batch import Outcome, Preprocess, Task
    from data_tools.io._messages import Reply

__all__ = ["ProcessRunner"]

_PROCESS_GRACE_S = 0.5
_PROCESS_KILL_S = 0.3
# numpy arrays smaller than this are pickled to each worker rather than shared.
_SHARE_MIN_NBYTES = 1 << 20


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


class ProcessRunner:
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
        self._reads: IoThreads[Order] | None = None
        try:
            descriptions = [] if shared_reads else [self._describe(s) for s in sources]
            worker_io_threads = 0 if shared_reads else num_io_threads
            context = mp.get_context(start_method)
            for index in range(num_processes):
                self._workers.append(
                    self._start(context, index, descriptions, preprocess, worker_io_threads)
                )
            if shared_reads:
                self._reads = IoThreads(max(1, num_io_threads), self._read_and_send)
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

    def submit(self, task: Task) -> None:
        slot, block = self._pool.acquire()
        self._slots[task.seq] = slot
        order = Order(task, slot, block.name, block.size)
        if self._reads is None:
            self._send(order)
        else:
            self._reads.submit(order)

    def _send(self, order: Order) -> None:
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

    def _read_and_send(self, order: Order) -> None:
        """Io thread, shared reads: read the order's rows, place them in its block, send it."""
        try:
            batch, seconds = read_batch(self._sources, order.task.indices)
            layouts, nbytes = fit(batch, order.block_size)
            if layouts is None:
                self._require(nbytes)
                rows = Rows(seconds, arrays=batch)
            else:
                write_arrays(self._pool.buffer(order.slot), batch, layouts)
                rows = Rows(seconds, layouts=layouts)
            self._send(dataclasses.replace(order, rows=rows))
        except BaseException as error:  # noqa: BLE001 - every failure goes to the consumer
            self._failed_reads.put((order.task.seq, as_consumer_error(error)))

    def _require(self, nbytes: int) -> None:
        with self._lock:
            self._pool.require(nbytes)

    def _death(self, worker: _Worker) -> WorkerError:
        worker.process.join(POLL_S)
        return WorkerError(
            f"Worker process {worker.process.name} (pid {worker.process.pid}) died "
            f"unexpectedly ({_describe_exit(worker.process.exitcode)}); the flow stopped."
        )

    def _settle(self, worker: _Worker, reply: Reply) -> Outcome:
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
            return Done(arrays, *reply.seconds)
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
                    reply: Reply = worker.results.recv()
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
                reply: Reply = worker.results.recv()
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

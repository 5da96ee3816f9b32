"""Body of a worker process: receive orders, get their rows, preprocess, answer the parent.

A process reads its batches itself, from sources it received in picklable form (HDF5
datasets travel as path and key and are reopened in the process; numpy arrays are copied
once into shared memory that every process maps). h5py runs every call of a process behind
one lock, so reads only run in parallel across processes. Inside a process, io threads read
ahead while its main thread preprocesses. With shared reads the process receives no sources:
it copies out the rows the parent read. It writes each result into the order's block, or
sends it pickled when it does not fit. A worker exits on end of file of its task pipe, which
also happens when the parent dies, so no orphan is left.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from data_tools.io._batch import Read, preprocessed, read_batch
from data_tools.io._messages import Order, RemoteFailure, Reply, fit
from data_tools.io._shm import BlockCache, SharedArray, buffer_of, read_arrays, write_arrays

if TYPE_CHECKING:
    from collections.abc import Sequence
    from multiprocessing.connection import Connection
    from multiprocessing.shared_memory import SharedMemory

    from data_tools.io._batch import Preprocess

__all__ = ["process_main"]


def _take_rows(order: Order, blocks: BlockCache) -> Read:
    """Return copies of the rows the parent read for ``order`` (shared reads)."""
    rows = order.rows
    assert rows is not None
    if rows.layouts is None:
        assert rows.arrays is not None
        return rows.arrays, rows.read_seconds
    # Copies: the preprocessor may modify them in place, and its result reuses the block.
    buffer = buffer_of(blocks.attach(order.slot, order.block_name))
    return list(read_arrays(buffer, rows.layouts)), rows.read_seconds


def _taken_now(order: Order, blocks: BlockCache) -> Future[Read]:
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
    order: Order,
    blocks: BlockCache,
) -> Future[Read] | None:
    """Start getting the order's rows, or return None: the main thread reads them."""
    if order.rows is not None:
        # Copied out on arrival: ahead of the preprocessor, and off the main thread, where
        # large copies between the preprocessor's allocations cost page faults (about 7x).
        return _taken_now(order, blocks)
    if readers is None:
        return None
    return readers.submit(read_batch, sources, order.task.indices)


def _answer(
    order: Order,
    future: Future[Read] | None,
    sources: Sequence[Any],
    preprocess: Preprocess,
    blocks: BlockCache,
) -> Reply:
    task = order.task
    try:
        read = future.result() if future is not None else read_batch(sources, task.indices)
        done = preprocessed(read, preprocess, task)
        seconds = (done.read_seconds, done.preprocess_seconds)
        layouts, nbytes = fit(done.arrays, order.block_size)
        if layouts is None:
            return Reply(task.seq, arrays=done.arrays, nbytes=nbytes, seconds=seconds)
        # A block that cannot be attached (unlinked behind our back) fails this batch with
        # its own error, rather than ending the worker with an unexplained exit.
        write_arrays(buffer_of(blocks.attach(order.slot, order.block_name)), done.arrays, layouts)
    except BaseException as error:  # noqa: BLE001 - every failure goes to the parent
        return Reply(task.seq, failure=RemoteFailure.capture(error))
    return Reply(task.seq, layouts=layouts, seconds=seconds)


_Pending = tuple[Order, Future[Read] | None] | None


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
            order: Order = tasks.recv()
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
                results.send(Reply(reply.seq, failure=RemoteFailure.capture(error)))
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

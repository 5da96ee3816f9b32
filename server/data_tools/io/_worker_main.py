"""Body of a pool worker process: import once, then serve the orders of any stream.

A worker imports its preloaded modules, says READY, then handles one message at a time:
a ``Setup`` gives it a stream's sources (in picklable form: HDF5 datasets travel as path and
key and are reopened here, numpy arrays of 1 MiB and more as shared memory it maps) and its
preprocessor; an ``Order`` is one batch of a stream, which it reads itself (or, with shared
reads, copies out of the order's block, where the parent put the rows), preprocesses, and
writes into the order's block (pickled with the reply when it does not fit); a ``Forget``
drops streams that ended. A thread of the worker (``data_tools-orders``) takes every message
off the order pipe as it comes, so the parent can always send (the next order while this
worker runs one, or sends a large result) and never waits for the worker, nor it for the
parent.

Results are written straight into the block: once a stream's first batch in this worker
told its per-sample shapes and dtypes, a preprocessor that takes an ``out`` keyword gets
the block's arrays to fill (no stack-then-copy); its results are then already in place.

A worker exits on end of file of its order pipe, which also happens when the parent dies,
so no orphan is left.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import queue
import signal
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from data_tools.io._batch import preprocessed, read_batch
from data_tools.io._messages import READY, Forget, Order, RemoteFailure, Reply, Setup, fit
from data_tools.io._shm import (
    BlockCache,
    SharedArray,
    buffer_of,
    layout_arrays,
    read_arrays,
    view_arrays,
    write_arrays,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from multiprocessing.connection import Connection
    from multiprocessing.shared_memory import SharedMemory

    import numpy.typing as npt

    from data_tools.io._batch import Arrays, Preprocess, Read
    from data_tools.io._shm import ArrayLayout

__all__ = ["worker_main"]


@dataclass
class _Stream:
    """What this worker holds for one stream."""

    sources: list[Any]
    preprocess: Preprocess | None
    failure: RemoteFailure | None = None
    mapped: list[SharedMemory] = field(default_factory=list)
    blocks: BlockCache = field(default_factory=BlockCache)
    # Per-sample (shape, dtype) of each result, learnt from the stream's first batch here.
    samples: tuple[tuple[tuple[int, ...], str], ...] | None = None

    @classmethod
    def load(cls, payload: bytes) -> _Stream:
        """Unpickle a Setup's payload; a failure is kept and answers every order."""
        try:
            descriptions, preprocess = pickle.loads(payload)
        except BaseException as error:  # noqa: BLE001 - reported with each of its orders
            return cls([], None, RemoteFailure.capture(error))
        stream = cls([], preprocess)
        for description in descriptions:
            if isinstance(description, SharedArray):
                block, array = description.attach()
                stream.mapped.append(block)
                stream.sources.append(array)
            else:
                stream.sources.append(description)
        return stream

    def close(self) -> None:
        self.blocks.close()
        self.sources.clear()
        for block in self.mapped:
            with contextlib.suppress(BufferError):
                block.close()


def _rows(order: Order, stream: _Stream) -> Read:
    """The order's rows: read here, or copied out of its block (shared reads)."""
    rows = order.rows
    if rows is None:
        return read_batch(stream.sources, order.task.indices)
    if rows.layouts is None:
        assert rows.arrays is not None
        return rows.arrays, rows.read_seconds
    # Copies: the preprocessor may modify them in place, and its result reuses the block.
    buffer = buffer_of(stream.blocks.attach(order.slot, order.block_name))
    return list(read_arrays(buffer, rows.layouts)), rows.read_seconds


def _out_layouts(order: Order, stream: _Stream) -> tuple[ArrayLayout, ...] | None:
    """Where the results of ``order`` go in its block, if known and they fit."""
    if stream.samples is None or stream.preprocess is None or not stream.preprocess.out:
        return None
    num_rows = len(order.task.indices)
    shapes = [np.empty((num_rows, *shape), dtype) for shape, dtype in stream.samples]
    placed = layout_arrays(shapes)
    if placed is None or placed[1] > order.block_size:
        return None
    return placed[0]


def _learn_samples(stream: _Stream, arrays: Arrays, num_rows: int) -> None:
    if stream.samples is None and all(len(array) == num_rows for array in arrays):
        stream.samples = tuple((array.shape[1:], array.dtype.str) for array in arrays)


def _answer(order: Order, stream: _Stream) -> Reply:
    task = order.task
    if stream.failure is not None:
        return Reply(task.seq, failure=stream.failure)
    assert stream.preprocess is not None
    try:
        read = _rows(order, stream)
        out_layouts = _out_layouts(order, stream)
        out: list[npt.NDArray[Any]] | None = None
        buffer = None
        if out_layouts is not None:
            buffer = buffer_of(stream.blocks.attach(order.slot, order.block_name))
            out = view_arrays(buffer, out_layouts)
        done = preprocessed(read, stream.preprocess, task, out)
        seconds = (done.read_seconds, done.preprocess_seconds)
        _learn_samples(stream, done.arrays, len(task.indices))
        if _filled(done.arrays, out):
            return Reply(task.seq, layouts=out_layouts, seconds=seconds)
        arrays = _detached(done.arrays, buffer)
        layouts, nbytes = fit(arrays, order.block_size)
        if layouts is None:
            return Reply(task.seq, arrays=arrays, nbytes=nbytes, seconds=seconds)
        # A block that cannot be attached (unlinked behind our back) fails this batch with
        # its own error, rather than ending the worker with an unexplained exit.
        write_arrays(buffer_of(stream.blocks.attach(order.slot, order.block_name)), arrays, layouts)
    except BaseException as error:  # noqa: BLE001 - every failure goes to the parent
        return Reply(task.seq, failure=RemoteFailure.capture(error))
    return Reply(task.seq, layouts=layouts, seconds=seconds)


def _filled(arrays: Arrays, out: list[npt.NDArray[Any]] | None) -> bool:
    """Whether the preprocessor returned exactly the ``out`` arrays (filled in place)."""
    if out is None or len(arrays) != len(out):
        return False
    return all(result is target for result, target in zip(arrays, out, strict=True))


def _detached(arrays: Arrays, buffer: memoryview | None) -> Arrays:
    """``arrays``, with copies of those that lie in ``buffer`` (about to be overwritten)."""
    if buffer is None:
        return arrays
    memory = np.frombuffer(buffer, np.uint8)
    return tuple(array.copy() if np.may_share_memory(array, memory) else array for array in arrays)


_END = None  # the order pipe's end (the parent closed it or died)


def _receive_all(
    orders: Connection, inbox: queue.SimpleQueue[Setup | Order | Forget | None]
) -> None:
    """Thread: move every message of the order pipe to ``inbox``, then ``_END``."""
    try:
        while True:
            inbox.put(orders.recv())
    except (EOFError, OSError):
        pass
    finally:
        inbox.put(_END)


def _serve(orders: Connection, results: Connection) -> None:
    streams: dict[int, _Stream] = {}
    inbox: queue.SimpleQueue[Setup | Order | Forget | None] = queue.SimpleQueue()
    receiver = threading.Thread(
        target=_receive_all, args=(orders, inbox), name="data_tools-orders", daemon=True
    )
    receiver.start()
    try:
        while (message := inbox.get()) is not _END:
            if isinstance(message, Setup):
                streams[message.stream] = _Stream.load(message.payload)
            elif isinstance(message, Forget):
                for stream_id in message.streams:
                    if (stream := streams.pop(stream_id, None)) is not None:
                        stream.close()
            else:
                reply = _answer(message, streams[message.stream])
                try:
                    results.send(reply)
                except (TypeError, AttributeError, pickle.PicklingError) as error:
                    # A result holding objects that cannot be pickled (send pickles first).
                    results.send(Reply(reply.seq, failure=RemoteFailure.capture(error)))
    finally:
        for stream in streams.values():
            stream.close()


def worker_main(preload: Sequence[str], orders: Connection, results: Connection) -> None:
    """Body of a pool worker: import ``preload``, say READY, serve until the pipes close."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for module in preload:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - a stream that needs it reports the error itself
            traceback.print_exc()
    try:
        results.send(READY)
        _serve(orders, results)
    except (EOFError, OSError):
        pass  # The parent closed the pipes (or died): stop.
    # Everything this process owns is released: skip the interpreter's teardown, which
    # takes a few hundred milliseconds per process on a busy machine and delays close().
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

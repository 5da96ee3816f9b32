"""MultiNodeStream: one ordered stream merged from lanes read on several nodes at once."""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

import grpc

from data_client._stream_base import Positioned, StreamBase
from data_client.errors import InternalError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    import numpy.typing as npt

    from data_wire.v1.tensor_pb2 import Cursor

__all__ = ["LaneStream", "MultiNodeStream"]

_log = logging.getLogger(__name__)

# Batches a lane reads ahead of the trainer. The node prepares its own batches ahead too
# (limits.max_in_flight), so a short queue is enough to keep every node busy.
_LANE_QUEUE_DEPTH: Final = 2
# How often a blocked lane thread or trainer checks whether the stream was closed, in seconds.
_POLL: Final = 0.05
# How long close() waits for each lane thread; a cancelled call ends well within it.
_JOIN_TIMEOUT: Final = 5.0


class LaneStream(Positioned, Protocol):
    """What MultiNodeStream reads of one lane: a ``BatchStream`` of the lane's request.

    Its position (cursor, indices, epoch, batch_index) is that of its last batch.
    """

    def __next__(self) -> tuple[npt.NDArray[Any], ...]: ...

    @property
    def stall(self) -> float: ...

    @property
    def decoded_bytes(self) -> int: ...

    def close(self) -> None: ...


class _LaneBatch(NamedTuple):
    arrays: tuple[npt.NDArray[Any], ...]
    indices: npt.NDArray[np.int64] | None
    cursor: Cursor | None
    epoch: int | None
    batch_index: int | None
    decoded_bytes: int


class _LaneEnd(NamedTuple):
    """The lane's stream ended: its last batch has been queued."""


class _LaneFailure(NamedTuple):
    """The lane's stream raised ``error`` (after its own reconnects and failover)."""

    error: Exception


_LaneItem = _LaneBatch | _LaneEnd | _LaneFailure


class _LaneReader:
    """Reads one lane on a thread of its own into a bounded queue.

    It holds no reference to the MultiNodeStream, so a dropped stream is garbage collected
    (and closed) while its readers still run.
    """

    def __init__(self, lane: LaneStream, number: int) -> None:
        self.lane = lane
        self._queue: queue.Queue[_LaneItem] = queue.Queue(maxsize=_LANE_QUEUE_DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"data_client-lane-{number}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def get(self, closed: threading.Event) -> _LaneItem | None:
        """The lane's next item; None if ``closed`` is set first."""
        while not closed.is_set():
            try:
                return self._queue.get(timeout=_POLL)
            except queue.Empty:
                continue
        return None

    def stop(self) -> None:
        """Ask the thread to end: cancel the lane's call and stop waiting on the queue."""
        self._stop.set()
        self.lane.close()

    def join(self) -> None:
        thread = self._thread
        if thread is threading.current_thread() or thread.ident is None:
            return  # a stream garbage collected on its own reader thread, or never started
        thread.join(_JOIN_TIMEOUT)
        if thread.is_alive():
            _log.warning("thread %s did not stop within %s s", thread.name, _JOIN_TIMEOUT)

    def _run(self) -> None:
        lane = self.lane
        counted = 0  # of lane.decoded_bytes, what the batches queued so far carried
        try:
            while True:
                try:
                    arrays = next(lane)
                except StopIteration:
                    self._put(_LaneEnd())
                    return
                decoded, counted = lane.decoded_bytes - counted, lane.decoded_bytes
                batch = _LaneBatch(
                    arrays, lane.indices, lane.cursor, lane.epoch, lane.batch_index, decoded
                )
                if not self._put(batch):
                    return
        except Exception as error:  # noqa: BLE001 - the trainer's thread re-raises it in turn
            self._put(_LaneFailure(error))
        finally:
            lane.close()

    def _put(self, item: _LaneItem) -> bool:
        """Queue ``item``, waiting for room; False if stopped first."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
            except queue.Full:
                continue
            return True
        return False


class MultiNodeStream(StreamBase):
    """One stream of minibatches read from several data nodes at once.

    ``DataNodeClient(addresses).stream(...)`` returns it when the client has several nodes.
    Each batch index ``b`` of the trainer's part of an epoch belongs to lane ``b % K`` (K the
    number of nodes); lane k is streamed from node k on a thread of its own, a few batches
    ahead, so the nodes work in parallel. The lanes are merged back in (epoch, batch_index)
    order: the stream yields, bit for bit, the batches one node gives for the same request
    and seed, and its cursors are the same, so a checkpoint resumes on any number of nodes.

    When a node goes away (UNAVAILABLE), its lane moves to the next node, resuming from the
    lane's last cursor, so no sample is lost or repeated; once every node has failed in a
    row the lane backs off as ``BatchStream`` does, and finally raises ``UnavailableError``.
    Any other failure of a lane is raised when the trainer reaches that lane's next batch.

    It has ``BatchStream``'s interface: iterate tuples of arrays; ``cursor``,
    ``cursor_bytes()``, ``indices``, ``epoch`` and ``batch_index`` describe the last batch
    yielded; ``stall`` and ``stall_fraction`` measure the trainer's waiting. ``close()`` stops
    every lane thread and cancels every call; it runs at exhaustion, on error, on ``with``
    exit and when the stream is garbage collected.
    """

    def __init__(
        self,
        lanes: Sequence[LaneStream],
        *,
        start: Cursor | None,
        epochs: int | None,
        start_epoch: int = 0,
    ) -> None:
        """Prepare the stream; the lane threads start at the first ``next()``.

        Args:
            lanes: Lane k's stream for each k, in lane order (lane k of ``len(lanes)``).
            start: The cursor the lanes resume from, or None: ``start_epoch``, batch 0.
            epochs: Number of epochs of the stream, or None when it loops forever.
            start_epoch: The first epoch without ``start``. Default 0.
        """
        self._readers = tuple(_LaneReader(lane, k) for k, lane in enumerate(lanes))
        self._epochs = epochs
        self._start_epoch = start_epoch
        # Orders starting the readers against close() from another thread.
        self._lock = threading.Lock()
        self._started = False
        super().__init__(start)

    @property
    def lane_stalls(self) -> tuple[float, ...]:
        """Seconds each lane's thread waited on its node (receive and decode), by lane.

        A lane much slower than the others points at a slow node or link.
        """
        return tuple(reader.lane.stall for reader in self._readers)

    def close(self) -> None:
        """Stop every lane thread and cancel its call; idempotent and thread-safe."""
        with self._lock:
            self._closed.set()
        self._clock.close()
        for reader in self._readers:
            reader.stop()
        for reader in self._readers:
            reader.join()

    def __next__(self) -> tuple[npt.NDArray[Any], ...]:
        with self._clock.waiting():  # the trainer's stall
            return self._next_batch()

    def _next_batch(self) -> tuple[npt.NDArray[Any], ...]:
        if self._closed.is_set() or self._received_all(self._epochs) or not self._start_readers():
            self.close()
            raise StopIteration
        epoch, batch_index = self._next_position()
        item = self._readers[batch_index % len(self._readers)].get(self._closed)
        if item is None or isinstance(item, _LaneEnd):
            self.close()
            raise StopIteration
        if isinstance(item, _LaneFailure):
            self.close()
            raise item.error
        if (item.epoch, item.batch_index) != (epoch, batch_index):
            self.close()
            raise InternalError(
                grpc.StatusCode.INTERNAL,
                f"lane {batch_index % len(self._readers)} sent batch {item.batch_index} of "
                f"epoch {item.epoch} where batch {batch_index} of epoch {epoch} was due; do "
                "the nodes serve the same dataset?",
            )
        self._advance(item, item.arrays, item.decoded_bytes)
        return item.arrays

    def _start_readers(self) -> bool:
        """Start the lane threads once; False if the stream was closed first."""
        with self._lock:
            if self._closed.is_set():
                return False
            if not self._started:
                self._started = True
                for reader in self._readers:
                    reader.start()
            return True

    def _next_position(self) -> tuple[int, int]:
        """(epoch, batch_index) of the next batch: the cursor's, as a cursor names the next."""
        if self._cursor is None:
            return self._start_epoch, 0
        return self._cursor.epoch, self._cursor.batch_index

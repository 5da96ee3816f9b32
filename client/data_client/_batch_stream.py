"""Batch streams: one StreamBatches call per node, resumed from its cursor after UNAVAILABLE."""

from __future__ import annotations

import logging
import random
import secrets
import threading
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from data_client._requests import SEED_LIMIT
from data_client._stream_base import StreamBase
from data_client.errors import failure_cause, translate_rpc_error
from data_client.merge import MultiNodeStream
from data_wire.v1.data_node_pb2 import StreamRequest

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

    from data_client._decode import DecodedBatch
    from data_wire.v1.tensor_pb2 import Cursor

__all__ = ["BatchStream", "open_stream", "with_resume"]

# A stream's reconnects are logged here (INFO): the data-client command shows them on stderr.
_reconnect_log = logging.getLogger("data_client.reconnect")


class _StreamCall(Protocol):
    """What BatchStream uses of a running StreamBatches call (grpc's call iterator)."""

    def __next__(self) -> DecodedBatch: ...

    def cancel(self) -> bool: ...


class _StreamRpc(Protocol):
    """The StreamBatches callable (a grpc unary-stream multicallable decoding with decode_batch)."""

    def __call__(
        self, request: StreamRequest, *, metadata: tuple[tuple[str, str], ...]
    ) -> _StreamCall: ...


class BatchStream(StreamBase):
    """An iterator of minibatches from one StreamBatches call; returned by ``DataNodeClient.stream``.

    Each item is a tuple of numpy arrays in the dataset's array order, the first axis being
    the batch axis. Unless the stream was opened with ``copy=True``, the arrays are read-only
    zero-copy views of the received message (they keep it alive; copy one to write to it).

    After each item, ``cursor``, ``indices``, ``epoch`` and ``batch_index`` describe it, so a
    trainer can checkpoint ``cursor_bytes()`` and later pass it as ``stream(..., resume=...)``.

    When the node becomes UNAVAILABLE (restart, dropped connection, keepalive pings left
    unanswered by a hung node), the stream re-issues its request resuming from the last
    cursor received, so no sample is lost or duplicated; before any batch it re-issues the
    original request. With several nodes (one lane of a ``MultiNodeStream``) it first tries
    the next node at once (failover); once every node has failed in a row, and with one node
    after each failure, it waits with exponential backoff. Any other failure, or running out
    of reconnect attempts, raises a ``DataNodeError`` subclass.

    ``stall`` is the time the trainer spent waiting inside ``next()`` (receiving, decoding and
    reconnecting), ``stall_fraction`` its share of the wall time.

    ``close()`` cancels the call so the node frees the stream's workers at once; it is also
    called at exhaustion, on error, by ``with`` exit and when the stream is garbage collected.
    """

    def __init__(
        self,
        rpcs: Sequence[_StreamRpc],
        request: StreamRequest,
        *,
        metadata: tuple[tuple[str, str], ...],
        max_reconnects: int,
        initial_backoff: float,
        max_backoff: float,
        copy: bool,
    ) -> None:
        """Prepare the stream; the call starts at the first ``next()``.

        Args:
            rpcs: The StreamBatches callable (``decode_batch`` as its deserializer) of each
                node that can serve the request: the first is called first, the next one after
                each UNAVAILABLE.
            request: The request to issue (its ``resume`` is the initial cursor, if any).
            metadata: Call metadata sent with every (re)issued call.
            max_reconnects: Rounds of failures (every node UNAVAILABLE in a row) tolerated
                without a batch between, each followed by a backoff; at most
                ``(max_reconnects + 1) * len(rpcs) - 1`` reconnect attempts.
            initial_backoff: Seconds before the first reconnect; doubles per attempt.
            max_backoff: Upper bound of one backoff, in seconds.
            copy: Yield writable arrays that own their memory instead of read-only views.
        """
        self._rpcs = tuple(rpcs)
        self._node = 0  # position in _rpcs of the node called next
        self._request = request
        self._metadata = metadata
        self._max_reconnects = max_reconnects
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._copy = copy
        self._jitter = random.Random()
        # Guards _call against close() from another thread while __next__ (re)opens it.
        self._lock = threading.Lock()
        self._call: _StreamCall | None = None
        self._failures = 0
        super().__init__(request.resume if request.HasField("resume") else None)

    def __next__(self) -> tuple[npt.NDArray[Any], ...]:
        with self._clock.waiting():  # the trainer's stall
            return self._next_batch()

    def _next_batch(self) -> tuple[npt.NDArray[Any], ...]:
        while True:
            call = self._open_call()
            if call is None:
                raise StopIteration
            try:
                batch = next(call)
            except StopIteration:
                self.close()
                raise
            except grpc.RpcError as error:
                self._after_failure(error)
                continue
            self._failures = 0
            self._advance(batch, batch.arrays, batch.decoded_bytes)
            arrays = tuple(batch.arrays)
            if self._copy:
                arrays = tuple(a if a.flags.writeable else a.copy() for a in arrays)
            return arrays

    def close(self) -> None:
        """Cancel the call (the node frees the stream's workers); idempotent and thread-safe."""
        with self._lock:
            self._closed.set()
            call, self._call = self._call, None
        self._clock.close()
        if call is not None:
            call.cancel()

    def _open_call(self) -> _StreamCall | None:
        """The current call, issuing one (resuming from ``cursor``) if needed; None once closed."""
        with self._lock:
            if self._closed.is_set():
                return None
            if self._call is None:
                if self._received_all(None if self._request.loop_forever else self._request.epochs):
                    # The node went away after the last batch: the stream is complete, and
                    # a resume from its end would be refused (OUT_OF_RANGE).
                    self._closed.set()
                    return None
                request = with_resume(self._request, self._cursor)
                self._call = self._rpcs[self._node](request, metadata=self._metadata)
            return self._call

    def _after_failure(self, error: grpc.RpcError) -> None:
        """After UNAVAILABLE try the next node (backing off once all failed); else raise."""
        if self._closed.is_set():  # cancelled by close(): the caller asked for the stop
            return
        nodes = len(self._rpcs)
        unavailable = error.code() is grpc.StatusCode.UNAVAILABLE
        attempts = (self._max_reconnects + 1) * nodes - 1
        if unavailable and self._failures < attempts:
            self._failures += 1
            with self._lock:
                self._call = None
            self._node = (self._node + 1) % nodes
            rounds, rest = divmod(self._failures, nodes)
            delay = 0.0
            if rest == 0:
                # Jitter spreads the reconnects of many trainers after one node restart.
                delay = min(self._max_backoff, self._initial_backoff * 2 ** (rounds - 1))
                delay *= self._jitter.uniform(0.5, 1.0)
            details = error.details() or ""
            _reconnect_log.info(
                "node unavailable (%s); reconnect %d of %d in %.1f s",
                failure_cause(error.code(), details) or details,
                self._failures,
                attempts,
                delay,
            )
            if delay:
                self._closed.wait(delay)
            return
        self.close()
        note = ""
        if unavailable and self._failures:
            where = f" over {nodes} nodes" if nodes > 1 else ""
            note = f"gave up after {self._failures} reconnect attempts{where}"
        raise translate_rpc_error(error, note=note) from error


def open_stream(
    rpcs: Sequence[_StreamRpc],
    request: StreamRequest,
    *,
    metadata: tuple[tuple[str, str], ...],
    max_reconnects: int,
    initial_backoff: float,
    max_backoff: float,
    copy: bool,
) -> BatchStream | MultiNodeStream:
    """A stream of ``request`` over the nodes whose StreamBatches callables are ``rpcs``.

    One node: a ``BatchStream``. K nodes: a ``MultiNodeStream`` of K lanes, lane k a
    ``BatchStream`` of the request with ``lane {k, K}`` that calls node k first and fails over
    to nodes k+1, k+2, ... (modulo K). The keyword arguments are ``BatchStream``'s.
    """
    options: dict[str, Any] = {
        "metadata": metadata,
        "max_reconnects": max_reconnects,
        "initial_backoff": initial_backoff,
        "max_backoff": max_backoff,
        "copy": copy,
    }
    count = len(rpcs)
    if count == 1:
        return BatchStream(rpcs, request, **options)
    shared = StreamRequest()
    shared.CopyFrom(request)
    if not shared.HasField("seed"):
        # Each node would draw its own seed; the lanes must cut the same epochs.
        shared.seed = secrets.randbelow(SEED_LIMIT)
    lanes = []
    for k in range(count):
        lane_request = StreamRequest()
        lane_request.CopyFrom(shared)
        lane_request.lane.index, lane_request.lane.count = k, count
        lanes.append(BatchStream([*rpcs[k:], *rpcs[:k]], lane_request, **options))
    return MultiNodeStream(
        lanes,
        start=shared.resume if shared.HasField("resume") else None,
        epochs=None if shared.loop_forever else shared.epochs,
        start_epoch=shared.start_epoch,
    )


def with_resume(request: StreamRequest, cursor: Cursor | None) -> StreamRequest:
    """``request`` continuing from ``cursor`` (itself when None), with the cursor's seed if unset."""
    if cursor is None:
        return request
    resumed = StreamRequest()
    resumed.CopyFrom(request)
    resumed.resume.CopyFrom(cursor)
    if not resumed.HasField("seed"):
        resumed.seed = cursor.seed
    return resumed

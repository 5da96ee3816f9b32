"""StreamBase: what every minibatch stream of the client shares, whatever feeds it.

The position after the last batch yielded (``cursor``, ``indices``, ``epoch``,
``batch_index``), the trainer's waiting (``stall``), the iterator and context-manager
protocols, and when the batches received complete the stream. ``BatchStream`` (one call,
one node at a time) and ``MultiNodeStream`` (lanes merged from several nodes) build on it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Protocol, Self

from data_client._stall import StallClock

if TYPE_CHECKING:
    from types import TracebackType

    import numpy as np
    import numpy.typing as npt

    from data_wire.v1.tensor_pb2 import Cursor

__all__ = ["Positioned", "StreamBase"]


class Positioned(Protocol):
    """A received batch's place in the stream: a decoded ``Batch``, or a lane's last batch."""

    @property
    def cursor(self) -> Cursor | None: ...

    @property
    def indices(self) -> npt.NDArray[np.int64] | None: ...

    @property
    def epoch(self) -> int | None: ...

    @property
    def batch_index(self) -> int | None: ...


class StreamBase:
    """Position, stall and protocols of a stream; subclasses supply ``__next__`` and ``close``.

    ``close()`` must set ``_closed`` and call ``_clock.close()``; it is called on ``with``
    exit and when the stream is garbage collected.
    """

    def __init__(self, start: Cursor | None) -> None:
        """Start before any batch, at ``start`` (a resume cursor) or None: the beginning."""
        self._clock = StallClock()
        self._closed = threading.Event()
        self._cursor = start
        self._indices: npt.NDArray[np.int64] | None = None
        self._epoch: int | None = None
        self._batch_index: int | None = None
        self._decoded_bytes = 0
        self._delivered_bytes = 0

    @property
    def cursor(self) -> Cursor | None:
        """The cursor after the last batch yielded (before any: the ``resume`` given, or None).

        It is the cursor one node gives after that batch: resume it on one or several nodes.
        """
        return self._cursor

    @property
    def indices(self) -> npt.NDArray[np.int64] | None:
        """Global sample index of each row of the last batch yielded; None before the first."""
        return self._indices

    @property
    def epoch(self) -> int | None:
        """Epoch of the last batch yielded, from 0; None before the first."""
        return self._epoch

    @property
    def batch_index(self) -> int | None:
        """Index of the last batch yielded within its epoch, from 0; None before the first."""
        return self._batch_index

    @property
    def closed(self) -> bool:
        """Whether the stream is closed (exhausted, failed or closed by the caller)."""
        return self._closed.is_set()

    @property
    def stall(self) -> float:
        """Seconds the trainer spent waiting inside ``next()`` for data, over all calls."""
        return self._clock.stall

    @property
    def stall_fraction(self) -> float:
        """``stall`` over the wall time since the first ``next()`` began, in [0, 1].

        The wall time runs until now, or, once the stream is closed, until the end of the
        last ``next()``. Near 1: the node (or the network) limits training; near 0: the
        trainer does.
        """
        return self._clock.fraction

    @property
    def decoded_bytes(self) -> int:
        """Bytes of storage chunks the node(s) decoded for this stream so far.

        Counted by the node: through its chunk cache, the chunks it decoded for the stream;
        without one, each chunk a batch reads, whole (the rows alone of an unchunked
        source). Summed over reconnects and lanes.
        """
        return self._decoded_bytes

    @property
    def delivered_bytes(self) -> int:
        """Bytes of the arrays of the batches yielded so far (as decoded, uncompressed)."""
        return self._delivered_bytes

    @property
    def read_amplification(self) -> float:
        """``decoded_bytes / delivered_bytes``: how many bytes the node decoded per byte
        delivered (1 when each chunk is decoded once per epoch; an exact shuffle over more
        than the node's cache holds is far above). 0.0 before the first batch."""
        return self._decoded_bytes / self._delivered_bytes if self._delivered_bytes else 0.0

    def cursor_bytes(self) -> bytes | None:
        """``cursor`` serialized for a checkpoint (``stream(resume=...)`` accepts it); or None."""
        return None if self._cursor is None else self._cursor.SerializeToString()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> tuple[npt.NDArray[Any], ...]:
        """The next batch's arrays; a subclass runs its own inside ``self._clock.waiting()``."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the stream; idempotent and thread-safe."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # A partly constructed instance has nothing to stop.
        if hasattr(self, "_closed"):
            self.close()

    def _advance(
        self, batch: Positioned, arrays: tuple[npt.NDArray[Any], ...], decoded_bytes: int
    ) -> None:
        """Make ``batch`` (``arrays``, decoded in ``decoded_bytes`` of chunks) the last yielded."""
        self._cursor = batch.cursor
        self._indices = batch.indices
        self._epoch = batch.epoch
        self._batch_index = batch.batch_index
        self._decoded_bytes += decoded_bytes
        self._delivered_bytes += sum(array.nbytes for array in arrays)

    def _received_all(self, epochs: int | None) -> bool:
        """Whether the batches yielded so far end a stream of ``epochs`` (None: forever).

        Only after a batch: a ``resume`` cursor already at the end goes to the node, which
        refuses it (OutOfRangeError) rather than answer with a silently empty stream.
        """
        return (
            epochs is not None
            and self._batch_index is not None
            and self._cursor is not None
            and self._cursor.epoch >= epochs
        )

"""The chunk reads a stream will make, known ahead, and the offline optimum they allow.

A stream's order is a pure function of its plan, so the storage chunks each of its batches
reads are known before it reads them. A :class:`StreamReads` holds a window of those reads
(at most ``horizon`` of them ahead of the stream) and moves along it as the stream reads;
the ``ChunkCache`` asks it how soon a chunk is needed next and evicts the chunk needed
farthest away (Belady's rule). :func:`optimal_decodes` counts the decodes of the offline
optimum on a whole known sequence of reads, the bound the cache is measured against.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import TYPE_CHECKING, Any

from data_tools._parse import parse_positive_int

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable, Iterator, Sequence

__all__ = ["DEFAULT_HORIZON", "StreamReads", "optimal_decodes"]

DEFAULT_HORIZON = 1 << 14
"""Reads a ``StreamReads`` knows ahead of its stream by default (about a MB of bookkeeping)."""

# Batches the window takes in at the start, and at most after each read: a batch reads
# several chunks, so the window still grows towards the horizon while the start stays cheap
# (topping up 64 batches per read made a stream's first batch plan about 1,500 batches).
_FILL_BATCHES = 64
_TOP_UP_BATCHES = 2
# A read left unconsumed this far behind the stream's latest read is taken as skipped (the
# stream read otherwise than foreseen), so one missed read never freezes the window.
_SLACK = 4096


class StreamReads:
    """The chunk reads of one stream, in order, and how far the stream has got through them.

    Each item of ``batches`` lists the chunks one batch reads, in the order it reads them,
    as ``(chunk_id, ref)`` pairs: ``chunk_id`` names the chunk (equal ids are one chunk),
    ``ref`` is whatever the cache needs to decode it ahead of need. Reads are consumed with
    :meth:`read` as the stream makes them; a read consumes the earliest foreseen use of its
    chunk not consumed yet, so batches read in parallel, slightly out of order, still match.
    A read of a chunk not foreseen is ignored.

    Not thread-safe by itself: the ``ChunkCache`` it is registered with calls it under its
    lock. ``decoded_bytes`` counts the bytes of chunks decoded for this stream (read on a
    miss, or decoded ahead for it).

    Args:
        batches: The chunks each batch reads, in stream order; read lazily, as the window
            moves (an endless stream's is endless).
        horizon: The most reads known ahead of the stream, >= 1. Default
            ``DEFAULT_HORIZON``. Chunks first needed beyond it count as not needed.

    Raises:
        TypeError: ``horizon`` is not an integer.
        ValueError: ``horizon`` is less than 1.
    """

    def __init__(
        self, batches: Iterable[Sequence[tuple[Hashable, Any]]], *, horizon: int = DEFAULT_HORIZON
    ) -> None:
        self._batches: Iterator[Sequence[tuple[Hashable, Any]]] | None = iter(batches)
        self._horizon = parse_positive_int("horizon", horizon)
        self._base = 0  # position of the window's first read: the stream's position
        self._window: deque[tuple[Hashable, Any]] = deque()
        self._consumed: deque[bool] = deque()
        self._uses: dict[Hashable, deque[int]] = {}  # each chunk's unconsumed positions
        self.decoded_bytes = 0
        self._fill(_FILL_BATCHES)

    @property
    def position(self) -> int:
        """Reads consumed (or skipped) so far: the position of the next read expected."""
        return self._base

    def read(self, chunk_id: Hashable) -> bool:
        """Consume the earliest foreseen, unconsumed read of ``chunk_id``; False if none."""
        uses = self._uses.get(chunk_id)
        if not uses:
            return False
        position = uses.popleft()
        if not uses:
            del self._uses[chunk_id]
        self._consumed[position - self._base] = True
        while self._consumed and (self._consumed[0] or position - self._base > _SLACK):
            self._drop_first()
        self._fill(_TOP_UP_BATCHES)
        return True

    def next_use(self, chunk_id: Hashable) -> int | None:
        """Reads from the stream's position to the next use of ``chunk_id``; None: not foreseen."""
        uses = self._uses.get(chunk_id)
        return uses[0] - self._base if uses else None

    def upcoming(self, limit: int) -> Iterator[tuple[int, Hashable, Any]]:
        """``(distance, chunk_id, ref)`` of the unconsumed reads among the next ``limit``."""
        for distance, (chunk_id, ref), consumed in zip(
            range(limit), self._window, self._consumed, strict=False
        ):
            if not consumed:
                yield distance, chunk_id, ref

    def _drop_first(self) -> None:
        chunk_id, _ = self._window.popleft()
        if not self._consumed.popleft():  # skipped: its chunk's earliest use goes with it
            uses = self._uses[chunk_id]
            uses.popleft()
            if not uses:
                del self._uses[chunk_id]
        self._base += 1

    def _fill(self, batches: int) -> None:
        """Read at most ``batches`` batches, until the window holds ``horizon`` reads (or the
        stream ends): a stream's start and each of its reads cost little, and the window
        reaches the horizon over the first reads."""
        for _ in range(batches):
            if self._batches is None or len(self._window) >= self._horizon:
                return
            batch = next(self._batches, None)
            if batch is None:
                self._batches = None
                return
            for chunk_id, ref in batch:
                self._uses.setdefault(chunk_id, deque()).append(self._base + len(self._window))
                self._window.append((chunk_id, ref))
                self._consumed.append(False)


def optimal_decodes(reads: Sequence[Hashable], capacity: int) -> int:
    """The fewest decodes any cache of ``capacity`` equal-sized chunks makes on ``reads``.

    Belady's offline rule: on a miss with the cache full, drop the chunk (the one just
    read included, which then is not kept) whose next read is farthest away, or never.

    Args:
        reads: Chunk ids in read order.
        capacity: Chunks the cache holds, >= 0.

    Returns:
        The number of reads that decode their chunk.
    """
    never = len(reads)
    next_read = [never] * len(reads)
    last: dict[Hashable, int] = {}
    for position in range(len(reads) - 1, -1, -1):
        next_read[position] = last.get(reads[position], never)
        last[reads[position]] = position
    held: dict[Hashable, int] = {}  # chunk -> its next read
    farthest: list[tuple[int, int, Hashable]] = []  # (-next read, tie, chunk); stale kept
    tie = itertools.count()
    decodes = 0
    for position, chunk in enumerate(reads):
        upcoming = next_read[position]
        if chunk not in held:
            decodes += 1
            if capacity == 0:
                continue
            if len(held) >= capacity:
                while -farthest[0][0] != held.get(farthest[0][2]):
                    heapq.heappop(farthest)  # stale: the chunk was read again or dropped
                if -farthest[0][0] <= upcoming:
                    continue  # nothing held is needed later than this chunk: not kept
                del held[heapq.heappop(farthest)[2]]
        held[chunk] = upcoming
        heapq.heappush(farthest, (-upcoming, next(tie), chunk))
    return decodes

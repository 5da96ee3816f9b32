"""A bounded, thread-safe LRU cache of decoded storage chunks, shared by every reader.

(Interface only; the implementation is in progress.)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CacheStats", "ChunkCache"]


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a cache's counters.

    Attributes:
        hits: Chunk lookups served from the cache.
        misses: Chunk lookups that read and decoded the chunk from storage.
        evictions: Chunks dropped to stay within ``max_bytes``.
        nbytes: Bytes of decoded chunks held now.
        max_bytes: The budget.
    """

    hits: int
    misses: int
    evictions: int
    nbytes: int
    max_bytes: int


class ChunkCache:
    """Decoded chunks of any number of sources, within ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def stats(self) -> CacheStats:
        """The counters now."""
        return CacheStats(0, 0, 0, 0, self.max_bytes)

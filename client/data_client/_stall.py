"""StallClock: the seconds a consumer spent waiting inside a stream's ``next()``."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["StallClock"]


class StallClock:
    """Sums the time spent in ``next()`` calls, and the wall time since the first one began.

    A stream runs its ``next()`` inside ``with clock.waiting():`` (or calls ``start()`` on
    entering it and ``stop(started)`` on leaving it, in a ``finally``), and ``close()`` when
    it closes. Reading is safe from any thread.
    """

    def __init__(self) -> None:
        self._stall = 0.0
        self._first: float | None = None
        self._last = 0.0
        self._closed = False

    def start(self) -> float:
        """Note that a ``next()`` begins; return its start time (pass it to ``stop``)."""
        now = time.perf_counter()
        if self._first is None:
            self._first = now
        return now

    def stop(self, started: float) -> None:
        """Note that the ``next()`` begun at ``started`` returned or raised."""
        self._last = time.perf_counter()
        self._stall += self._last - started

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Count the ``with`` block as time spent in one ``next()``."""
        started = self.start()
        try:
            yield
        finally:
            self.stop(started)

    def close(self) -> None:
        """Freeze the wall time at the end of the last ``next()``."""
        self._closed = True

    @property
    def stall(self) -> float:
        """Seconds spent inside ``next()`` so far."""
        return self._stall

    @property
    def fraction(self) -> float:
        """``stall`` over the wall time from the first ``next()`` (0.0 before it).

        The wall time ends now, or, once closed, at the end of the last ``next()``.
        """
        if self._first is None:
            return 0.0
        end = max(self._last, self._first) if self._closed else time.perf_counter()
        elapsed = end - self._first
        return min(1.0, self._stall / elapsed) if elapsed > 0 else 0.0

"""Io threads of a process: named daemon threads that run one function on each queued item.

Threads stop on one Event and are joined with a timeout; a leftover is logged by name.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["POLL_S", "IoThreads"]

logger = logging.getLogger(__name__)

POLL_S = 0.1
_THREAD_JOIN_S = 1.0


_Item = TypeVar("_Item")


def _thread_main(
    items: queue.Queue[_Item], stop: threading.Event, work: Callable[[_Item], None]
) -> None:
    while not stop.is_set():
        try:
            item = items.get(timeout=POLL_S)
        except queue.Empty:
            continue
        work(item)


class IoThreads(Generic[_Item]):
    """Io threads of this process, named ``data_tools-io-N``, that run ``work`` on each item.

    ``work`` must not raise: it reports its failures itself.
    """

    def __init__(self, num_threads: int, work: Callable[[_Item], None]) -> None:
        self._items: queue.Queue[_Item] = queue.Queue()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=_thread_main,
                args=(self._items, self._stop, work),
                name=f"data_tools-io-{index}",
                daemon=True,
            )
            for index in range(num_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, item: _Item) -> None:
        self._items.put(item)

    def close(self) -> None:
        """Stop the threads: each ends once its current item is done (joined with a timeout)."""
        self._stop.set()
        deadline = time.monotonic() + _THREAD_JOIN_S
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.warning("thread %s did not stop within %.1f s", thread.name, _THREAD_JOIN_S)

"""Messages between a worker pool and its processes, and fitting arrays into a block.

Parent to worker: ``Setup`` (a stream's sources and preprocessor, pickled once by the
parent), ``Order`` (one batch of a stream), ``Forget`` (streams that ended). Worker to
parent: ``READY`` once it has imported what it preloads, then one ``Reply`` per order.
A batch's rows (shared reads) and its result travel in the order's shared-memory block when
they fit, pickled with the message when they do not. A failure travels as RemoteFailure.
"""

from __future__ import annotations

import contextlib
import pickle
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from data_tools.errors import WorkerError
from data_tools.io._shm import layout_arrays

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

    from data_tools.io._batch import Arrays, Task
    from data_tools.io._shm import ArrayLayout

__all__ = ["READY", "Forget", "Order", "RemoteFailure", "Reply", "Rows", "Setup", "fit"]

READY = "ready"


class _RemoteTracebackError(Exception):
    """The traceback text of an exception raised in a worker process."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class RemoteFailure:
    """An exception caught in a worker process, in a form that always crosses the pipe."""

    pickled: bytes | None
    summary: str
    text: str

    @classmethod
    def capture(cls, error: BaseException) -> RemoteFailure:
        text = "".join(traceback.format_exception(error))
        summary = "".join(traceback.format_exception_only(error)).strip()
        pickled: bytes | None = None
        if isinstance(error, Exception):
            try:
                pickled = pickle.dumps(error)
                pickle.loads(pickled)
            except Exception:  # noqa: BLE001 - any failure means "send the text only"
                pickled = None
        return cls(pickled, summary, text)

    def to_exception(self) -> BaseException:
        """Rebuild the original exception, its remote traceback as ``__cause__``.

        An exception that cannot be rebuilt becomes a WorkerError carrying the text.
        """
        if self.pickled is not None:
            with contextlib.suppress(Exception):
                error: BaseException = pickle.loads(self.pickled)
                error.__cause__ = _RemoteTracebackError(self.text)
                return error
        return WorkerError(
            f"A worker process raised {self.summary}\n\nWorker traceback:\n{self.text}"
        )


@dataclass(frozen=True, slots=True)
class Rows:
    """The rows of a batch read by the parent (shared reads), on their way to a worker process.

    ``layouts`` when they were written into the order's block, ``arrays`` (pickled with the
    order) when they did not fit; ``read_seconds`` as measured in the parent.
    """

    read_seconds: float
    layouts: tuple[ArrayLayout, ...] | None = None
    arrays: list[npt.NDArray[Any]] | None = None


@dataclass(frozen=True, slots=True)
class Setup:
    """Parent to worker process: what stream ``stream`` needs, sent before its first order.

    ``payload`` is the pickled pair (source descriptions, Preprocess): pickled once in the
    parent whatever the number of workers, and only unpickled (importing what it names) in
    the workers that serve the stream.
    """

    stream: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Forget:
    """Parent to worker process: these streams ended; drop their sources and blocks."""

    streams: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Order:
    """Parent to worker process: run ``task`` of ``stream``, write its result into ``block_name``.

    ``rows`` with shared reads: the batch as the parent read it; None: the process reads it.
    ``attempt`` counts the workers that died running it before (see WorkerPool).
    """

    stream: int
    task: Task
    slot: int
    block_name: str
    block_size: int
    rows: Rows | None = None
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class Reply:
    """Worker process to parent: where the result of batch ``seq`` is.

    ``layouts`` when it was written into the order's block; ``arrays`` (and the
    ``nbytes`` a block would have needed) when it did not fit; ``failure`` on error. The
    ``seconds`` are the read and preprocess seconds of ``Done``, measured in the process.
    """

    seq: int
    layouts: tuple[ArrayLayout, ...] | None = None
    arrays: Arrays | None = None
    nbytes: int = 0
    failure: RemoteFailure | None = None
    seconds: tuple[float, float] = (0.0, 0.0)


def fit(
    arrays: Sequence[npt.NDArray[Any]], block_size: int
) -> tuple[tuple[ArrayLayout, ...] | None, int]:
    """Return the layouts of ``arrays`` in a block (None if they do not fit) and their bytes.

    Arrays of Python objects never fit (they cannot live in shared memory): 0 bytes.
    """
    placed = layout_arrays(arrays)
    if placed is None:
        return None, 0
    layouts, nbytes = placed
    return (layouts if nbytes <= block_size else None), nbytes

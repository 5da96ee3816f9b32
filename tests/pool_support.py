"""Preprocessors for worker-pool tests, importable by spawned worker processes.

A gated preprocessor holds every batch until a gate file exists, so a test can see a batch
running in a worker (through ``WorkerPool.workers()``) and kill that worker for sure.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The environment variable naming the gate file of the node's ``gated`` preprocessor.
GATE_ENV = "DATA_TOOLS_TEST_GATE"
_POLL_S = 0.002


def wait_for_gate(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(_POLL_S)


@dataclass(frozen=True)
class Gate:
    """A preprocessor that waits for the file ``path``, then doubles every array."""

    path: str

    def __call__(self, batch):
        wait_for_gate(self.path)
        return [array * 2 for array in batch]


def gated(batch):
    """A registered preprocessor: waits for the file named by $DATA_TOOLS_TEST_GATE, then
    doubles the image (the batch's first array)."""
    wait_for_gate(os.environ[GATE_ENV])
    image, *rest = batch
    return (image * 2, *rest)


def fill_out(batch, out=None):
    """Double x; the second result says whether the results were written into ``out``."""
    (x,) = batch
    if out is None:
        return x * 2, np.zeros(len(x), np.int8)
    np.multiply(x, 2, out=out[0])
    out[1][...] = 1
    return out[0], out[1]


def noisy(batch, rng):
    """Add noise drawn from the batch's rng (so batches depend on the flow's seed)."""
    return [array + rng.standard_normal(array.shape) for array in batch]


def wait_for(predicate, timeout=60.0, what="the condition"):
    """Return ``predicate()`` once truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(_POLL_S)
    return value


def running(pool, exclude=()):
    """The worker of ``pool`` running a batch now (not one of ``exclude``'s pids), or None."""
    for worker in pool.workers():
        if worker.stream is not None and worker.pid not in exclude:
            return worker
    return None


def open_gate(path: Path) -> None:
    path.touch()


def kill_running(pool, exclude=()):
    """SIGKILL the worker of ``pool`` running a batch (not one of ``exclude``'s pids), once
    there is one; return what it was."""
    worker = wait_for(lambda: running(pool, exclude), what="a worker running a batch")
    os.kill(worker.pid, signal.SIGKILL)
    return worker


def read_in_thread(batches):
    """Read the iterable ``batches`` on a thread of its own; return the thread and a list of
    what it read, then the exception that ended it, if any."""
    got = []

    def read():
        try:
            got.extend(batches)
        except Exception as error:  # noqa: BLE001 - the test looks at it
            got.append(error)

    thread = threading.Thread(target=read)
    thread.start()
    return thread, got

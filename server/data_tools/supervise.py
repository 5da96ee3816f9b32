"""Child processes: why one ended, and stopping one for good.

Shared by the worker pool of ``data_tools.io`` and the data node's job runner, so a dead
process is described, and a live one stopped, the same way everywhere.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Any

__all__ = ["exit_reason", "stop_process"]


def exit_reason(exitcode: int | None) -> str:
    """Say how a process ended, from its ``exitcode`` (as multiprocessing reports it).

    Returns:
        ``"killed by SIGKILL"`` (any signal, by name) for a negative code, else
        ``"exit code N"`` (``"exit code None"`` while it runs).
    """
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


def stop_process(process: Any, *, grace_s: float, kill_s: float) -> None:
    """Make sure ``process`` (a multiprocessing process) has ended, and join it.

    Waits ``grace_s`` seconds for it to end by itself, then terminates it (SIGTERM) and
    waits ``kill_s`` seconds, then kills it (SIGKILL) and waits until it is gone. A process
    that was never started is left as it is.
    """
    if process.pid is None:
        return
    process.join(grace_s)
    if process.exitcode is None:
        process.terminate()
        process.join(kill_s)
    if process.exitcode is None:
        process.kill()
        process.join()

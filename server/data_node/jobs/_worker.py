"""The entry point of a job's process: run the build and report to the node through a pipe.

Messages sent, each a (kind, payload) tuple. A patch build: ("plan", {class: ClassPlan})
once the inputs are read, ("progress", {class: written}) at most every
``PROGRESS_INTERVAL`` seconds, then ("done", {class: written}). An import: ("case",
CaseReport) after each case, then ("done", {case index: slices kept}). Either may end with
("failed", message) instead. The node decides the job's state from
these and from the process's exit; the output directory is the node's to publish.

The process first enters its staging directory (checking, by device and inode, that it is
the one the node made), and a local build writes relative to it, so a directory of the
path swapped for a symlink later cannot redirect a write outside the output root.

The process ends on SIGTERM (raised as SystemExit, so open writers and a Dask client are
closed without marking anything complete; should Python swallow that SystemExit, as it does
in a weakref callback or ``__del__``, the process exits hard ``CLEAN_EXIT_TIMEOUT`` seconds
later rather than waiting for the node's SIGKILL) and by itself, at once and without cleaning up,
when the node's end of the pipe closes: the node is gone (killed, say) and nobody would
publish the output. Its parent, the forkserver, cannot tell: every child of a forkserver
holds the pipe whose end tells the forkserver that the node is gone.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from data_node.jobs._build import build
from data_node.jobs._import import ImportSpec, run_import

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from types import FrameType

    from data_node.jobs._build import BuildSpec, Counts
    from data_tools.medical import CaseReport
    from data_tools.patches import ClassPlan

__all__ = ["CLEAN_EXIT_TIMEOUT", "PROGRESS_INTERVAL", "enter_staging", "error_text", "run"]

PROGRESS_INTERVAL = 0.1
CLEAN_EXIT_TIMEOUT = 1.0


def run(
    spec: BuildSpec | ImportSpec, save_path: str, identity: tuple[int, int], conn: Connection
) -> None:
    """Build ``spec`` in ``save_path``, reporting through ``conn``; the process's target.

    ``identity`` is the (device, inode) of the directory the node made at ``save_path``.
    """
    signal.signal(signal.SIGTERM, _exit_on_signal)
    _exit_with_node(conn)
    reporter = _Reporter(conn)
    try:
        enter_staging(save_path, identity)
        # A local build or an import writes relative to the directory entered: a directory
        # of the path swapped for a symlink meanwhile cannot redirect its writes. Dask
        # workers, other processes, need the path.
        if isinstance(spec, ImportSpec):
            reports = run_import(spec, Path(), reporter.case)
            counts = {report.index: report.kept for report in reports}
        else:
            where = Path(save_path) if spec.executor == "dask" else Path()
            counts = build(spec, where, reporter.planned, reporter.progress)
    except Exception as error:  # noqa: BLE001 - the process boundary: every failure is reported
        conn.send(("failed", error_text(error)))
    else:
        conn.send(("done", counts))
    # conn stays open until the process exits: closing it would wake the watchdog.


def enter_staging(save_path: str, identity: tuple[int, int]) -> None:
    """Make the staging directory this process's working directory, checking it is the node's.

    Raises:
        PermissionError: The directory at ``save_path`` is not the one the node made (a
            component was swapped, for a symlink say, since).
    """
    fd = os.open(save_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != identity:
            raise PermissionError(
                f"output: Expected the staging directory the node made at {save_path!r}. "
                "Got another directory (a part of its path was replaced); nothing was written."
            )
        os.fchdir(fd)
    finally:
        os.close(fd)


def error_text(error: BaseException) -> str:
    """A job's error message: the library's messages name the argument; others their type."""
    if isinstance(error, ValueError | TypeError | LookupError):
        return str(error) or type(error).__name__
    return f"{type(error).__name__}: {error}"


class _Reporter:
    """Sends the plan, then progress no more often than PROGRESS_INTERVAL."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._last = 0.0

    def planned(self, plan: dict[int, ClassPlan]) -> None:
        self._conn.send(("plan", plan))

    def case(self, report: CaseReport) -> None:
        self._conn.send(("case", report))

    def progress(self, written: Counts) -> None:
        now = time.monotonic()
        if now - self._last >= PROGRESS_INTERVAL:
            self._last = now
            self._conn.send(("progress", written))


def _exit_on_signal(signum: int, frame: FrameType | None) -> NoReturn:
    # A signal landing in an import's module-lock callback raises there, and is ignored.
    backstop = threading.Timer(CLEAN_EXIT_TIMEOUT, os._exit, (128 + signum,))
    backstop.daemon = True
    backstop.start()
    raise SystemExit(128 + signum)


def _exit_with_node(conn: Connection) -> None:
    """End this process at once when the node closes its end of ``conn`` (or dies)."""
    watcher = select.poll()
    # A pipe's write end reports POLLERR once no reader is left; nothing else is asked for.
    watcher.register(conn.fileno(), select.POLLERR)

    def watch() -> None:
        if any(events & select.POLLERR for _, events in watcher.poll()):
            os._exit(1)

    threading.Thread(target=watch, name="data_node-job-watchdog", daemon=True).start()

"""Leak checks: no thread, child process or /dev/shm entry outlives the code under test.

Use ``with assert_no_leaks(): ...`` around the code, or the ``no_leaks`` fixture
(``from leak_check import no_leaks`` then ``@pytest.mark.usefixtures("no_leaks")``).
After the block it waits up to ``timeout`` seconds (default 30: it returns as soon as
everything is gone, so only a leak waits that long, and a loaded machine gets its time) for

* every new thread whose name starts with ``thread_prefix`` ("data_tools") to end,
* every new child process of this process to be gone (reaped: a zombie counts as a leak,
  as it means nobody joined it), except multiprocessing's own helpers (the resource tracker
  and the forkserver), which live as long as the interpreter,
* every new entry of /dev/shm whose name starts with ``shm_prefix`` (default
  ``data_tools_<this pid>_``: data_tools names each block after the process that owns it) to
  be unlinked. Other programs on the machine
  (a parallel test run, a browser) create and drop entries of their own at any time, so
  only ours are checked by default; pass ``shm_prefix=""`` to check every entry,

and fails listing whatever is left.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "Snapshot",
    "assert_no_leaks",
    "descendants",
    "find_leaks",
    "forkserver_children",
    "live_pids",
    "no_leaks",
]

_SHM = Path("/dev/shm")
_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _processes() -> Iterator[tuple[int, str, int, str]]:
    """(pid, state, parent pid, command line) of every process, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        yield int(entry.name), state, int(parent), cmdline


def _child_pids() -> set[int]:
    """PIDs whose parent is this process (includes zombies), but multiprocessing's helpers."""
    multiprocessing.active_children()  # reaps children multiprocessing already joined
    me = os.getpid()
    return {
        pid
        for pid, _, parent, cmdline in _processes()
        if parent == me and not any(helper in cmdline for helper in _HELPERS)
    }


def live_pids() -> set[int]:
    """Every process that is alive (not a zombie)."""
    return {pid for pid, state, _, _ in _processes() if state != "Z"}


def descendants(pid: int) -> set[int]:
    """Every live (not zombie) process below ``pid``: children, grandchildren, ..."""
    parents = {p: parent for p, state, parent, _ in _processes() if state != "Z"}
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def forkserver_children() -> set[int]:
    """Live children of this process's forkserver (where the node runs build jobs)."""
    server = multiprocessing.forkserver._forkserver._forkserver_pid
    return {pid for pid, state, parent, _ in _processes() if parent == server and state != "Z"}


def _shm_entries() -> set[str]:
    return {entry.name for entry in _SHM.iterdir()} if _SHM.is_dir() else set()


@dataclass(frozen=True)
class Snapshot:
    """What existed before the code under test ran."""

    threads: frozenset[threading.Thread]
    children: frozenset[int]
    shm: frozenset[str]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(
            frozenset(threading.enumerate()), frozenset(_child_pids()), frozenset(_shm_entries())
        )


def find_leaks(
    before: Snapshot, thread_prefix: str = "data_tools", shm_prefix: str | None = None
) -> list[str]:
    """Describe every thread, child process and /dev/shm entry new since ``before``."""
    if shm_prefix is None:
        shm_prefix = f"data_tools_{os.getpid()}_"
    found = [
        f"thread {thread.name!r}"
        for thread in threading.enumerate()
        if thread.name.startswith(thread_prefix) and thread not in before.threads
    ]
    found += [f"child process {pid}" for pid in sorted(_child_pids() - before.children)]
    found += [
        f"/dev/shm/{name}"
        for name in sorted(_shm_entries() - before.shm)
        if name.startswith(shm_prefix)
    ]
    return found


@contextmanager
def assert_no_leaks(
    timeout: float = 30.0, thread_prefix: str = "data_tools", shm_prefix: str | None = None
) -> Iterator[None]:
    """Fail if the block leaves a thread, child process or /dev/shm entry after ``timeout``."""
    before = Snapshot.take()
    yield
    deadline = time.monotonic() + timeout
    while found := find_leaks(before, thread_prefix, shm_prefix):
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind after {timeout} s: {', '.join(found)}")
        time.sleep(0.02)


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Run the test inside ``assert_no_leaks()``."""
    with assert_no_leaks():
        yield

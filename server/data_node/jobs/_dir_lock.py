"""One node per directory: an exclusive ``flock`` held for as long as the node runs."""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import TYPE_CHECKING

from data_node.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["lock_directory"]


def lock_directory(path: Path, key: str, lock_file: str | None = None) -> int:
    """Take an exclusive lock on directory ``path`` (created if missing) for this process.

    Args:
        path: The directory.
        key: The config key naming it, for the message.
        lock_file: A file in ``path`` to lock (and write this process's id into); None:
            lock the directory itself.

    Returns:
        The locked descriptor; closing it releases the lock (as does the process's death).

    Raises:
        ConfigError: Another process holds the lock.
        OSError: The directory cannot be created or opened.
    """
    path.mkdir(parents=True, exist_ok=True)
    if lock_file is None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    else:
        fd = os.open(path / lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        if lock_file is not None:
            with contextlib.suppress(OSError, ValueError):
                holder = f" (pid {int(os.pread(fd, 32, 0))})"
        os.close(fd)
        raise ConfigError(
            f"{key}: Expected a directory no other node uses. {str(path)!r} is locked by "
            f"another node{holder}; stop it, or give this node a directory of its own."
        ) from None
    if lock_file is not None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd

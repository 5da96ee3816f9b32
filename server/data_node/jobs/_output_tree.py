"""The output root through directory descriptors: stage, publish, put aside and discard outputs.

Every directory below the root is opened one component at a time with ``O_NOFOLLOW``,
relative to its parent's descriptor, and every rename names both ends by descriptor, so a
directory swapped for a symlink after a job was accepted is never followed: the publish
fails instead of writing outside the root.

Layout under the root: ``.jobs/<job_id>`` is a running job's staging directory,
``.jobs/<job_id>.old`` an output put aside while a job's result replaces it, and
``.trash/`` holds what is to be deleted. Deleting is slow (a large output is many files),
so nothing is deleted where callers wait: ``discard`` renames into ``.trash`` (one system
call) and a background thread, started once the node serves, empties it.

The root's descriptor holds an exclusive ``flock``: one node per output root.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import threading
import uuid
from typing import TYPE_CHECKING

from data_node.jobs._dir_lock import lock_directory

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path, PurePosixPath

__all__ = ["RESERVED", "STAGING_DIR", "TRASH_DIR", "OutputTree"]

STAGING_DIR = ".jobs"
TRASH_DIR = ".trash"
RESERVED = (STAGING_DIR, TRASH_DIR)
_ASIDE_SUFFIX = ".old"
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY
_CLOSE_TIMEOUT = 10.0

logger = logging.getLogger(__name__)


class OutputTree:
    """One node's output root; its methods are not thread-safe (the job manager's lock is).

    Args:
        root: The output root (resolved at config load; created if missing).

    Raises:
        ConfigError: Another node uses the root.
        OSError: The root cannot be created or opened.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fd = lock_directory(root, "node.output_root")
        for name in RESERVED:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, dir_fd=self._fd)
        self._wake = threading.Condition()
        self._pending = True  # what an earlier run left in the trash
        self._closed = False
        self._thread: threading.Thread | None = None

    def staging(self, job_id: str) -> Path:
        """The path of ``job_id``'s staging directory (for the job's process to write in)."""
        return self.root / STAGING_DIR / job_id

    def make_staging(self, job_id: str) -> tuple[Path, tuple[int, int]]:
        """Create ``job_id``'s staging directory, discarding any earlier one.

        Returns:
            Its path and its (device, inode), which the job's process checks it opened.
        """
        with self._open((STAGING_DIR,)) as jobs:
            self._discard_in(jobs, job_id)
            os.mkdir(job_id, dir_fd=jobs)
            made = os.stat(job_id, dir_fd=jobs, follow_symlinks=False)
        return self.staging(job_id), (made.st_dev, made.st_ino)

    def has_staging(self, job_id: str) -> bool:
        """Whether ``job_id``'s staging directory exists."""
        with self._open((STAGING_DIR,)) as jobs:
            return _exists(job_id, jobs)

    def move_aside(self, job_id: str, output: PurePosixPath) -> bool:
        """Rename what is at ``output`` to ``.jobs/<job_id>.old``; False if nothing is there.

        Raises:
            NotADirectoryError: A parent of ``output`` is a symlink or not a directory.
            OSError: The rename failed.
        """
        try:
            with self._open(output.parts[:-1]) as parent, self._open((STAGING_DIR,)) as jobs:
                if not _exists(output.name, parent):
                    return False
                os.rename(output.name, job_id + _ASIDE_SUFFIX, src_dir_fd=parent, dst_dir_fd=jobs)
                os.fsync(parent)
                os.fsync(jobs)
        except FileNotFoundError:  # a parent is missing: nothing is there
            return False
        return True

    def install(self, job_id: str, output: PurePosixPath) -> None:
        """Rename ``job_id``'s staging directory to ``output`` (creating its parents).

        Raises:
            NotADirectoryError: A parent of ``output`` is a symlink or not a directory.
            FileExistsError: Something is at ``output``.
            OSError: The rename failed.
        """
        with (
            self._open(output.parts[:-1], create=True) as parent,
            self._open((STAGING_DIR,)) as jobs,
        ):
            staged = os.stat(job_id, dir_fd=jobs, follow_symlinks=False)
            if _exists(output.name, parent):
                raise FileExistsError(errno.EEXIST, "appeared while the job ran", str(output))
            os.rename(job_id, output.name, src_dir_fd=jobs, dst_dir_fd=parent)
            os.fsync(jobs)
            os.fsync(parent)
            # The name now holds the staged directory itself, not something renamed over it.
            placed = os.stat(output.name, dir_fd=parent, follow_symlinks=False)
            if (placed.st_dev, placed.st_ino) != (staged.st_dev, staged.st_ino):
                raise OSError(errno.EEXIST, "changed while it was published", str(output))

    def restore(self, job_id: str, output: PurePosixPath) -> None:
        """Undo ``install`` and ``move_aside``, as far as they went; never raises.

        The job's result goes back to staging, and what was put aside back to ``output``.
        """
        try:
            with self._open(output.parts[:-1]) as parent, self._open((STAGING_DIR,)) as jobs:
                aside = job_id + _ASIDE_SUFFIX
                if not _exists(job_id, jobs) and _exists(output.name, parent):
                    os.rename(output.name, job_id, src_dir_fd=parent, dst_dir_fd=jobs)
                if _exists(aside, jobs) and not _exists(output.name, parent):
                    os.rename(aside, output.name, src_dir_fd=jobs, dst_dir_fd=parent)
                os.fsync(jobs)
                os.fsync(parent)
        except OSError as error:
            logger.warning("could not restore %r after a failed publish: %s", str(output), error)

    def discard_staging(self, job_id: str) -> None:
        """Discard ``job_id``'s staging directory and what it put aside, if there."""
        with self._open((STAGING_DIR,)) as jobs:
            self._discard_in(jobs, job_id)
            self._discard_in(jobs, job_id + _ASIDE_SUFFIX)

    def discard_all_staging(self) -> None:
        """Discard everything under ``.jobs`` (debris of an earlier run; no job runs)."""
        with self._open(()) as root, self._open((TRASH_DIR,)) as trash:
            os.rename(STAGING_DIR, uuid.uuid4().hex, src_dir_fd=root, dst_dir_fd=trash)
            os.mkdir(STAGING_DIR, dir_fd=root)
        self._notify()

    def start_emptying(self) -> None:
        """Start the thread that deletes what is discarded (and what an earlier run left)."""
        self._thread = threading.Thread(
            target=self._empty, name="data_node-jobs-trash", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop the deleting thread (within 10 s) and release the root; idempotent."""
        with self._wake:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(_CLOSE_TIMEOUT)
            if self._thread.is_alive():
                logger.warning("data_node-jobs-trash still deleting after %.0f s", _CLOSE_TIMEOUT)
        os.close(self._fd)

    # ------------------------------------------------------------ internals

    def _discard_in(self, directory: int, name: str) -> None:
        if not _exists(name, directory):
            return
        with self._open((TRASH_DIR,)) as trash:
            os.rename(name, uuid.uuid4().hex, src_dir_fd=directory, dst_dir_fd=trash)
        self._notify()

    def _notify(self) -> None:
        with self._wake:
            self._pending = True
            self._wake.notify_all()

    def _empty(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._pending or self._closed)
                if self._closed:
                    return
                self._pending = False
            try:
                with self._open((TRASH_DIR,)) as trash:
                    for name in os.listdir(trash):
                        _delete(name, trash)
            except OSError as error:
                logger.warning("could not empty %s: %s", self.root / TRASH_DIR, error)

    @contextlib.contextmanager
    def _open(self, parts: tuple[str, ...], *, create: bool = False) -> Iterator[int]:
        """The descriptor of directory ``root/parts``, walked without following symlinks.

        Raises:
            FileNotFoundError: A component is missing (and not ``create``).
            NotADirectoryError: A component is a symlink or not a directory.
        """
        fd = os.dup(self._fd)
        try:
            for part in parts:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, dir_fd=fd)
                try:
                    child = os.open(part, _DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as error:
                    if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    raise NotADirectoryError(
                        errno.ENOTDIR,
                        "is a symlink or not a directory; nothing is written through it",
                        part,
                    ) from None
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)


def _exists(name: str, directory: int) -> bool:
    try:
        os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _delete(name: str, directory: int) -> None:
    """Delete ``name`` in ``directory``: a tree (never following a symlink) or a file."""
    try:
        mode = os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(name, dir_fd=directory)
    else:
        os.unlink(name, dir_fd=directory)

"""Confinement of reads to a root directory: open first, then verify what was opened.

A path checked before it is opened (``realpath`` inside the root, then ``open``) can be
swapped for a symlink between the check and the open. Every confined read here therefore
opens the file first, without following it into a FIFO or device (``O_NONBLOCK``, then
``S_ISREG`` on the descriptor), and only then checks where the *open descriptor* lives: the
kernel's own name for it, ``readlink("/proc/self/fd/N")``, must lie inside the root. What
the check saw is exactly what is read, whatever happens to the path afterwards; a file
swapped after the check is simply not the one read.

Libraries that insist on opening a path themselves (h5py, SimpleITK) are handed the
descriptor's magic link, ``/proc/self/fd/N``, which the kernel resolves to the very file
already open and verified, never to whatever the path names now (:func:`fd_path`).
SimpleITK picks its reader by the file name's suffix, so :class:`PinnedFiles` lays out
symlinks with the original names in a private temporary directory, each pointing at such
a magic link: relative references between files (an .mhd header and its raw data file)
keep working, and each resolves only to a verified descriptor.

This needs Linux's ``/proc`` (the node's platform and its Docker image); elsewhere the
confined open fails with an OSError saying so rather than reading unverified.

Hard links are out of reach of any path check: a hard link made under the root to a file
outside is the same file as far as the kernel is concerned. Only someone who can read the
outside file can make one (``fs.protected_hardlinks``), so it reveals nothing new to them.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

from data_tools.errors import ConfinementError

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["PinnedFiles", "Root", "check_tree", "fd_path", "open_confined"]

_PROC_FD = Path("/proc/self/fd")
# Opened for reading only, never as a controlling terminal, and without blocking on a FIFO
# (a FIFO swapped in would otherwise hang the reader until someone writes to it).
_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK


@dataclass(frozen=True)
class Root:
    """A directory every confined read must stay inside (picklable).

    Attributes:
        path: The directory, resolved on construction (no symlinks left in it).
        label: How messages name it, e.g. "data root".
    """

    path: Path
    label: str = "data root"

    def __post_init__(self) -> None:
        # Compared with the kernel's real names of open files, so it must be real too.
        object.__setattr__(self, "path", Path(os.path.realpath(self.path)))

    def name(self, path: str | os.PathLike[str]) -> str:
        """``path`` as messages show it: relative to the root, never an absolute server path.

        ``path`` is the name a file was asked for (under the root), not where a symlink
        leads; a name outside the root is shown by its last component only.
        """
        relative = os.path.relpath(os.path.abspath(path), self.path)
        return Path(path).name if relative.startswith("..") else relative

    def refuse(self, path: str | os.PathLike[str], got: str) -> ConfinementError:
        """The error for a file whose content would read from outside the root."""
        return ConfinementError(
            f"Expected {self.name(path)!r} to read only from inside the {self.label}. "
            f"Got {got} instead."
        )


def open_confined(root: Root, path: str | os.PathLike[str]) -> int:
    """Open the regular file at ``path`` read-only, verified to lie inside ``root``.

    Args:
        root: The directory the file must lie in (symlinks inside it that stay inside it
            are followed).
        path: The file.

    Returns:
        An open descriptor (close-on-exec, non-blocking); the caller closes it.

    Raises:
        ConfinementError: The opened file lies outside ``root``, or is neither a regular
            file nor a directory.
        IsADirectoryError: It is a directory.
        FileNotFoundError, OSError: It cannot be opened.
    """
    fd = os.open(path, _FLAGS)
    try:
        _verify(root, path, fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _verify(root: Root, path: str | os.PathLike[str], fd: int) -> None:
    """Check where the file open as ``fd`` really is (the kernel's name), then what it is."""
    if not Path(_real_path(fd)).is_relative_to(root.path):
        raise root.refuse(path, "a file that resolves outside it")
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{root.name(path)!r} is a directory")
    if not stat.S_ISREG(mode):
        raise root.refuse(path, "something other than a regular file")


def check_tree(root: Root, directory: str | os.PathLike[str]) -> None:
    """Check that nothing under ``directory`` (symlinks followed) resolves outside ``root``.

    A check, not a confinement: for storage read by a library that opens every file by
    name itself (bcolz), so a swap after the check is not caught.

    Raises:
        ConfinementError: The directory or an entry resolves outside ``root``; the message
            names the entry.
    """
    seen: set[str] = set()
    pending = [os.fspath(directory)]
    while pending:
        current = pending.pop()
        real = os.path.realpath(current)
        if not Path(real).is_relative_to(root.path):
            raise root.refuse(current, "an entry that resolves outside it")
        if real in seen or not os.path.isdir(real):
            continue
        seen.add(real)
        pending.extend(os.path.join(current, name) for name in os.listdir(current))


def fd_path(fd: int) -> str:
    """A name that opens exactly the file open as ``fd`` (in this process), not a path lookup."""
    return str(_PROC_FD / str(fd))


def _real_path(fd: int) -> str:
    try:
        real = os.readlink(fd_path(fd))
    except FileNotFoundError:
        raise OSError(
            "Confined reads need /proc/self/fd (Linux) to verify what they opened; "
            "it is not available here."
        ) from None
    # A file deleted while open reads "path (deleted)": still where it was opened.
    return real.removesuffix(" (deleted)")


class PinnedFiles:
    """Verified files laid out under their own names in a private directory.

    Each :meth:`add` opens a file confined to ``root`` and places a symlink at the given
    relative name inside a fresh temporary directory, pointing at the descriptor's magic
    link, so a library that opens names (and resolves references between files relative
    to each other) reads only the verified files. ``close`` (or leaving the ``with``
    block) closes every descriptor and removes the directory.

    Args:
        root: The directory the files must lie in.
    """

    def __init__(self, root: Root) -> None:
        self.root = root
        self._fds: list[int] = []
        self.directory = Path(tempfile.mkdtemp(prefix="data_tools-pinned-"))

    def add(self, path: str | os.PathLike[str], name: str) -> Path:
        """Open ``path`` confined and pin it as ``name`` (relative, no ``..``); its pinned path.

        Raises:
            ConfinementError: As :func:`open_confined`.
        """
        fd = open_confined(self.root, path)
        self._fds.append(fd)
        pinned = self.directory / name
        pinned.parent.mkdir(parents=True, exist_ok=True)
        pinned.symlink_to(fd_path(fd))
        return pinned

    def close(self) -> None:
        """Close every descriptor and remove the directory (idempotent)."""
        while self._fds:
            os.close(self._fds.pop())
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

"""A read-only zarr store whose every read is confined to a root directory."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Self

from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from data_tools._confine import open_confined

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

    from data_tools._confine import Root

__all__ = ["ConfinedStore"]


class ConfinedStore(LocalStore):
    """A read-only ``LocalStore`` that opens each key confined to ``confine_to``.

    Every metadata and chunk read opens its file first and verifies the open descriptor
    lies inside the root (``data_tools._confine.open_confined``), so an array directory,
    chunk file or metadata file that is (or later becomes) a symlink leading outside is
    refused with ``ConfinementError`` at the read, in whichever process reads. Missing
    keys read as None (the fill value), as in ``LocalStore``. Picklable.

    Args:
        path: The store's directory.
        confine_to: The directory every read must stay inside.
    """

    def __init__(self, path: Path | str, confine_to: Root, *, read_only: bool = True) -> None:
        if not read_only:
            raise ValueError("Expected read_only=True: a ConfinedStore only reads.")
        super().__init__(path, read_only=True)
        self.confine_to = confine_to

    def with_read_only(self, read_only: bool = True) -> Self:
        return type(self)(self.root, self.confine_to, read_only=read_only)

    def get_sync(
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        self._ensure_open_sync()
        return self._read(key, prototype or default_buffer_prototype(), byte_range)

    async def get(
        self,
        key: str,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        if not self._is_open:
            await self._open()
        prototype = prototype or default_buffer_prototype()
        return await asyncio.to_thread(self._read, key, prototype, byte_range)

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        reads = (self.get(key, prototype, byte_range) for key, byte_range in key_ranges)
        return list(await asyncio.gather(*reads))

    def _read(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None
    ) -> Buffer | None:
        try:
            fd = open_confined(self.confine_to, self.root / key)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        with os.fdopen(fd, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            start, stop = _byte_span(byte_range, size)
            file.seek(start)
            return prototype.buffer.from_bytes(file.read(max(0, stop - start)))


def _byte_span(byte_range: ByteRequest | None, size: int) -> tuple[int, int]:
    """[start, stop) of ``byte_range`` in a file of ``size`` bytes."""
    if byte_range is None:
        return 0, size
    if isinstance(byte_range, RangeByteRequest):
        return byte_range.start, min(byte_range.end, size)
    if isinstance(byte_range, OffsetByteRequest):
        return byte_range.offset, size
    if isinstance(byte_range, SuffixByteRequest):
        return max(0, size - byte_range.suffix), size
    raise TypeError(f"Expected a zarr ByteRequest or None. Got {byte_range!r} instead.")

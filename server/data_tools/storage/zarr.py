"""The zarr (v3) storage backend: confined and complete-checked stores, chunks, writing.

``ConfinedStore`` is a read-only store whose every read is confined to a root directory.
A zarr array answers a chunk missing from its store with the fill value, silently: zarr
stores no chunk that holds only the fill value, so a missing chunk is normally no fault.
An array written complete by ``data_tools.io`` writers stores every chunk (they write empty
chunks too) and carries the attribute ``COMPLETE_ATTRIBUTE``; :func:`open_zarr` opens such
an array through a store that raises :class:`DataLossError` for a chunk that is not there,
on every read path (slices, index arrays, sharded arrays' shards), in every process the
array is pickled to. ``BACKEND`` is the format's ``StorageBackend``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import zarr
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore, WrapperStore

from data_tools.errors import DataLossError
from data_tools.storage.base import (
    COMPLETE_ATTRIBUTE,
    UNREADABLE,
    ArrayTarget,
    StorageBackend,
    check_existing,
)
from data_tools.storage.confine import check_tree, open_confined

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable, Mapping

    import numpy.typing as npt
    from zarr.abc.store import ByteRequest
    from zarr.core.array_spec import ArrayConfigParams
    from zarr.core.buffer import Buffer, BufferPrototype

    from data_tools.storage.confine import Root

__all__ = ["BACKEND", "ConfinedStore", "ZarrBackend", "open_zarr"]

# Keys zarr probes while opening; their absence is no data loss.
_METADATA_KEYS = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})


class ConfinedStore(LocalStore):
    """A read-only ``LocalStore`` that opens each key confined to ``confine_to``.

    Every metadata and chunk read opens its file first and verifies the open descriptor
    lies inside the root (``data_tools.storage.confine.open_confined``), so an array directory,
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


class _CompleteStore(WrapperStore[LocalStore]):
    """A read-only local store whose every chunk key must exist."""

    def _check(self, key: str, value: Buffer | None) -> Buffer | None:
        if value is None and key.rsplit("/", 1)[-1] not in _METADATA_KEYS:
            path = Path(self._store.root) / key
            raise DataLossError(
                f"zarr chunk {str(path)!r} is missing, but its array was written complete "
                "(every chunk stored): the data is lost. Restore the store."
            )
        return value

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        return self._check(key, await super().get(key, prototype, byte_range))

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        values = await super().get_partial_values(prototype, key_ranges)
        return [self._check(key, value) for (key, _), value in zip(key_ranges, values, strict=True)]


def open_zarr(
    path: str | os.PathLike[str], key: str = "", *, confine_to: Root | None = None
) -> zarr.Array[Any]:
    """Open the zarr array ``key`` of the store at ``path`` read-only.

    An array marked complete (``COMPLETE_ATTRIBUTE``) reads through a store that raises
    :class:`DataLossError` for a missing chunk instead of returning fill values.

    Args:
        path: The store's directory.
        key: The array's path inside the store ("" for the root array).
        confine_to: If given, every read is confined to this root
            (``ConfinedStore``).

    Raises:
        FileNotFoundError, KeyError, ValueError: From zarr, if there is no such array.
        ConfinementError: A read would leave ``confine_to``.
    """
    base = (
        LocalStore(os.fspath(path), read_only=True)
        if confine_to is None
        else ConfinedStore(os.fspath(path), confine_to)
    )
    array = zarr.open_array(store=base, path=key, mode="r")
    if array.attrs.get(COMPLETE_ATTRIBUTE) is not True:
        return array
    return zarr.open_array(store=_CompleteStore(base), path=key, mode="r")


# Every chunk stored, even one of fill values only: a reader can then tell a lost chunk of
# a complete array from fill (``open_zarr``). Not stored with the array: set on each opening.
_WRITE_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}


class _ZarrTarget(ArrayTarget):
    """A zarr array open for writing (``ZarrBackend.create``): chunks are stored as written."""

    def mark(self, complete: bool) -> None:
        self.array.attrs[COMPLETE_ATTRIBUTE] = complete

    def set_root_attrs(self, attrs: Mapping[str, str]) -> None:
        zarr.open_group(self.array.store, mode="a").attrs.update(attrs)


class ZarrBackend(StorageBackend):
    """zarr v3 stores (directories); arrays are named by their path in the store."""

    name = "zarr"
    reserved_options = frozenset({"name", "shape", "dtype", "data"})
    request_options = frozenset({"chunks", "compressors", "filters"})

    def open(self, path: Path, key: str | None, root: Root | None) -> zarr.Array[Any]:
        return open_zarr(path, key or "", confine_to=root)

    def chunk_rows(self, source: Any) -> int | None:
        return int(source.chunks[0])  # the inner chunk of a sharded array

    def read_rows(
        self, source: Any, rows: npt.NDArray[np.intp], trailing: tuple[Any, ...] = ()
    ) -> npt.NDArray[Any]:
        return np.asarray(source.oindex[(rows, *trailing)])  # one orthogonal selection

    def location(self, source: Any) -> tuple[Hashable, ...]:
        return (str(source.store), source.path)

    def check_content(self, path: Path, key: str | None, root: Root) -> None:
        check_tree(root, path)
        super().check_content(path, key, root)

    def default_options(
        self, batch_size: int, element_shape: tuple[int, ...], length: int | None
    ) -> dict[str, Any]:
        from zarr.codecs import BloscCodec

        return {
            "chunks": (batch_size, *element_shape),
            "compressors": BloscCodec(cname="lz4", clevel=5),
            "config": _WRITE_CONFIG,
        }

    def create(
        self,
        path: str,
        name: str | None,
        element_shape: tuple[int, ...],
        dtype: np.dtype[Any],
        append: bool,
        options: dict[str, Any],
    ) -> _ZarrTarget:
        assert name is not None
        group = zarr.open_group(path, mode="a" if append else "w")
        array = group.get(name) if append else None
        if array is None:
            array = group.create_array(name, shape=(0, *element_shape), dtype=dtype, **options)
        elif not isinstance(array, zarr.Array):
            raise TypeError(f"Expected array_name to name an array in {path}. Got a group instead.")
        check_existing("zarr array", array, element_shape, dtype)
        return _ZarrTarget(array)

    def create_sized(
        self,
        path: str,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        append: bool,
        options: dict[str, Any],
    ) -> _ZarrTarget:
        group = zarr.open_group(path, mode="a" if append else "w")
        target = _ZarrTarget(
            group.create_array(name, shape=shape, dtype=dtype, overwrite=True, **options)
        )
        target.mark(False)
        return target

    def open_rows(self, path: str, name: str) -> _ZarrTarget:
        # mode "r+": never creates the store or the array.
        array = zarr.open_array(path, path=name, mode="r+")
        return _ZarrTarget(array.with_config(_WRITE_CONFIG))

    def holds(self, path: str) -> bool:
        return os.path.isfile(os.path.join(path, "zarr.json"))

    def is_complete(self, path: str, array_name: str | None) -> bool:
        try:
            group = zarr.open_group(path, mode="r")
            if array_name is None:
                arrays = [m for _, m in group.members(max_depth=None) if isinstance(m, zarr.Array)]
            else:
                found = group.get(array_name)
                arrays = [found] if isinstance(found, zarr.Array) else []
            return bool(arrays) and all(
                bool(a.attrs.get(COMPLETE_ATTRIBUTE, False)) for a in arrays
            )
        except UNREADABLE:
            return False

    def read_root_attrs(self, path: str) -> Mapping[str, Any]:
        return dict(zarr.open_group(path, mode="r").attrs)


BACKEND = ZarrBackend()

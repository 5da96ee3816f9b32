"""Readers that never answer a missing storage chunk with fill values or a misleading error.

A zarr array answers a chunk missing from its store with the fill value, silently: zarr
stores no chunk that holds only the fill value, so a missing chunk is normally no fault.
An array written complete by ``data_tools.io`` writers stores every chunk (they write empty
chunks too) and carries the attribute :data:`COMPLETE_ATTRIBUTE`; :func:`open_zarr` opens
such an array through a store that raises :class:`DataLossError` for a chunk that is not
there, on every read path (slices, index arrays, sharded arrays' shards), in every process
the array is pickled to.

A bcolz carray with a chunk file deleted raises ``ValueError("chunkfile ... not found")``,
which reads as the caller's mistake; :class:`BcolzSource` turns it into
:class:`DataLossError` naming the file.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zarr
from zarr.storage import LocalStore, WrapperStore

from data_tools._confine import check_tree
from data_tools._zarr_store import ConfinedStore
from data_tools.errors import DataLossError

if TYPE_CHECKING:
    from collections.abc import Iterable

    import numpy as np
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

    from data_tools._confine import Root

__all__ = ["COMPLETE_ATTRIBUTE", "BcolzSource", "open_zarr"]

#: The attribute ``data_tools.io`` writers set to True on an array once every element
#: (and, for zarr, every chunk) is written.
COMPLETE_ATTRIBUTE = "data_tools_complete"
# Keys zarr probes while opening; their absence is no data loss.
_METADATA_KEYS = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})


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

    An array marked complete (:data:`COMPLETE_ATTRIBUTE`) reads through a store that raises
    :class:`DataLossError` for a missing chunk instead of returning fill values.

    Args:
        path: The store's directory.
        key: The array's path inside the store ("" for the root array).
        confine_to: If given, every read is confined to this root
            (``data_tools._zarr_store.ConfinedStore``).

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


class BcolzSource:
    """A read-only bcolz carray named by its directory, opened in each process, safe to pickle.

    Indexing delegates to the carray. A read that fails because a chunk file is gone raises
    :class:`DataLossError` naming it.

    Args:
        rootdir: The carray's directory.
        confine_to: If given, the carray's tree is checked to stay inside this root each
            time a process opens it (bcolz opens its files by name itself: checked, not
            pinned; see ``data_tools._confine.check_tree``).
    """

    def __init__(self, rootdir: str | os.PathLike[str], *, confine_to: Root | None = None) -> None:
        self.rootdir = os.fspath(rootdir)
        self.confine_to = confine_to
        self._lock = threading.Lock()
        self._carray: Any = None
        self._pid: int | None = None
        self._carray_here()

    def __repr__(self) -> str:
        return f"BcolzSource({self.rootdir!r})"

    def _carray_here(self) -> Any:
        """This process's carray, opened on first use."""
        with self._lock:
            if self._carray is None or self._pid != os.getpid():
                import bcolz  # optional backend: imported only when used

                if self.confine_to is not None:
                    check_tree(self.confine_to, self.rootdir)
                self._carray, self._pid = bcolz.open(rootdir=self.rootdir, mode="r"), os.getpid()
            return self._carray

    @property
    def shape(self) -> tuple[int, ...]:
        """The carray's shape."""
        return tuple(int(size) for size in self._carray_here().shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The carray's dtype."""
        return self._carray_here().dtype  # type: ignore[no-any-return]

    @property
    def chunklen(self) -> int:
        """Rows per chunk."""
        return int(self._carray_here().chunklen)

    @property
    def ndim(self) -> int:
        """The carray's number of dimensions."""
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> Any:
        carray = self._carray_here()
        try:
            return carray[key]
        except ValueError as error:
            missing = self._missing_chunk(int(carray.nchunks))
            if missing is None:
                raise
            raise DataLossError(
                f"bcolz chunk file {missing!r} is missing: the data is lost. Restore the carray."
            ) from error

    def _missing_chunk(self, num_chunks: int) -> str | None:
        """The path of the first chunk file that is not there, or None."""
        data = Path(self.rootdir) / "data"
        present = set(os.listdir(data)) if data.is_dir() else set()
        for number in range(num_chunks):
            if f"__{number}.blp" not in present:
                return str(data / f"__{number}.blp")
        return None

    def __getstate__(self) -> dict[str, Any]:
        return {"rootdir": self.rootdir, "confine_to": self.confine_to}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.rootdir, self.confine_to = state["rootdir"], state["confine_to"]
        self._lock = threading.Lock()
        self._carray = self._pid = None

"""Shared-memory blocks that carry batches out of worker processes and numpy data into them.

The parent process creates, owns and unlinks every block; workers only attach, without
telling the resource tracker (which the parent shares with them: spawn and forkserver pass
it on). A warm worker may attach a block just as the parent unlinks it (its flow ended);
its registration would then reach the tracker after the parent's unregistration and be
reported as a leak at exit.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "BLOCK_PREFIX",
    "ArrayLayout",
    "BlockCache",
    "BlockPool",
    "SharedArray",
    "attach_block",
    "buffer_of",
    "create_block",
    "layout_arrays",
    "read_arrays",
    "release_block",
    "share_array",
    "view_arrays",
    "write_arrays",
]

BLOCK_PREFIX = "data_tools_"
_ALIGN = 64


def create_block(nbytes: int) -> shared_memory.SharedMemory:
    """Create a block of at least ``nbytes`` bytes (at least 1) under a data_tools name."""
    name = f"{BLOCK_PREFIX}{os.getpid()}_{secrets.token_hex(8)}"
    return shared_memory.SharedMemory(name=name, create=True, size=max(nbytes, 1))


def attach_block(name: str) -> shared_memory.SharedMemory:
    """Map the existing block ``name`` without registering it with the resource tracker.

    Call only where no other thread creates blocks (a worker process's main thread).
    """
    register = resource_tracker.register
    resource_tracker.register = lambda name, rtype: None
    try:
        return shared_memory.SharedMemory(name=name)
    finally:
        resource_tracker.register = register


def release_block(block: shared_memory.SharedMemory) -> None:
    """Unmap and unlink a block the caller created."""
    # A view of the block may still be alive somewhere; its mapping goes when the view does.
    with contextlib.suppress(BufferError):
        block.close()
    with contextlib.suppress(FileNotFoundError):
        block.unlink()


@dataclass(frozen=True)
class ArrayLayout:
    """Where one array of a batch lies in a block."""

    dtype: str
    shape: tuple[int, ...]
    offset: int


def layout_arrays(
    arrays: Sequence[npt.NDArray[Any]],
) -> tuple[tuple[ArrayLayout, ...], int] | None:
    """Return each array's place in a block and the bytes needed, or None if unshareable.

    Arrays holding Python objects cannot live in shared memory.
    """
    layouts = []
    offset = 0
    for array in arrays:
        if array.dtype.hasobject:
            return None
        layouts.append(ArrayLayout(array.dtype.str, array.shape, offset))
        offset += -(-array.nbytes // _ALIGN) * _ALIGN
    return tuple(layouts), offset


def buffer_of(block: shared_memory.SharedMemory) -> memoryview:
    """Return the memory of an open block."""
    buffer = block.buf
    assert buffer is not None, "the block is closed"
    return buffer


def _view(buffer: memoryview, layout: ArrayLayout) -> npt.NDArray[Any]:
    return np.ndarray(layout.shape, np.dtype(layout.dtype), buffer=buffer, offset=layout.offset)


def write_arrays(
    buffer: memoryview, arrays: Sequence[npt.NDArray[Any]], layouts: Sequence[ArrayLayout]
) -> None:
    """Copy ``arrays`` into ``buffer`` at their ``layouts``."""
    for array, layout in zip(arrays, layouts, strict=True):
        _view(buffer, layout)[...] = array


def view_arrays(buffer: memoryview, layouts: Sequence[ArrayLayout]) -> list[npt.NDArray[Any]]:
    """Return writable arrays over ``buffer`` at ``layouts`` (valid while it is mapped)."""
    return [_view(buffer, layout) for layout in layouts]


def read_arrays(buffer: memoryview, layouts: Sequence[ArrayLayout]) -> tuple[npt.NDArray[Any], ...]:
    """Return copies of the arrays at ``layouts`` in ``buffer`` (no view outlives the call)."""
    return tuple(_view(buffer, layout).copy() for layout in layouts)


class BlockPool:
    """Parent side: one reusable block per in-flight slot.

    Blocks are created on first use and replaced by a larger one when a worker reported
    that a batch did not fit (``require``). The caller guarantees a free slot on
    ``acquire`` (it bounds its in-flight batches by ``num_slots``).

    Args:
        num_slots: Number of blocks, the most batches in flight.
        nbytes: Initial size of each block.
    """

    def __init__(self, num_slots: int, nbytes: int) -> None:
        self._blocks: list[shared_memory.SharedMemory | None] = [None] * num_slots
        self._free = list(range(num_slots - 1, -1, -1))
        self._nbytes = nbytes

    def acquire(self) -> tuple[int, shared_memory.SharedMemory]:
        """Take a free slot and return it with its block, large enough for ``require``."""
        slot = self._free.pop()
        block = self._blocks[slot]
        if block is None or block.size < self._nbytes:
            if block is not None:
                release_block(block)
            block = self._blocks[slot] = create_block(self._nbytes)
        return slot, block

    def buffer(self, slot: int) -> memoryview:
        """Return the memory of ``slot``'s block."""
        block = self._blocks[slot]
        assert block is not None
        return buffer_of(block)

    def release(self, slot: int) -> None:
        """Give ``slot`` back once its batch has been read out."""
        self._free.append(slot)

    def require(self, nbytes: int) -> None:
        """Make blocks handed out from now on hold at least ``nbytes``."""
        self._nbytes = max(self._nbytes, nbytes)

    def close(self) -> None:
        """Unlink every block (idempotent). Call only once no worker writes any more."""
        for slot, block in enumerate(self._blocks):
            if block is not None:
                release_block(block)
                self._blocks[slot] = None


class BlockCache:
    """Worker side: the pool's blocks, attached on first use and re-attached when replaced."""

    def __init__(self) -> None:
        self._blocks: dict[int, shared_memory.SharedMemory] = {}

    def attach(self, slot: int, name: str) -> shared_memory.SharedMemory:
        """Return the block called ``name`` that now serves ``slot``."""
        block = self._blocks.get(slot)
        if block is None or block.name != name:
            if block is not None:
                block.close()
            block = self._blocks[slot] = attach_block(name)
        return block

    def close(self) -> None:
        """Unmap every attached block (the parent unlinks them)."""
        for block in self._blocks.values():
            block.close()
        self._blocks.clear()


@dataclass(frozen=True)
class SharedArray:
    """A picklable description of a numpy array the parent copied into a block."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def attach(self) -> tuple[shared_memory.SharedMemory, npt.NDArray[Any]]:
        """Map the block and return it with a read-only array over it.

        Keep the block referenced for as long as the array is used.
        """
        block = attach_block(self.name)
        array = _view(buffer_of(block), ArrayLayout(self.dtype, self.shape, 0))
        array.flags.writeable = False
        return block, array


def share_array(array: npt.NDArray[Any]) -> tuple[shared_memory.SharedMemory, SharedArray]:
    """Copy ``array`` into a new block; return the block and a description workers attach."""
    block = create_block(array.nbytes)
    layout = ArrayLayout(array.dtype.str, array.shape, 0)
    write_arrays(buffer_of(block), [array], [layout])
    return block, SharedArray(block.name, array.shape, array.dtype.str)

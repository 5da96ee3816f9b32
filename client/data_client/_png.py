"""A minimal PNG writer (8-bit RGB, no filtering), with only zlib and struct.

The client stays light (grpc and numpy): a preview grid needs nothing of an imaging
library but this, which PNG's specification (RFC 2083) makes a few lines: the signature,
an IHDR chunk, the rows (each prefixed with filter type 0) deflated into one IDAT chunk,
and IEND; every chunk is length, type, data and the CRC-32 of type and data.
"""

from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["encode_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_RGB = 2  # PNG colour type: truecolour


def encode_png(rgb: npt.NDArray[Any]) -> bytes:
    """The PNG file of an (H, W, 3) uint8 image.

    Raises:
        ValueError: ``rgb`` is not a non-empty (H, W, 3) uint8 array.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise ValueError(
            f"Expected a non-empty (H, W, 3) uint8 image. Got {rgb.dtype} {rgb.shape} instead."
        )
    height, width, _ = rgb.shape
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # column 0: filter type 0
    rows[:, 1:] = rgb.reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, _RGB, 0, 0, 0)
    return b"".join(
        (
            _SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)),
            _chunk(b"IEND", b""),
        )
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

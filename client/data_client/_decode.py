"""Decode data_wire.v1 Batch and Tensor wire bytes into numpy arrays without copying payloads.

The outer structure (``Batch.arrays``, ``Tensor.data``) is walked here, by the protobuf wire
format rules; every other field is handed to the generated protobuf classes, so field order,
repeated scalars (last one wins), packed or unpacked ``shape`` and unknown fields (skipped, for
forward compatibility) all follow protobuf. Raw payloads become ``np.frombuffer`` views of the
received buffer: no copy, and the buffer lives as long as any of its arrays.

Use :func:`decode_batch` as the ``response_deserializer`` of the ``StreamBatches`` call; gRPC
hands it the message as ``bytes``.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from google.protobuf.message import DecodeError

from data_wire.v1 import tensor_pb2

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy.typing as npt
    from google.protobuf.message import Message

__all__ = ["DecodedBatch", "decode_batch", "decode_tensor"]

_VARINT, _I64, _LEN, _START_GROUP, _END_GROUP, _I32 = range(6)
_MAX_VARINT_BYTES = 10
_MAX_FIELD_NUMBER = (1 << 29) - 1
# numeric and bool: what a Tensor may carry (see tensor.proto); never objects or strings
_NUMERIC_KINDS = "biufc"
_RAW_CODECS = (tensor_pb2.CODEC_UNSPECIFIED, tensor_pb2.CODEC_NONE)
# numcodecs' LZ4 reads the raw size from a uint32 prefix that the wire leaves out
_LZ4_SIZE_PREFIX = struct.Struct("<I")


class DecodedBatch(NamedTuple):
    """One decoded ``data_wire.v1.Batch``.

    Attributes:
        arrays: One read-only array per dataset array, in the dataset's order. Raw tensors are
            views of the received buffer; copy one (``np.array(a)``) to modify it.
        indices: The global sample index of each row (int64, 1-D, writable).
        cursor: The cursor just after this batch: pass it back to resume.
        epoch: The epoch of this batch, from 0.
        batch_index: The index of this batch within its epoch, from 0.
        decoded_bytes: Bytes of storage chunks the node decoded for the stream since its
            previous batch (0 where it does not count them). Default 0.
    """

    arrays: tuple[npt.NDArray[Any], ...]
    indices: npt.NDArray[np.int64]
    cursor: tensor_pb2.Cursor
    epoch: int
    batch_index: int
    decoded_bytes: int = 0


def _read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    value = 0
    for shift in range(0, 7 * _MAX_VARINT_BYTES, 7):
        if pos >= end:
            raise ValueError(f"Malformed protobuf: a varint is cut off at byte {pos}.")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
    raise ValueError(f"Malformed protobuf: a varint is longer than 10 bytes at byte {pos}.")


def _read_key(buf: memoryview, pos: int, end: int) -> tuple[int, int, int]:
    """The field number and wire type of the key at ``pos``, and the position after it."""
    key, after = _read_varint(buf, pos, end)
    number, wire_type = key >> 3, key & 7
    if not 1 <= number <= _MAX_FIELD_NUMBER:
        raise ValueError(f"Malformed protobuf: field number {number} at byte {pos}.")
    return number, wire_type, after


def _skip_value(
    buf: memoryview, pos: int, end: int, number: int, wire_type: int
) -> tuple[int, int]:
    """Where the value of a field starts (after a length, if any) and where the field ends."""
    if wire_type == _VARINT:
        stop = _read_varint(buf, pos, end)[1]
    elif wire_type == _I64:
        stop = pos + 8
    elif wire_type == _LEN:
        length, pos = _read_varint(buf, pos, end)
        stop = pos + length
    elif wire_type == _I32:
        stop = pos + 4
    elif wire_type == _START_GROUP:
        stop = _skip_group(buf, pos, end, number)
    else:
        raise ValueError(f"Malformed protobuf: wire type {wire_type} of field {number}.")
    if stop > end:
        raise ValueError(f"Malformed protobuf: field {number} runs past the end of its message.")
    return pos, stop


def _skip_group(buf: memoryview, pos: int, end: int, number: int) -> int:
    """The position after the end-group key that closes group ``number`` (and those inside)."""
    open_groups = [number]  # a stack, not recursion: nesting depth is up to the sender
    while open_groups:
        inner, wire_type, pos = _read_key(buf, pos, end)
        if wire_type == _START_GROUP:
            open_groups.append(inner)
        elif wire_type == _END_GROUP:
            if inner != open_groups.pop():
                raise ValueError(f"Malformed protobuf: a group is closed as {inner} at byte {pos}.")
        else:
            pos = _skip_value(buf, pos, end, inner, wire_type)[1]
    return pos


def _fields(buf: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield (number, wire type, field start, value start, field end) of each field in a message."""
    while pos < end:
        number, wire_type, value_pos = _read_key(buf, pos, end)
        value_start, stop = _skip_value(buf, value_pos, end, number, wire_type)
        yield number, wire_type, pos, value_start, stop
        pos = stop


def _split(
    buf: memoryview, start: int, end: int, number: int, message: str
) -> tuple[list[tuple[int, int]], bytes]:
    """The (start, end) of each value of length-delimited field ``number``, and the other fields."""
    values, rest = [], []
    for field, wire_type, field_start, value_start, stop in _fields(buf, start, end):
        if field != number:
            rest.append(buf[field_start:stop])
        elif wire_type != _LEN:
            raise ValueError(f"Malformed {message}: field {number} has wire type {wire_type}.")
        else:
            values.append((value_start, stop))
    return values, b"".join(rest)


def _parse(cls: type[Message], data: bytes) -> Any:
    try:
        return cls.FromString(data)
    except DecodeError as error:
        raise ValueError(f"Malformed {cls.DESCRIPTOR.full_name}: {error}") from error


def _dtype(text: str) -> np.dtype[Any]:
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"Expected Tensor.dtype to be a numpy dtype string. Got {text!r} instead."
        ) from error
    if dtype.kind not in _NUMERIC_KINDS:
        raise ValueError(
            f"Expected Tensor.dtype to be a numeric or bool dtype. Got {text!r} instead."
        )
    return dtype


def _decompress(data: memoryview, codec: int, raw_nbytes: int) -> Any:
    """The raw bytes of a compressed payload (numcodecs is imported only when needed)."""
    import numcodecs

    try:
        if codec == tensor_pb2.CODEC_LZ4:
            raw = numcodecs.LZ4().decode(b"".join([_LZ4_SIZE_PREFIX.pack(raw_nbytes), data]))
        elif codec == tensor_pb2.CODEC_ZSTD:
            raw = numcodecs.Zstd().decode(data)
        else:
            raise ValueError(f"Expected a known Tensor.codec. Got {codec} instead.")
    except (RuntimeError, struct.error) as error:
        raise ValueError(f"Corrupt {tensor_pb2.Codec.Name(codec)} payload: {error}") from error
    if len(raw) != raw_nbytes:
        raise ValueError(
            f"Expected the payload to decompress to raw_nbytes={raw_nbytes} bytes. "
            f"Got {len(raw)} instead."
        )
    return raw


def _to_array(meta: tensor_pb2.Tensor, data: memoryview) -> npt.NDArray[Any]:
    """The array of a Tensor whose fields other than data are in ``meta``."""
    dtype = _dtype(meta.dtype)
    shape = tuple(meta.shape)
    if any(extent < 0 for extent in shape):
        raise ValueError(f"Expected Tensor.shape to be >= 0 on every axis. Got {shape} instead.")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if meta.raw_nbytes != nbytes:
        raise ValueError(
            f"Expected Tensor.raw_nbytes to be {nbytes} (shape {shape}, dtype {meta.dtype!r}). "
            f"Got {meta.raw_nbytes} instead."
        )
    if meta.codec not in _RAW_CODECS:
        data = memoryview(_decompress(data, meta.codec, nbytes))
    elif data.nbytes != nbytes:
        raise ValueError(f"Expected {nbytes} bytes of Tensor.data. Got {data.nbytes} instead.")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    array.flags.writeable = False
    return array


def _tensor(buf: memoryview, start: int, end: int) -> npt.NDArray[Any]:
    payloads, rest = _split(buf, start, end, tensor_pb2.Tensor.DATA_FIELD_NUMBER, "Tensor")
    meta = _parse(tensor_pb2.Tensor, rest)
    # a scalar field that appears more than once keeps its last value; none means empty data
    data_start, data_end = payloads[-1] if payloads else (start, start)
    return _to_array(meta, buf[data_start:data_end])


def _as_view(buf: bytes | bytearray | memoryview) -> memoryview:
    try:
        return memoryview(buf).cast("B")
    except TypeError as error:
        raise ValueError(
            f"Expected a contiguous bytes-like buffer. Got {type(buf).__name__}."
        ) from error


def decode_tensor(
    msg_or_bytes: tensor_pb2.Tensor | bytes | bytearray | memoryview,
) -> npt.NDArray[Any]:
    """Decode one ``data_wire.v1.Tensor``.

    Args:
        msg_or_bytes: A parsed Tensor message, or its serialized bytes.

    Returns:
        The read-only array. From serialized bytes, a raw tensor is a view of them (no copy);
        a compressed one owns its decompressed memory.

    Raises:
        ValueError: If the bytes are not a valid Tensor, the dtype is not numeric or bool, the
            shape, raw_nbytes and data disagree, the codec is unknown or the payload is corrupt.
    """
    if isinstance(msg_or_bytes, tensor_pb2.Tensor):
        return _to_array(msg_or_bytes, memoryview(msg_or_bytes.data))
    buf = _as_view(msg_or_bytes)
    return _tensor(buf, 0, buf.nbytes)


def decode_batch(buf: bytes | bytearray | memoryview) -> DecodedBatch:
    """Decode one serialized ``data_wire.v1.Batch``, the payloads as views of ``buf``.

    Args:
        buf: The serialized Batch, from ``data_node.wire.encode_batch`` or any protobuf encoder.

    Returns:
        The batch. Its raw arrays are read-only views of ``buf`` (zero-copy; aligned when the
        encoder aligned them and ``buf`` itself is aligned, as gRPC's ``bytes`` are); compressed
        arrays are decompressed into memory of their own.

    Raises:
        ValueError: If ``buf`` is not a valid Batch or one of its tensors is invalid (see
            :func:`decode_tensor`).
    """
    view = _as_view(buf)
    tensors, rest = _split(view, 0, view.nbytes, tensor_pb2.Batch.ARRAYS_FIELD_NUMBER, "Batch")
    header: tensor_pb2.Batch = _parse(tensor_pb2.Batch, rest)
    arrays = tuple(_tensor(view, start, end) for start, end in tensors)
    return DecodedBatch(
        arrays=arrays,
        indices=np.array(header.indices, dtype=np.int64),
        cursor=header.cursor,
        epoch=header.epoch,
        batch_index=header.batch_index,
        decoded_bytes=header.decoded_bytes,
    )

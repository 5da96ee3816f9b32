"""Encode numpy arrays as data_wire.v1 Tensor and Batch wire bytes, copying each payload once.

The small fields of a message are serialized by protobuf; the large ``Tensor.data`` fields are
appended with a hand-written key and length, so an array's bytes are copied once, straight into
the message, instead of three times (``tobytes``, the message constructor, ``SerializeToString``).
The result is ordinary protobuf: ``tensor_pb2.Batch.FromString`` reads it, and so does any client
generated from ``protos/data_wire/v1/tensor.proto``. Two liberties the format allows are taken:
fields are not in field-number order, and a Tensor may repeat its ``codec`` and ``dtype`` fields
with the same value (a parser keeps the last value of a scalar field) so that every payload starts
at a multiple of :data:`ALIGNMENT` bytes from the start of the message. A receiver that decodes
views of the buffer (``data_client._decode``) then gets aligned arrays.

How the node and the client use it:

* The servicer registers ``StreamBatches`` with an identity response serializer
  (``grpc.unary_stream_rpc_method_handler(servicer.StreamBatches,
  request_deserializer=data_node_pb2.StreamRequest.FromString, response_serializer=None)``;
  ``None`` passes the bytes through) instead of the generated ``add_DataNodeServicer_to_server``,
  and ``StreamBatches`` yields ``encode_batch(...)``. Encoding inside the handler, not in a
  serializer, lets an encoding error reach ``context.abort`` instead of becoming INTERNAL.
* The client calls ``channel.unary_stream("/data_wire.v1.DataNode/StreamBatches",
  request_serializer=data_node_pb2.StreamRequest.SerializeToString,
  response_deserializer=data_client._decode.decode_batch)``.
* The node's ``grpc.max_send_message_length`` and the client's
  ``grpc.max_receive_message_length`` are the same (``limits.max_message_bytes``), larger than
  the biggest batch (the default receive limit is 4 MiB).

``benchmarks/bench_wire.py`` runs exactly this over a loopback port.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numcodecs
import numpy as np

from data_wire.v1 import tensor_pb2

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import numpy.typing as npt

__all__ = ["ALIGNMENT", "WIRE_DTYPES", "encode_batch", "encode_tensor", "parse_codec"]

#: Every payload starts at a multiple of this many bytes from the start of the encoded message.
ALIGNMENT = 8

#: The element types a Tensor carries, as written in ``Tensor.dtype``. Each string has three
#: characters, so a repeated dtype field is 5 bytes long: the odd length the padding needs.
WIRE_DTYPES = (
    "|b1",
    "|u1",
    "|i1",
    "<u2",
    "<i2",
    "<u4",
    "<i4",
    "<u8",
    "<i8",
    "<f2",
    "<f4",
    "<f8",
)

_VARINT, _LEN = 0, 2
_LZ4 = numcodecs.LZ4()
_ZSTD = numcodecs.Zstd()
# numcodecs prefixes an LZ4 block with its raw size (uint32); the wire carries the bare block.
_LZ4_SIZE_PREFIX = 4
# The one codec table: each codec the wire defines -> how a payload is packed (None: raw).
# CODEC_UNSPECIFIED is CODEC_NONE (the proto says so); parse_codec maps it. A codec of the
# proto missing here is refused by parse_codec, so a request asking for it fails at once.
_PACKERS: dict[int, Callable[[npt.NDArray[np.uint8]], memoryview] | None] = {
    tensor_pb2.CODEC_NONE: None,
    tensor_pb2.CODEC_LZ4: lambda raw: memoryview(_LZ4.encode(raw))[_LZ4_SIZE_PREFIX:],
    tensor_pb2.CODEC_ZSTD: lambda raw: memoryview(_ZSTD.encode(raw)),
}


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field_number: int, wire_type: int) -> bytes:
    return _varint(field_number << 3 | wire_type)


_ARRAYS_KEY = _key(tensor_pb2.Batch.ARRAYS_FIELD_NUMBER, _LEN)
_DATA_KEY = _key(tensor_pb2.Tensor.DATA_FIELD_NUMBER, _LEN)
_DTYPE_KEY = _key(tensor_pb2.Tensor.DTYPE_FIELD_NUMBER, _LEN)
_CODEC_KEY = _key(tensor_pb2.Tensor.CODEC_FIELD_NUMBER, _VARINT)


class _Encoded(NamedTuple):
    """One Tensor: its fields other than data (serialized), and its payload."""

    header: bytes
    dtype_field: bytes
    codec_field: bytes
    payload: Any  # a C-contiguous ndarray or a memoryview: anything bytes.join accepts
    nbytes: int


def parse_codec(codec: int) -> int:
    """The codec ``codec`` is written with, if this module encodes it (the one codec check).

    Raises:
        ValueError: "Expected codec to be one of <the codecs encoded>. Got <codec> instead."
    """
    if codec == tensor_pb2.CODEC_UNSPECIFIED:
        return tensor_pb2.CODEC_NONE
    if codec not in _PACKERS:
        accepted = (tensor_pb2.CODEC_UNSPECIFIED, *_PACKERS)
        names = ", ".join(tensor_pb2.Codec.Name(c) for c in accepted)
        raise ValueError(f"Expected codec to be one of {names}. Got {codec!r} instead.")
    return codec


def _wire_array(array: npt.NDArray[Any], name: str) -> npt.NDArray[Any]:
    """``array`` as a C-contiguous little-endian array of a wire dtype (a copy only if needed)."""
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder("<")
    if dtype.str not in WIRE_DTYPES:
        raise ValueError(
            f"Expected array {name!r} to have a dtype among {', '.join(WIRE_DTYPES)} "
            f"(either byte order). Got {array.dtype.str!r} ({array.dtype}) instead."
        )
    return np.asarray(array, dtype=dtype, order="C")


def _compress(array: npt.NDArray[Any], codec: int) -> tuple[Any, int]:
    """The payload and codec of ``array``: raw when ``codec`` is NONE or compression does not help."""
    pack = _PACKERS[codec]
    if pack is None or array.nbytes == 0:
        return array, tensor_pb2.CODEC_NONE
    packed = pack(array.reshape(-1).view(np.uint8))
    if packed.nbytes >= array.nbytes:
        return array, tensor_pb2.CODEC_NONE
    return packed, codec


def _encode(array: npt.NDArray[Any], codec: int, name: str) -> _Encoded:
    wire = _wire_array(array, name)
    payload, used = _compress(wire, codec)
    header = tensor_pb2.Tensor(
        dtype=wire.dtype.str,
        shape=wire.shape,
        codec=tensor_pb2.Codec.Name(used),
        raw_nbytes=wire.nbytes,
    ).SerializeToString()
    dtype_field = _DTYPE_KEY + _varint(len(wire.dtype.str)) + wire.dtype.str.encode()
    codec_field = _CODEC_KEY + _varint(used)
    return _Encoded(header, dtype_field, codec_field, payload, payload.nbytes)


def _filler(size: int, tensor: _Encoded) -> bytes | None:
    """``size`` bytes of repeated codec (2 bytes) and dtype (5 bytes) fields, or None if impossible."""
    odd = size % 2
    if odd and size < len(tensor.dtype_field):
        return None
    return tensor.dtype_field * odd + tensor.codec_field * (
        (size - odd * len(tensor.dtype_field)) // 2
    )


def _prefix(tensor: _Encoded, offset: int, *, nested: bool) -> bytes:
    """The bytes of a Tensor before its payload, which starts at a multiple of ALIGNMENT.

    Args:
        tensor: The encoded tensor.
        offset: Where the returned bytes start in the whole message.
        nested: Whether the Tensor is a ``Batch.arrays`` element (then its key and length lead).
    """
    data_key = _DATA_KEY + _varint(tensor.nbytes)
    # Sizes 4 and up are all possible; the prefix grows by 1 per size except once by 2 (when the
    # Tensor length needs one more varint byte), so 2 * ALIGNMENT sizes reach every residue.
    for size in range(4 + 2 * ALIGNMENT):
        filler = _filler(size, tensor)
        if filler is None:
            continue
        body = tensor.header + filler + data_key
        prefix = _ARRAYS_KEY + _varint(len(body) + tensor.nbytes) + body if nested else body
        if (offset + len(prefix)) % ALIGNMENT == 0:
            return prefix
    raise AssertionError("unreachable: some filler size always aligns the payload")


def encode_tensor(
    array: npt.NDArray[Any], codec: int = tensor_pb2.CODEC_NONE, *, name: str = "array"
) -> bytes:
    """Serialize one array as a ``data_wire.v1.Tensor`` message.

    Args:
        array: The array. Its dtype must be one of :data:`WIRE_DTYPES` in either byte order;
            big-endian input is byteswapped and non-contiguous input is copied to C order.
        codec: A ``tensor_pb2.Codec`` value; default ``CODEC_NONE``. ``CODEC_UNSPECIFIED`` is
            written as ``CODEC_NONE``. ``CODEC_LZ4`` (numcodecs default acceleration) and
            ``CODEC_ZSTD`` (numcodecs default level) compress, unless the compressed bytes are
            not smaller than the raw ones: then the tensor goes raw, with ``CODEC_NONE``.
        name: What error messages call the array; default ``"array"``.

    Returns:
        The serialized Tensor; its payload starts at a multiple of :data:`ALIGNMENT` bytes.

    Raises:
        ValueError: If the dtype is not a wire dtype (object, string, complex, ...) or the
            codec is unknown.
    """
    tensor = _encode(array, parse_codec(codec), name)
    return b"".join([_prefix(tensor, 0, nested=False), tensor.payload])


def encode_batch(
    arrays: Sequence[npt.NDArray[Any]],
    *,
    indices: npt.ArrayLike,
    cursor: tensor_pb2.Cursor,
    epoch: int,
    batch_index: int,
    codec: int = tensor_pb2.CODEC_NONE,
    names: Sequence[str] | None = None,
    decoded_bytes: int = 0,
) -> bytes:
    """Serialize one minibatch as a ``data_wire.v1.Batch`` message.

    An array that is already C-contiguous and little-endian is copied once, straight into the
    returned bytes; any other is converted first (one more copy).

    Args:
        arrays: One array per dataset array, in the dataset's order; dtypes as for
            :func:`encode_tensor`.
        indices: The global sample index of each row, 1-D, cast to int64.
        cursor: The cursor just after this batch.
        epoch: The epoch of this batch, from 0.
        batch_index: The index of this batch within its epoch, from 0.
        codec: The codec of every tensor, as for :func:`encode_tensor`; default ``CODEC_NONE``.
        names: The arrays' names for error messages; default ``None`` (``"arrays[i]"``).
        decoded_bytes: Bytes of storage chunks decoded for the stream since its previous
            batch (``Batch.decoded_bytes``); default 0.

    Returns:
        The serialized Batch: the small fields first, then one Tensor per array.

    Raises:
        ValueError: If an array's dtype is not a wire dtype (the message names the array),
            the codec is unknown, ``indices`` is not 1-D, or ``names`` and ``arrays`` differ
            in length.
    """
    used = parse_codec(codec)
    if names is None:
        names = [f"arrays[{i}]" for i in range(len(arrays))]
    if len(names) != len(arrays):
        raise ValueError(
            f"Expected one name per array ({len(arrays)}). Got {len(names)} names instead."
        )
    rows = np.asarray(indices, dtype=np.int64)
    if rows.ndim != 1:
        raise ValueError(f"Expected indices to be 1-D. Got shape {rows.shape} instead.")
    header = tensor_pb2.Batch(
        cursor=cursor,
        indices=rows.tolist(),
        epoch=epoch,
        batch_index=batch_index,
        decoded_bytes=decoded_bytes,
    ).SerializeToString()
    pieces: list[Any] = [header]
    offset = len(header)
    for array, name in zip(arrays, names, strict=True):
        tensor = _encode(array, used, name)
        prefix = _prefix(tensor, offset, nested=True)
        pieces += [prefix, tensor.payload]
        offset += len(prefix) + tensor.nbytes
    return b"".join(pieces)

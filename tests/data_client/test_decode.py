"""data_client._decode on hand-built and protobuf-built wire bytes (no data_node involved).

Matrix: input types (bytes, bytearray, memoryview, non-byte memoryview, Tensor message) x zero
copy and read-only results x wire-format liberties (unknown fields of every wire type at Batch
and Tensor level, fields out of order, repeated scalars: last wins, unpacked shape, missing data
for empty tensors) x codecs (raw, LZ4 bare block, Zstd frame) x malformed input (bad varints,
lengths, wire types, field numbers, groups, protobuf errors, dtype, shape, raw_nbytes, data
length, codec, corrupt or wrongly sized compressed payloads), each a ValueError saying what.
"""

from __future__ import annotations

import numcodecs
import numpy as np
import pytest

from data_client._decode import DecodedBatch, decode_batch, decode_tensor
from data_wire.v1 import tensor_pb2

CURSOR = tensor_pb2.Cursor(dataset="d", seed=5, epoch=1, batch_index=4, fingerprint="fp")


def varint(value):
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number, wire_type, payload=b""):
    """One field: key, then the length for wire type 2, then ``payload``."""
    length = varint(len(payload)) if wire_type == 2 else b""
    return varint(number << 3 | wire_type) + length + payload


def tensor(array, **overrides):
    fields = {
        "dtype": array.dtype.str,
        "shape": array.shape,
        "data": array.tobytes(),
        "codec": tensor_pb2.CODEC_NONE,
        "raw_nbytes": array.nbytes,
    } | overrides
    return tensor_pb2.Tensor(**fields)


def batch_bytes(*tensors):
    return tensor_pb2.Batch(
        arrays=tensors, cursor=CURSOR, indices=[4, 2], epoch=1, batch_index=3
    ).SerializeToString()


# One unknown field of each wire type: varint, i64, len, start/end group (with a nested field), i32.
UNKNOWN_FIELDS = (
    field(100, 0, varint(2**63))
    + field(101, 1, b"\x00" * 8)
    + field(102, 2, b"future")
    + field(103, 3, field(1, 0, b"\x01") + field(104, 3) + field(104, 4))
    + field(103, 4)
    + field(105, 5, b"\x00" * 4)
)


def test_batch_decodes_with_arrays_as_read_only_views_of_the_buffer():
    image = np.arange(24, dtype="<f4").reshape(2, 3, 4)
    mask = np.array([[True, False], [False, True]])
    buf = batch_bytes(tensor(image), tensor(mask))
    decoded = decode_batch(buf)
    assert isinstance(decoded, DecodedBatch)
    np.testing.assert_array_equal(decoded.arrays[0], image)
    np.testing.assert_array_equal(decoded.arrays[1], mask)
    base = np.frombuffer(buf, np.uint8)
    for array in decoded.arrays:
        assert np.shares_memory(array, base)
        assert not array.flags.writeable
    assert decoded.indices.dtype == np.int64
    assert decoded.indices.tolist() == [4, 2]
    assert decoded.cursor == CURSOR
    assert (decoded.epoch, decoded.batch_index) == (1, 3)


@pytest.mark.parametrize("kind", ["bytearray", "memoryview", "uint32 memoryview"])
def test_any_contiguous_buffer_is_accepted(kind):
    array = np.arange(6, dtype="<i2").reshape(3, 2)
    raw = batch_bytes(tensor(array))
    # an unknown field pads the message to whole uint32s (key and length take 3 bytes)
    raw += field(100, 2, b"x" * (-(len(raw) + 3) % 4))
    buf = {
        "bytearray": bytearray(raw),
        "memoryview": memoryview(raw),
        "uint32 memoryview": memoryview(np.frombuffer(raw, np.uint32)),
    }[kind]
    (got,) = decode_batch(buf).arrays
    np.testing.assert_array_equal(got, array)
    assert not got.flags.writeable


def test_unknown_fields_are_skipped_at_every_level():
    array = np.arange(5, dtype="<u2")
    inner = tensor(array).SerializeToString()
    buf = (
        UNKNOWN_FIELDS
        + field(1, 2, UNKNOWN_FIELDS + inner + UNKNOWN_FIELDS)
        + field(2, 2, CURSOR.SerializeToString() + field(99, 2, b"x"))
        + UNKNOWN_FIELDS
    )
    decoded = decode_batch(buf)
    np.testing.assert_array_equal(decoded.arrays[0], array)
    assert decoded.cursor.fingerprint == "fp"
    np.testing.assert_array_equal(decode_tensor(inner + UNKNOWN_FIELDS), array)


def test_fields_in_any_order_and_repeated_scalars_keep_the_last_value():
    array = np.arange(4, dtype="<i4")
    other = np.full(4, 9, dtype="<i4")
    buf = (
        field(3, 2, other.tobytes())  # data first, overridden below
        + field(4, 0, varint(tensor_pb2.CODEC_NONE))
        + field(1, 2, b"|u1")
        + field(5, 0, varint(16))
        + field(3, 2, array.tobytes())
        + field(2, 2, varint(4))  # packed shape
        + field(1, 2, b"<i4")
    )
    np.testing.assert_array_equal(decode_tensor(buf), array)


def test_unpacked_shape_and_absent_data_are_accepted():
    buf = field(1, 2, b"<f8") + field(2, 0, varint(0)) + field(2, 0, varint(3))
    decoded = decode_tensor(buf)
    assert decoded.shape == (0, 3)
    assert decoded.dtype == np.dtype("<f8")


def test_big_endian_dtype_strings_are_honoured():
    array = np.arange(3, dtype=">i4")
    got = decode_tensor(tensor(array).SerializeToString())
    assert got.dtype == np.dtype(">i4")
    np.testing.assert_array_equal(got, [0, 1, 2])


def test_decode_tensor_accepts_a_parsed_message():
    array = np.arange(6, dtype="|u1").reshape(2, 3)
    got = decode_tensor(tensor(array))
    np.testing.assert_array_equal(got, array)
    assert not got.flags.writeable


def lz4_block(raw):
    return numcodecs.LZ4().encode(raw)[4:]  # the wire carries the bare block, no size prefix


@pytest.mark.parametrize(
    ("codec", "compress"),
    [(tensor_pb2.CODEC_LZ4, lz4_block), (tensor_pb2.CODEC_ZSTD, numcodecs.Zstd().encode)],
)
def test_compressed_tensors_are_decompressed(codec, compress):
    array = np.repeat(np.arange(8, dtype="<f4"), 100).reshape(8, 100)
    message = tensor(array, data=compress(array.tobytes()), codec=codec)
    buf = batch_bytes(message)
    (got,) = decode_batch(buf).arrays
    np.testing.assert_array_equal(got, array)
    assert not np.shares_memory(got, np.frombuffer(buf, np.uint8))
    assert not got.flags.writeable
    np.testing.assert_array_equal(decode_tensor(message), array)


GOOD = tensor(np.arange(4, dtype="<f4"))
ZSTD_4000 = numcodecs.Zstd().encode(bytes(4000))


@pytest.mark.parametrize(
    ("buf", "message"),
    [
        (b"\x0a\x80", r"varint is cut off"),
        (b"\x0a" + b"\x80" * 10 + b"\x01", r"longer than 10 bytes"),
        (b"\x0a\x05ab", r"field 1 runs past the end"),
        (b"\x12\x05" + b"\x0a\x01", r"field 2 runs past the end"),
        (b"\x00\x01", r"field number 0"),
        (b"\x0e", r"wire type 6 of field 1"),
        (b"\x0f", r"wire type 7 of field 1"),
        (b"\x0c", r"wire type 4 of field 1"),
        (b"\x0b\x14", r"group is closed as 2"),
        (b"\x0b" * 100_000, r"varint is cut off"),  # deep nesting: no RecursionError
        (b"\x0b", r"varint is cut off"),
        (b"\x08\x01", r"Malformed Batch: field 1 has wire type 0"),
        (field(1, 2, b"\x18\x01"), r"Malformed Tensor: field 3 has wire type 0"),
        (field(2, 2, b"\x0a\xff"), r"Malformed data_wire.v1.Batch"),
        (field(1, 2, b"\x0a\x02\xff\xfe"), r"Malformed data_wire.v1.Tensor"),
    ],
)
def test_malformed_wire_bytes_raise_value_error(buf, message):
    with pytest.raises(ValueError, match=message):
        decode_batch(buf)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (tensor_pb2.Tensor(dtype="nonsense", raw_nbytes=0), r"numpy dtype string\. Got 'nonsense'"),
        (tensor_pb2.Tensor(dtype="", raw_nbytes=0), r"numpy dtype string\. Got ''"),
        (tensor_pb2.Tensor(dtype="|O", raw_nbytes=0), r"numeric or bool dtype\. Got '\|O'"),
        (tensor_pb2.Tensor(dtype="<U3", shape=[1], raw_nbytes=12), r"numeric or bool"),
        (tensor_pb2.Tensor(dtype="|V4", shape=[1], raw_nbytes=4), r"numeric or bool"),
        (tensor_pb2.Tensor(dtype="<f4", shape=[-1], raw_nbytes=0), r"shape to be >= 0.*\(-1,\)"),
        (tensor(np.zeros(4, "<f4"), raw_nbytes=15), r"raw_nbytes to be 16 .*Got 15"),
        (tensor(np.zeros(4, "<f4"), raw_nbytes=0), r"raw_nbytes to be 16 .*Got 0"),
        (tensor(np.zeros(4, "<f4"), data=bytes(15)), r"Expected 16 bytes of Tensor\.data\. Got 15"),
        (tensor(np.zeros(4, "<f4"), data=b""), r"Expected 16 bytes of Tensor\.data\. Got 0"),
        (tensor(np.zeros(4, "<f4"), codec=7), r"known Tensor\.codec\. Got 7"),
        (tensor(np.zeros(4, "<f4"), codec=tensor_pb2.CODEC_LZ4), r"Corrupt CODEC_LZ4"),
        (tensor(np.zeros(4, "<f4"), codec=tensor_pb2.CODEC_ZSTD), r"Corrupt CODEC_ZSTD"),
        (
            tensor_pb2.Tensor(
                dtype="|u1", shape=[2**32], raw_nbytes=2**32, data=b"ab", codec=tensor_pb2.CODEC_LZ4
            ),
            r"Corrupt CODEC_LZ4",
        ),
        (
            tensor(np.zeros(1001, "<f4"), data=ZSTD_4000, codec=tensor_pb2.CODEC_ZSTD),
            r"decompress to raw_nbytes=4004 bytes\. Got 4000",
        ),
        (
            tensor(np.zeros(999, "<f4"), data=ZSTD_4000, codec=tensor_pb2.CODEC_ZSTD),
            r"decompress to raw_nbytes=3996 bytes\. Got 4000",
        ),
        (
            tensor(np.zeros(1001, "<f4"), data=lz4_block(bytes(4000)), codec=tensor_pb2.CODEC_LZ4),
            r"Corrupt CODEC_LZ4",
        ),
    ],
)
def test_invalid_tensors_raise_value_error(message, error):
    with pytest.raises(ValueError, match=error):
        decode_tensor(message)
    with pytest.raises(ValueError, match=error):
        decode_tensor(message.SerializeToString())
    with pytest.raises(ValueError, match=error):
        decode_batch(batch_bytes(GOOD, message))


def test_non_contiguous_buffers_are_rejected():
    strided = memoryview(np.zeros(8, np.uint8)[::2])
    with pytest.raises(ValueError, match=r"contiguous bytes-like buffer"):
        decode_batch(strided)

"""data_node.wire, the encoder, checked against protobuf's own parser.

Matrix: dtype strings written (explicit little-endian, byteswapped big-endian input) x rejected
dtypes (object, str, bytes, complex, datetime, structured; the message names the array) x codec
argument (UNSPECIFIED written as NONE, unknown rejected, compression kept only when smaller) x
payload alignment over header sizes 0..40 bytes (cursor fingerprint) and several dtypes x argument
checks (names, indices) x the one-copy property (no copy before the final join).
"""

from __future__ import annotations

import numpy as np
import pytest

from data_node import wire
from data_node.wire import ALIGNMENT, WIRE_DTYPES, encode_batch, encode_tensor
from data_wire.v1 import tensor_pb2

CURSOR = tensor_pb2.Cursor(dataset="d", seed=7, epoch=1, batch_index=2, fingerprint="abc")


def batch(arrays, **overrides):
    kwargs = {"indices": [3, 1], "cursor": CURSOR, "epoch": 1, "batch_index": 2} | overrides
    return encode_batch(arrays, **kwargs)


def parsed(arrays, **overrides):
    return tensor_pb2.Batch.FromString(batch(arrays, **overrides))


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (np.bool_, "|b1"),
        (np.uint8, "|u1"),
        (np.int8, "|i1"),
        (">u2", "<u2"),
        ("<i2", "<i2"),
        (">u4", "<u4"),
        (">i4", "<i4"),
        ("<u8", "<u8"),
        (">i8", "<i8"),
        (">f2", "<f2"),
        (">f4", "<f4"),
        ("=f8", "<f8"),
    ],
)
def test_dtype_is_written_little_endian_and_big_endian_data_is_swapped(dtype, expected):
    array = np.arange(6).reshape(2, 3).astype(dtype)
    (tensor,) = parsed([array]).arrays
    assert tensor.dtype == expected
    assert tensor.dtype in WIRE_DTYPES
    assert list(tensor.shape) == [2, 3]
    assert tensor.raw_nbytes == array.nbytes
    assert tensor.data == array.astype(expected).tobytes()


def test_non_contiguous_input_is_written_in_c_order():
    array = np.arange(24, dtype=np.int32).reshape(2, 3, 4).transpose(2, 0, 1)[::-1, :, ::2]
    (tensor,) = parsed([array]).arrays
    assert list(tensor.shape) == list(array.shape)
    assert tensor.data == np.ascontiguousarray(array).tobytes()


@pytest.mark.parametrize(
    "array",
    [
        np.array([object(), 1], dtype=object),
        np.array(["ab", "c"]),
        np.array([b"ab"]),
        np.zeros(2, np.complex64),
        np.zeros(2, "datetime64[s]"),
        np.zeros(2, "i4,f4"),
        np.zeros(2, np.longdouble),
    ],
    ids=["object", "str", "bytes", "complex", "datetime", "structured", "longdouble"],
)
def test_unsupported_dtypes_are_rejected_naming_the_array(array):
    with pytest.raises(ValueError, match=r"array 'mask'.*\|b1.*Got"):
        batch([np.zeros(2), array], names=["image", "mask"])
    with pytest.raises(ValueError, match=r"array 'arrays\[1\]'"):
        batch([np.zeros(2), array])
    with pytest.raises(ValueError, match=r"array 'array'"):
        encode_tensor(array)


@pytest.mark.parametrize("codec", [tensor_pb2.CODEC_UNSPECIFIED, tensor_pb2.CODEC_NONE])
def test_raw_codecs_are_written_as_codec_none(codec):
    (tensor,) = parsed([np.zeros(4, np.uint8)], codec=codec).arrays
    assert tensor.codec == tensor_pb2.CODEC_NONE


@pytest.mark.parametrize("codec", [-1, 4, 99])
def test_unknown_codecs_are_rejected(codec):
    with pytest.raises(ValueError, match=r"Expected codec to be one of CODEC_UNSPECIFIED.*Got"):
        batch([np.zeros(2)], codec=codec)
    with pytest.raises(ValueError, match=r"Expected codec"):
        encode_tensor(np.zeros(2), codec)


@pytest.mark.parametrize("codec", [tensor_pb2.CODEC_LZ4, tensor_pb2.CODEC_ZSTD])
def test_compression_is_kept_only_when_it_makes_the_tensor_smaller(codec, rng):
    zeros = np.zeros((64, 64), np.float32)
    noise = rng.integers(0, 256, 4096, dtype=np.uint8)
    empty = np.zeros((0, 3), np.float32)
    compressed, incompressible, nothing = parsed([zeros, noise, empty], codec=codec).arrays
    assert compressed.codec == codec
    assert len(compressed.data) < zeros.nbytes
    assert compressed.raw_nbytes == zeros.nbytes
    assert incompressible.codec == tensor_pb2.CODEC_NONE
    assert incompressible.data == noise.tobytes()
    assert (nothing.codec, nothing.data, nothing.raw_nbytes) == (tensor_pb2.CODEC_NONE, b"", 0)


def payload_offsets(buf, arrays):
    """Where each raw array's bytes start in ``buf`` (each array's bytes are distinct)."""
    return [buf.index(np.ascontiguousarray(a).tobytes()) for a in arrays]


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
@pytest.mark.parametrize("fingerprint_length", range(0, 41, 3))
def test_payloads_start_at_multiples_of_alignment(dtype, fingerprint_length):
    cursor = tensor_pb2.Cursor(dataset="d", fingerprint="x" * fingerprint_length)
    # distinct, non-zero bytes so that each payload is found only where it was written
    arrays = [np.arange(1, 41 + i, dtype=dtype).reshape(-1, 1) + 7 * i for i in range(1, 4)]
    buf = batch(arrays, cursor=cursor)
    for offset in payload_offsets(buf, arrays):
        assert offset % ALIGNMENT == 0
    message = tensor_pb2.Batch.FromString(buf)
    assert message.cursor == cursor
    assert [t.dtype for t in message.arrays] == [np.dtype(dtype).str] * 3
    assert [t.codec for t in message.arrays] == [tensor_pb2.CODEC_NONE] * 3
    # protobuf keeps one value of the repeated padding fields and re-serializes canonically
    assert len(message.SerializeToString()) <= len(buf)


@pytest.mark.parametrize("length", [1, 2, 7, 127, 128, 16383, 16384, 70000])
def test_encode_tensor_aligns_its_payload(length):
    array = (np.arange(length) % 251 + 1).astype(np.uint8)
    buf = encode_tensor(array)
    assert buf.endswith(array.tobytes())  # the payload comes last
    assert (len(buf) - array.nbytes) % ALIGNMENT == 0
    assert tensor_pb2.Tensor.FromString(buf).data == array.tobytes()


def test_small_fields_are_written():
    message = parsed([np.zeros(1)], indices=np.array([5, -1, 2**40]), epoch=3, batch_index=9)
    assert list(message.indices) == [5, -1, 2**40]
    assert message.cursor == CURSOR
    assert (message.epoch, message.batch_index) == (3, 9)


def test_indices_must_be_one_dimensional():
    with pytest.raises(ValueError, match=r"Expected indices to be 1-D\. Got shape \(2, 1\)"):
        batch([np.zeros(2)], indices=[[1], [2]])


def test_names_must_match_arrays():
    with pytest.raises(ValueError, match=r"Expected one name per array \(2\)\. Got 1 names"):
        batch([np.zeros(2), np.zeros(2)], names=["image"])


def test_contiguous_little_endian_arrays_are_not_copied_before_the_join(monkeypatch):
    array = np.zeros((4, 4), np.float32)
    seen = []
    real = wire._compress
    monkeypatch.setattr(wire, "_compress", lambda a, c: seen.append(a) or real(a, c))
    batch([array])
    assert np.shares_memory(seen[0], array)

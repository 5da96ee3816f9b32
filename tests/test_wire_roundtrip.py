"""Contract: data_client._decode inverts data_node.wire, and both speak plain data_wire.v1 protobuf.

Matrix (hypothesis): every wire dtype (bool, u1, i1, u2, i2, u4, i4, u8, i8, f2, f4, f8) in both
byte orders x layout (C-contiguous, transposed, strided, reversed) x shape (0-d, empty, zero-length
axes, up to 4-D) x codec (UNSPECIFIED, NONE, LZ4, ZSTD), through three paths:
encode_batch -> decode_batch (values, zero-copy, alignment), encode_batch -> protobuf
Batch.FromString (a client built from the .proto alone), and protobuf SerializeToString ->
decode_batch. Plus encode_tensor -> decode_tensor and -> Tensor.FromString.
"""

from __future__ import annotations

import struct

import numcodecs
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from data_client._decode import decode_batch, decode_tensor
from data_node.wire import ALIGNMENT, WIRE_DTYPES, encode_batch, encode_tensor
from data_wire.v1 import tensor_pb2

CODECS = [
    tensor_pb2.CODEC_UNSPECIFIED,
    tensor_pb2.CODEC_NONE,
    tensor_pb2.CODEC_LZ4,
    tensor_pb2.CODEC_ZSTD,
]
INT64 = st.integers(-(2**63), 2**63 - 1)


@st.composite
def input_arrays(draw):
    """An array of a wire dtype in either byte order, in one of four memory layouts."""
    dtype = np.dtype(draw(st.sampled_from(WIRE_DTYPES)))
    if draw(st.booleans()):
        dtype = dtype.newbyteorder(">")
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    array = draw(hnp.arrays(dtype.newbyteorder("="), shape)).astype(dtype)
    layout = draw(st.sampled_from(["c", "transposed", "strided", "reversed"]))
    if layout == "transposed":
        return array.T
    if layout == "strided":
        return np.repeat(array, 2, axis=-1)[..., ::2] if array.ndim else array
    if layout == "reversed":
        return array[::-1] if array.ndim else array
    return array


cursors = st.builds(
    tensor_pb2.Cursor,
    dataset=st.text(max_size=12),
    seed=st.integers(0, 2**64 - 1),
    epoch=st.integers(0, 2**40),
    batch_index=st.integers(0, 2**40),
    fingerprint=st.text(max_size=40),
)


def wire_dtype(array):
    return array.dtype.newbyteorder("<")


def assert_same(decoded, original):
    """Same shape, the little-endian dtype of the original, and bit-identical elements."""
    assert decoded.shape == original.shape
    assert decoded.dtype == wire_dtype(original)
    assert decoded.dtype.str in WIRE_DTYPES
    assert decoded.tobytes() == original.astype(decoded.dtype).tobytes()


def raw_bytes_of(tensor):
    """Tensor.data decoded with nothing but the .proto's description and numcodecs."""
    if tensor.codec == tensor_pb2.CODEC_LZ4:  # one bare LZ4 block; numcodecs wants a size prefix
        return numcodecs.LZ4().decode(struct.pack("<I", tensor.raw_nbytes) + tensor.data)
    if tensor.codec == tensor_pb2.CODEC_ZSTD:
        return numcodecs.Zstd().decode(tensor.data)
    assert tensor.codec == tensor_pb2.CODEC_NONE
    return tensor.data


def protobuf_tensor(array, codec):
    """A Tensor built the plain protobuf way, as a third-party encoder would."""
    wire = np.asarray(array, dtype=wire_dtype(array), order="C")
    data = wire.tobytes()
    if codec == tensor_pb2.CODEC_LZ4 and data:
        data = numcodecs.LZ4().encode(data)[4:]
    elif codec == tensor_pb2.CODEC_ZSTD and data:
        data = numcodecs.Zstd().encode(data)
    else:
        codec = tensor_pb2.CODEC_NONE
    return tensor_pb2.Tensor(
        dtype=wire.dtype.str, shape=wire.shape, data=data, codec=codec, raw_nbytes=wire.nbytes
    )


batches = st.fixed_dictionaries(
    {
        "arrays": st.lists(input_arrays(), max_size=3),
        "indices": st.lists(INT64, max_size=10),
        "cursor": cursors,
        "epoch": st.integers(0, 2**40),
        "batch_index": st.integers(0, 2**40),
        "codec": st.sampled_from(CODECS),
    }
)


@given(batch=batches)
def test_decode_batch_inverts_encode_batch(batch):
    buf = encode_batch(**batch)
    decoded = decode_batch(buf)
    assert len(decoded.arrays) == len(batch["arrays"])
    for got, original in zip(decoded.arrays, batch["arrays"], strict=True):
        assert_same(got, original)
        assert not got.flags.writeable
    assert decoded.indices.dtype == np.int64
    assert decoded.indices.tolist() == batch["indices"]
    assert decoded.cursor == batch["cursor"]
    assert (decoded.epoch, decoded.batch_index) == (batch["epoch"], batch["batch_index"])


@given(batch=batches)
def test_raw_payloads_are_aligned_views_of_the_buffer(batch):
    batch["codec"] = tensor_pb2.CODEC_NONE
    buf = encode_batch(**batch)
    base = np.frombuffer(buf, np.uint8)
    for got in decode_batch(buf).arrays:
        if got.nbytes:
            assert np.shares_memory(got, base)
            assert (got.ctypes.data - base.ctypes.data) % ALIGNMENT == 0


@given(batch=batches)
def test_encode_batch_is_plain_protobuf(batch):
    message = tensor_pb2.Batch.FromString(encode_batch(**batch))
    assert len(message.arrays) == len(batch["arrays"])
    for tensor, original in zip(message.arrays, batch["arrays"], strict=True):
        wire = np.asarray(original, dtype=wire_dtype(original), order="C")
        assert tensor.dtype == wire.dtype.str
        assert tuple(tensor.shape) == wire.shape
        assert tensor.raw_nbytes == wire.nbytes
        assert raw_bytes_of(tensor) == wire.tobytes()
    assert list(message.indices) == batch["indices"]
    assert message.cursor == batch["cursor"]
    assert (message.epoch, message.batch_index) == (batch["epoch"], batch["batch_index"])
    # and protobuf's own re-serialization still decodes to the same batch
    again = decode_batch(message.SerializeToString())
    for got, original in zip(again.arrays, batch["arrays"], strict=True):
        assert_same(got, original)


@given(batch=batches)
def test_decode_batch_reads_protobuf_serialized_batches(batch):
    message = tensor_pb2.Batch(
        arrays=[protobuf_tensor(a, batch["codec"]) for a in batch["arrays"]],
        cursor=batch["cursor"],
        indices=batch["indices"],
        epoch=batch["epoch"],
        batch_index=batch["batch_index"],
    )
    decoded = decode_batch(message.SerializeToString())
    for got, original in zip(decoded.arrays, batch["arrays"], strict=True):
        assert_same(got, original)
    assert decoded.indices.tolist() == batch["indices"]
    assert decoded.cursor == batch["cursor"]
    assert (decoded.epoch, decoded.batch_index) == (batch["epoch"], batch["batch_index"])


@given(array=input_arrays(), codec=st.sampled_from(CODECS))
def test_decode_tensor_inverts_encode_tensor(array, codec):
    buf = encode_tensor(array, codec)
    assert_same(decode_tensor(buf), array)
    message = tensor_pb2.Tensor.FromString(buf)
    assert_same(decode_tensor(message), array)
    assert raw_bytes_of(message) == array.astype(wire_dtype(array)).tobytes()

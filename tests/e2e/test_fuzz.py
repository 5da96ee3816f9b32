"""Fuzzing a real node: generated requests always get a proper status, never a crash or hang.

Matrix: >= 2,000 StreamRequests with every field drawn from extreme and random values
(huge and negative integers, floats tiny, subnormal, huge, at the bounds, NaN and infinite,
empty, long and huge strings, long repeated fields, unknown enum numbers, random cursors
and weights), sent plain or gzip-compressed, plus DescribeDataset names and raw random bytes
sent to every method through a generic channel. Each answer is OK or one of the statuses a
bad request deserves, and the node answers a ListDatasets after each; after the storm a
valid stream still works.
"""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_wire.v1 import data_node_pb2, tensor_pb2

EXPECTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
METHODS = ("ListDatasets", "DescribeDataset", "StreamBatches")

int32 = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, 2, 3, -1]))
int64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-3, 70))
uint64 = st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 5))
# Tiny, subnormal and huge values, the edges of the node's bounds and just past them.
EXTREME_FLOATS = [
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1e-300,
    1e300,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    -0.0,
    1 / 16,
    math.nextafter(1 / 16, 0),
    0.9375,
    16.0,
    80.0,
    360.0,
    1000.0,
    float(2**53),
    1e100,
]
reals = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True) | st.sampled_from(
    [0.0, 0.5, 1.0, 45.0, *EXTREME_FLOATS]
)
HUGE_STRINGS = ["x" * 100_000, "toy" * 30_000, "\u00e9\U0001f600" * 20_000, "nearest" * 10_000]
names = (
    st.sampled_from(["toy", "classes", "", "image", "mask", "weights"])
    | st.text(max_size=300)
    | st.sampled_from(HUGE_STRINGS)
)


def repeated(elements, *, max_size):
    """Lists of ``elements``: short, or long (up to ``max_size``) of one repeated value."""
    return st.lists(elements, max_size=3) | st.builds(
        lambda value, size: [value] * size, elements, st.integers(4, max_size)
    )


augmentations = st.builds(
    data_node_pb2.Augmentation,
    x_array=names,
    y_array=names,
    rotation_range=reals,
    width_shift_range=reals,
    height_shift_range=reals,
    shear_range=reals,
    zoom_range=repeated(reals, max_size=10_000),
    intensity_shift_range=reals,
    fill_mode=st.sampled_from(["", "nearest", "reflect", "constant", "mirror"])
    | st.text()
    | st.sampled_from(HUGE_STRINGS),
    cval_x=reals,
    cval_y=reals,
    horizontal_flip=st.booleans(),
    vertical_flip=st.booleans(),
    spline_warp=st.booleans(),
    warp_sigma=reals,
    warp_grid_size=int32,
    crop_size=repeated(int64, max_size=10_000),
    order_x=int32,
    order_y=int32,
)
cursors = st.builds(
    tensor_pb2.Cursor,
    dataset=names,
    seed=uint64,
    epoch=int64,
    batch_index=int64,
    fingerprint=st.text(max_size=40),
)
weights = st.one_of(
    st.builds(data_node_pb2.SampleWeights, array=names),
    st.builds(
        data_node_pb2.SampleWeights,
        values=st.builds(
            data_node_pb2.DoubleList,
            values=st.lists(reals, max_size=45) | repeated(reals, max_size=100_000),
        ),
    ),
)


@st.composite
def stream_requests(draw):
    request = data_node_pb2.StreamRequest(
        dataset=draw(names),
        batch_size=draw(int64),
        sample_random=draw(st.booleans()),
        sample_with_replacement=draw(st.booleans()),
        drop_incomplete_batches=draw(st.booleans()),
        epochs=draw(int64),
        loop_forever=draw(st.booleans()),
        nb_io_workers=draw(int32),
        nb_proc_workers=draw(st.sampled_from([0, 1]) | int32),
        preprocessor=draw(
            st.sampled_from(["", "scale", "noisy"])
            | st.text(max_size=50)
            | st.sampled_from(HUGE_STRINGS)
        ),
        codec=draw(st.integers(0, 4) | int32),
        shard=data_node_pb2.Shard(rank=draw(int32), world_size=draw(int32)),
    )
    if draw(st.booleans()):
        request.seed = draw(uint64)
    if draw(st.booleans()):
        request.augmentation.CopyFrom(draw(augmentations))
    if draw(st.booleans()):
        request.resume.CopyFrom(draw(cursors))
    if draw(st.booleans()):
        request.sample_weights.CopyFrom(draw(weights))
    return request


@pytest.fixture(scope="module")
def channel(node):
    _, port = node
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel


def raw(channel, method, stream):
    path = f"/data_wire.v1.DataNode/{method}"
    if stream:
        return channel.unary_stream(path, request_serializer=bytes, response_deserializer=bytes)
    return channel.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)


def refusal(call):
    """Run ``call`` (a thunk); return the RpcError it raised, or None."""
    try:
        call()
    except grpc.RpcError as error:
        return error
    return None


def check_answer(call, channel):
    """The outcome of ``call`` must be OK or an expected status that says why; the node lives."""
    error = refusal(call)
    if error is not None:
        assert error.code() in EXPECTED, (error.code(), error.details())
        assert error.details(), "a refusal must say why"
    raw(channel, "ListDatasets", False)(b"", timeout=30)  # alive and serving


COMPRESSIONS = st.sampled_from([grpc.Compression.NoCompression, grpc.Compression.Gzip])


FUZZ = settings(
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)


@FUZZ
@given(request=stream_requests(), compression=COMPRESSIONS)
def test_generated_stream_requests(channel, request, compression):
    def first_batches():
        call = raw(channel, "StreamBatches", True)(
            request.SerializeToString(), timeout=20, compression=compression
        )
        try:
            for _, _ in zip(call, range(2), strict=False):
                pass
        finally:
            call.cancel()

    check_answer(first_batches, channel)


@settings(max_examples=200, deadline=None, database=None)
@given(name=names, compression=COMPRESSIONS)
def test_generated_describe_requests(channel, name, compression):
    request = data_node_pb2.DescribeDatasetRequest(dataset=name).SerializeToString()
    check_answer(
        lambda: raw(channel, "DescribeDataset", False)(
            request, timeout=10, compression=compression
        ),
        channel,
    )


@settings(max_examples=300, deadline=None, database=None)
@given(method=st.sampled_from(METHODS), payload=st.binary(max_size=200), compression=COMPRESSIONS)
def test_random_bytes_to_every_method(channel, method, payload, compression):
    def call():
        if method == "StreamBatches":
            list(raw(channel, method, True)(payload, timeout=10, compression=compression))
        else:
            raw(channel, method, False)(payload, timeout=10, compression=compression)

    check_answer(call, channel)


def test_node_still_serves_after_the_storm(client, node_dir):
    _, arrays = node_dir
    batch = next(iter(client.stream("toy", 4)))
    np.testing.assert_array_equal(batch[0], arrays["image"][:4])

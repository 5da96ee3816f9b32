"""Bad requests get a precise status naming the field, and the node keeps serving.

Matrix: unknown dataset (NOT_FOUND, did-you-mean); batch_size 0 / above the limit; epochs 0;
seed too large; rank >= world_size; worker counts above the limit; unknown preprocessor;
bad augmentation values and array names; weights of the wrong length / unknown array /
all zero; replacement without random sampling; a cursor from another dataset, seed or
stream, or past the epoch's end; too many open streams (RESOURCE_EXHAUSTED); a batch above
max_batch_bytes; sharing modes (partitioned without a seed, independent or unspecified with
world_size > 1, an unknown enum value) and lanes (index >= count, negative, count negative or
above 1024). After every refusal a valid stream still works.
"""

from __future__ import annotations

import re

import grpc
import pytest
from node_support import make_data, stream_error, wait_for_idle, write_config

from data_client import DataNodeClient
from data_client.errors import (
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from data_node.config import load
from data_node.server import build_server
from data_wire.v1 import data_node_pb2, tensor_pb2


def assert_still_serving(client):
    with client.stream("toy", 4) as stream:
        batch = next(stream)
    assert batch[0].shape == (4, 1, 16, 16)


def test_unknown_dataset_is_not_found(client):
    with pytest.raises(NotFoundError, match="Did you mean 'toy'"):
        client.describe("tyo")
    with pytest.raises(NotFoundError, match="dataset: Expected one of"):
        next(iter(client.stream("nope", 4)))
    assert_still_serving(client)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"batch_size": 0}, r"^batch_size: Expected an integer in \[1, 32\]\. Got 0"),
        ({"batch_size": 33}, r"^batch_size: .* Got 33"),
        ({"epochs": 0}, r"^epochs: Expected an integer in \[1, 4294967296\]\. Got 0"),
        ({"seed": 2**40}, r"^seed: Expected an integer in \[0, 4294967296\)"),
        ({"shard": data_node_pb2.Shard(rank=2, world_size=2)}, r"^shard\.rank: .*\[0, 1\]"),
        ({"shard": data_node_pb2.Shard(rank=-1)}, r"^shard\.rank"),
        ({"nb_proc_workers": 3}, r"^nb_proc_workers: Expected an integer in \[0, 2\]"),
        ({"nb_io_workers": -1}, r"^nb_io_workers"),
        ({"codec": 17}, r"^codec: Expected one of"),
        (
            {"preprocessor": "nope"},
            r"^preprocessor: Expected one of \['noisy', 'position', 'scale'\]",
        ),
        (
            {"augmentation": data_node_pb2.Augmentation(x_array="pixels")},
            r"^augmentation\.x_array: Expected one of \['image', 'mask', 'weights'\]",
        ),
        (
            {"augmentation": data_node_pb2.Augmentation(x_array="image", y_array="nope")},
            r"^augmentation\.y_array",
        ),
        (
            {"augmentation": data_node_pb2.Augmentation(x_array="image", y_array="image")},
            r"^augmentation\.y_array: Expected an array other than x_array .* Got 'image'",
        ),
        (
            {"augmentation": data_node_pb2.Augmentation(x_array="image", rotation_range=-5)},
            r"^augmentation\.rotation_range: Expected a number in \[0, 360\] \(degrees\)\. Got -5",
        ),
        (
            {"augmentation": data_node_pb2.Augmentation(x_array="image", fill_mode="neerest")},
            r"^augmentation\.fill_mode: Expected one of .* Did you mean 'nearest'",
        ),
        (
            {"augmentation": data_node_pb2.Augmentation(x_array="image", crop_size=[64, 64])},
            r"^augmentation\.crop_size: Expected \(h, w\) with 1 <= h <= 16 and 1 <= w <= 16",
        ),
        (
            {"augmentation": data_node_pb2.Augmentation(x_array="image", zoom_range=[1, 2, 3])},
            r"^augmentation\.zoom_range",
        ),
        (
            {
                "sample_random": True,
                "sample_weights": data_node_pb2.SampleWeights(
                    values=data_node_pb2.DoubleList(values=[1.0, 2.0])
                ),
            },
            r"^sample_weights\.values: Expected one weight per sample \(40\)",
        ),
        (
            {
                "sample_random": True,
                "sample_weights": data_node_pb2.SampleWeights(
                    values=data_node_pb2.DoubleList(values=[0.0] * 40)
                ),
            },
            r"^sample_weights\.values: Expected finite weights",
        ),
        (
            {"sample_random": True, "sample_weights": data_node_pb2.SampleWeights(array="w")},
            r"^sample_weights\.array: Expected one of",
        ),
        ({"sample_with_replacement": True}, r"^sample_random: Expected true"),
    ],
)
def test_invalid_fields_are_named(node, client, fields, message):
    request = data_node_pb2.StreamRequest(dataset="toy", batch_size=4, epochs=1)
    for name, value in fields.items():
        if isinstance(value, data_node_pb2.Shard | data_node_pb2.Augmentation):
            getattr(request, name).CopyFrom(value)
        elif isinstance(value, data_node_pb2.SampleWeights):
            request.sample_weights.CopyFrom(value)
        else:
            setattr(request, name, value)
    code, details = raw_stream_error(node, request)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, details), details
    assert_still_serving(client)


SHARD_OF_2 = data_node_pb2.Shard(rank=1, world_size=2)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"sharing": data_node_pb2.SHARING_PARTITIONED, "shard": SHARD_OF_2},
            r"^seed: Expected a seed with SHARING_PARTITIONED",
        ),
        ({"sharing": data_node_pb2.SHARING_PARTITIONED}, r"^seed: "),
        (
            {"sharing": data_node_pb2.SHARING_INDEPENDENT, "shard": SHARD_OF_2, "seed": 1},
            r"^sharing: Expected SHARING_PARTITIONED .* Got SHARING_INDEPENDENT",
        ),
        (
            {"sharing": data_node_pb2.SHARING_UNSPECIFIED, "shard": SHARD_OF_2, "seed": 1},
            r"^sharing: Expected SHARING_PARTITIONED .* Got SHARING_UNSPECIFIED",
        ),
        ({"sharing": 7}, r"^sharing: Expected one of \['SHARING_INDEPENDENT'.* Got 7"),
        ({"sharing": 7, "shard": SHARD_OF_2, "seed": 1}, r"^sharing: Expected one of"),
        ({"lane": data_node_pb2.Lane(index=2, count=2)}, r"^lane\.index: .*\[0, 1\]\. Got 2"),
        ({"lane": data_node_pb2.Lane(index=-1, count=2)}, r"^lane\.index: .*Got -1"),
        ({"lane": data_node_pb2.Lane(index=1)}, r"^lane\.index: .*\[0, 0\]\. Got 1"),
        ({"lane": data_node_pb2.Lane(count=-1)}, r"^lane\.count: .*\[1, 1024\]\. Got -1"),
        ({"lane": data_node_pb2.Lane(count=1025)}, r"^lane\.count: .*\[1, 1024\]\. Got 1025"),
    ],
)
def test_invalid_sharing_and_lane_fields_are_named(node, client, fields, message):
    request = data_node_pb2.StreamRequest(dataset="toy", batch_size=4, epochs=1, **fields)
    code, details = raw_stream_error(node, request)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, details), details
    assert_still_serving(client)


def test_the_clients_sharing_argument_is_checked(client):
    with pytest.raises(ValueError, match=r"sharing.*Did you mean 'partitioned'"):
        client.stream("toy", 4, sharing="partitoned")
    with pytest.raises(InvalidArgumentError, match=r"^INVALID_ARGUMENT: seed: "):
        next(client.stream("toy", 4, rank=1, world_size=2))
    with pytest.raises(InvalidArgumentError, match=r"sharing: .*SHARING_INDEPENDENT"):
        next(client.stream("toy", 4, seed=1, rank=1, world_size=2, sharing="independent"))
    assert_still_serving(client)


def raw_stream_error(node, request):
    _, port = node
    return stream_error(port, request)


def test_cursors_from_other_streams_are_refused(client):
    stream = client.stream("toy", 8, sample_random=True, seed=1)
    next(stream)
    cursor = stream.cursor
    stream.close()
    with pytest.raises(InvalidArgumentError, match=r"resume\.seed"):
        next(iter(client.stream("toy", 8, sample_random=True, seed=2, resume=cursor)))
    with pytest.raises(InvalidArgumentError, match=r"resume\.fingerprint"):
        next(iter(client.stream("toy", 4, sample_random=True, seed=1, resume=cursor)))
    with pytest.raises(InvalidArgumentError, match=r"resume\.dataset"):
        next(iter(client.stream("classes", 8, sample_random=True, seed=1, resume=cursor)))
    past_end = tensor_pb2.Cursor()
    past_end.CopyFrom(cursor)
    past_end.batch_index = 99
    with pytest.raises(InvalidArgumentError, match=r"resume\.batch_index: .*\[0, 5\)"):
        next(iter(client.stream("toy", 8, sample_random=True, seed=1, resume=past_end)))
    assert_still_serving(client)


@pytest.fixture
def node_with(tmp_path):
    """Start a node with the given limits on its own data; yield a client; stop it."""
    started = []

    def start(**limits):
        make_data(tmp_path)
        write_config(tmp_path, **limits)
        server, port = build_server(load(tmp_path / "node.toml"), "127.0.0.1:0")
        server.start()
        started.append(server)
        return server, DataNodeClient(f"127.0.0.1:{port}")

    yield start
    for server in started:
        server.stop(None)


def test_open_stream_limit_is_resource_exhausted(node_with):
    server, client = node_with(max_open_streams=3)
    with client:
        streams = [client.stream("toy", 4, loop_forever=True) for _ in range(3)]
        for stream in streams:
            next(stream)
        with pytest.raises(ResourceExhaustedError, match=r"max_open_streams: .* at most 3"):
            next(iter(client.stream("toy", 4)))
        for stream in streams:
            stream.close()
        wait_for_idle(server)
        assert_still_serving(client)


def test_batch_bytes_limit(node_with):
    _, client = node_with(max_batch_bytes=4096)
    with client:
        with pytest.raises(ResourceExhaustedError, match=r"max_batch_bytes: .* 4096 bytes"):
            next(iter(client.stream("toy", 8)))
        with client.stream("classes", 2) as stream:
            assert next(stream)[0].shape[0] == 2


def test_a_request_above_the_request_limit_is_resource_exhausted(node_with):
    _, client = node_with(max_request_bytes=65536)
    with client:
        with pytest.raises(ResourceExhaustedError, match="larger than max"):
            next(iter(client.stream("toy", 4, sample_random=True, sample_weights=[1.0] * 20000)))
        assert_still_serving(client)

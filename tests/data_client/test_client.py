"""DataNodeClient against a fake in-process DataNode (tests/data_client/conftest.py).

Matrix:
- datasets()/describe(): proto -> DatasetInfo/ArrayInfo; NOT_FOUND -> NotFoundError.
- stream() argument -> StreamRequest mapping: defaults, every option, weights inline or named,
  augment dict (scalars, pairs, optional fields, None), resume as Cursor or bytes (seed filled).
- client-side validation: each bad argument -> TypeError/ValueError naming it (did-you-mean).
- decoding: arrays equal the node's, read-only views, copy=True writable; indices, epoch,
  batch_index, cursor after every batch; every sample once per epoch; resume continues exactly.
- errors: NOT_FOUND, INVALID_ARGUMENT, UNAUTHENTICATED, RESOURCE_EXHAUSTED (message size) ->
  typed errors; translate_rpc_error table; no raw grpc.RpcError escapes.
- reconnect on UNAVAILABLE: after k batches (resume = last cursor), before any batch (original
  request), a real server stop/restart on the same port, giving up after max_reconnects.
- close(): cancels the server-side call (stream.close, context exit, garbage collection,
  client.close); token metadata on every RPC; tls forms.
- keepalive: channel options by default (10 s, timeout 5 s), a short one (timeout = interval),
  None (no keepalive options), users' options override; bad values -> TypeError/ValueError
  naming keepalive; a stream with keepalive on reads as usual.
"""

from __future__ import annotations

import gc
import threading

import grpc
import numpy as np
import pytest

from data_client import (
    ArrayInfo,
    BatchStream,
    Cursor,
    DataNodeClient,
    DataNodeError,
    DatasetInfo,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from data_client import errors as errors_module
from data_wire.v1 import tensor_pb2

FAST_RECONNECT = {"initial_backoff": 0.01, "max_backoff": 0.05}


@pytest.fixture
def client(fake_node):
    with DataNodeClient(fake_node.address) as client:
        yield client


def collect(stream):
    """Every batch of a stream as (arrays, indices, epoch, batch_index, cursor)."""
    return [
        (arrays, stream.indices, stream.epoch, stream.batch_index, stream.cursor)
        for arrays in stream
    ]


# ---------------------------------------------------------------- datasets, describe


def test_describe_maps_the_description(client, fake_node):
    info = client.describe("toy")
    assert info == DatasetInfo(
        name="toy",
        length=fake_node.length,
        arrays=tuple(
            ArrayInfo(name=key, dtype=value.dtype, shape=value.shape)
            for key, value in fake_node.arrays.items()
        ),
        classes=(0, 10, 20),
    )
    assert isinstance(info.arrays[0].dtype, np.dtype)
    assert info.arrays[1].dtype == np.uint8


def test_datasets_lists_every_dataset_in_order(client):
    assert [info.name for info in client.datasets()] == ["other", "toy"]


def test_describe_unknown_dataset_raises_not_found(client):
    with pytest.raises(NotFoundError) as caught:
        client.describe("nope")
    error = caught.value
    assert isinstance(error, LookupError)
    assert isinstance(error, DataNodeError)
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert error.details == "dataset: no dataset 'nope'"
    assert str(error) == "NOT_FOUND: dataset: no dataset 'nope'"


# ---------------------------------------------------------------- request mapping


def test_default_request(client, fake_node):
    list(client.stream("toy", 4))
    (request,) = fake_node.requests
    assert request.dataset == "toy"
    assert request.batch_size == 4
    assert request.epochs == 1
    assert not request.sample_random
    assert not request.HasField("seed")
    assert not request.HasField("augmentation")
    assert not request.HasField("sample_weights")
    assert not request.HasField("resume")
    assert request.preprocessor == ""
    assert (request.shard.rank, request.shard.world_size) == (0, 1)
    assert request.codec == tensor_pb2.CODEC_NONE


def test_every_option_reaches_the_request(client, fake_node):
    stream = client.stream(
        "toy",
        3,
        sample_random=True,
        seed=2**32 - 1,
        epochs=2,
        preprocessor="normalize",
        rank=1,
        world_size=3,
        sample_with_replacement=True,
        sample_weights=np.array([0.5, 1.5]),
        drop_incomplete_batches=True,
        loop_forever=True,
        nb_io_workers=2,
        nb_proc_workers=3,
        codec="zstd",
    )
    next(stream)
    stream.close()
    (request,) = fake_node.requests
    assert request.sample_random
    assert request.seed == 2**32 - 1
    assert request.epochs == 2
    assert request.preprocessor == "normalize"
    assert (request.shard.rank, request.shard.world_size) == (1, 3)
    assert request.sample_with_replacement
    assert list(request.sample_weights.values.values) == [0.5, 1.5]
    assert request.drop_incomplete_batches
    assert request.loop_forever
    assert (request.nb_io_workers, request.nb_proc_workers) == (2, 3)
    assert request.codec == tensor_pb2.CODEC_ZSTD


def test_shuffle_window_reaches_the_request(client, fake_node):
    list(client.stream("toy", 4, sample_random=True, seed=1, shuffle_window=8))
    list(client.stream("toy", 4, sample_random=True, seed=1))
    assert [request.shuffle_window for request in fake_node.requests] == [8, 0]


def test_sample_weights_by_array_name(client, fake_node):
    list(client.stream("toy", 4, sample_random=True, sample_weights="weight"))
    assert fake_node.requests[0].sample_weights.array == "weight"


def test_augment_dict_maps_to_the_message(client, fake_node):
    augment = {
        "x_array": "image",
        "y_array": "mask",
        "rotation_range": 15,
        "zoom_range": 0.2,
        "fill_mode": "constant",
        "cval_y": 3.0,
        "horizontal_flip": True,
        "spline_warp": True,
        "warp_sigma": None,
        "warp_grid_size": 5,
        "crop_size": (2, 2),
        "order_x": 0,
    }
    list(client.stream("toy", 5, augmentation=augment))
    message = fake_node.requests[0].augmentation
    assert (message.x_array, message.y_array) == ("image", "mask")
    assert message.rotation_range == 15.0
    assert list(message.zoom_range) == pytest.approx([0.2])
    assert message.fill_mode == "constant"
    assert message.cval_y == 3.0
    assert message.horizontal_flip
    assert not message.vertical_flip
    assert message.spline_warp
    assert not message.HasField("warp_sigma")  # None: the node's default
    assert message.warp_grid_size == 5
    assert list(message.crop_size) == [2, 2]
    assert message.HasField("order_x")
    assert message.order_x == 0
    assert not message.HasField("order_y")


def test_augment_zoom_pair(client, fake_node):
    list(client.stream("toy", 5, augmentation={"x_array": "image", "zoom_range": (0.5, 1.5)}))
    assert list(fake_node.requests[0].augmentation.zoom_range) == [0.5, 1.5]


@pytest.mark.parametrize(
    ("augment", "error", "match"),
    [
        ({"x_array": "image", "rotaton_range": 3}, ValueError, "'rotaton_range'.*'rotation_range'"),
        ({"x_array": "image", "cval": 1}, ValueError, "Got 'cval' instead.*'cval_[xy]'"),
        ({"rotation_range": 3}, ValueError, r"augmentation\['x_array'\]"),
        (
            {"x_array": "image", "rotation_range": "lots"},
            TypeError,
            r"augmentation\['rotation_range'\]",
        ),
        ({"x_array": "image", "crop_size": (1.5, 2)}, TypeError, r"augmentation\['crop_size'\]"),
    ],
)
def test_bad_augment_is_refused_before_any_call(client, fake_node, augment, error, match):
    with pytest.raises(error, match=match):
        client.stream("toy", 2, augmentation=augment)
    assert fake_node.requests == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 0}, ValueError, "batch_size to be an integer >= 1. Got 0"),
        ({"batch_size": 2.0}, TypeError, "batch_size to be an integer"),
        ({"batch_size": True}, TypeError, "batch_size to be an integer"),
        ({"dataset": ""}, TypeError, "dataset to be a non-empty string"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 2**32}, ValueError, "seed"),
        ({"rank": 2, "world_size": 2}, ValueError, r"rank to be an integer in \[0, 1\]. Got 2"),
        ({"rank": -1}, ValueError, "rank"),
        ({"world_size": 0}, ValueError, "world_size"),
        ({"nb_io_workers": -1}, ValueError, "nb_io_workers"),
        ({"nb_proc_workers": -2}, ValueError, "nb_proc_workers"),
        ({"codec": "lz5"}, ValueError, "codec.*Did you mean 'lz4'"),
        ({"codec": None}, ValueError, "codec"),
        ({"sample_weights": [[1.0, 2.0]]}, ValueError, "sample_weights.*shape"),
        ({"resume": "cursor"}, TypeError, "resume"),
        ({"preprocessor": 3}, TypeError, "preprocessor"),
        ({"max_reconnects": -1}, ValueError, "max_reconnects"),
        ({"initial_backoff": 0}, ValueError, "initial_backoff"),
        ({"max_backoff": float("inf")}, ValueError, "max_backoff"),
        ({"shuffle_window": 0}, ValueError, "shuffle_window"),
        ({"shuffle_window": -5}, ValueError, "shuffle_window"),
        ({"shuffle_window": 2.5}, TypeError, "shuffle_window"),
    ],
)
def test_bad_arguments_are_refused_naming_them(client, fake_node, kwargs, error, match):
    arguments = {"dataset": "toy", "batch_size": 2, **kwargs}
    with pytest.raises(error, match=match):
        client.stream(**arguments)
    assert fake_node.requests == []


# ---------------------------------------------------------------- decoding and position


def test_batches_decode_with_indices_and_cursors(client, fake_node):
    stream = client.stream("toy", 4, epochs=2)
    assert isinstance(stream, BatchStream)
    assert (stream.cursor, stream.indices, stream.epoch, stream.batch_index) == (None,) * 4
    assert stream.cursor_bytes() is None
    batches = collect(stream)
    assert [(epoch, index) for _, _, epoch, index, _ in batches] == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2),
    ]  # fmt: skip
    for arrays, indices, _, _, _ in batches:
        assert len(arrays) == len(fake_node.arrays)
        for array, expected in zip(arrays, fake_node.arrays.values(), strict=True):
            np.testing.assert_array_equal(array, expected[indices])
            assert array.dtype == expected.dtype
            assert not array.flags.writeable
    for epoch in (0, 1):
        seen = np.concatenate([b[1] for b in batches if b[2] == epoch])
        np.testing.assert_array_equal(np.sort(seen), np.arange(fake_node.length))
    last = batches[-1][4]
    assert (last.dataset, last.seed, last.epoch, last.batch_index) == ("toy", 77, 2, 0)
    assert stream.closed


def test_copy_yields_writable_arrays(client):
    arrays = next(iter(client.stream("toy", 4, copy=True)))
    assert all(array.flags.writeable and array.flags.owndata for array in arrays)


def test_shard_is_passed_through(client, fake_node):
    indices = np.concatenate([stream_indices for _, stream_indices, *_ in collect(
        client.stream("toy", 2, rank=1, world_size=3)
    )])  # fmt: skip
    np.testing.assert_array_equal(indices, np.arange(1, fake_node.length, 3))


@pytest.mark.parametrize("as_bytes", [False, True])
def test_resume_continues_where_the_checkpoint_was_taken(client, fake_node, as_bytes):
    whole = [indices for _, indices, *_ in collect(client.stream("toy", 3, epochs=2))]
    stream = client.stream("toy", 3, epochs=2)
    head = [next(stream), next(stream)]
    checkpoint = stream.cursor_bytes() if as_bytes else stream.cursor
    stream.close()
    assert len(head) == 2
    resumed = client.stream("toy", 3, epochs=2, resume=checkpoint)
    assert resumed.cursor == Cursor.FromString(stream.cursor_bytes())
    rest = [indices for _, indices, *_ in collect(resumed)]
    assert [list(i) for i in whole[2:]] == [list(i) for i in rest]
    request = fake_node.requests[-1]
    assert request.resume == stream.cursor
    assert request.seed == fake_node.drawn_seed  # taken from the cursor when seed=None


# ---------------------------------------------------------------- errors


def test_stream_of_unknown_dataset_raises_not_found(client):
    stream = client.stream("nope", 2)
    with pytest.raises(NotFoundError, match="dataset: no dataset 'nope'"):
        next(stream)
    assert stream.closed
    assert list(stream) == []


def test_invalid_argument_from_the_node_is_a_value_error(client):
    with pytest.raises(ValueError, match="batch_size") as caught:
        next(client.stream("toy", 1000))
    assert isinstance(caught.value, InvalidArgumentError)


def test_message_size_limit_is_applied(fake_node):
    with DataNodeClient(fake_node.address, max_message_bytes=200) as small:
        with pytest.raises(ResourceExhaustedError):
            next(small.stream("toy", 8))
        assert len(small.describe("toy").arrays) == 3  # small messages still pass


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


@pytest.mark.parametrize(
    ("code", "name", "builtin"),
    [
        (grpc.StatusCode.NOT_FOUND, "NotFoundError", LookupError),
        (grpc.StatusCode.INVALID_ARGUMENT, "InvalidArgumentError", ValueError),
        (grpc.StatusCode.OUT_OF_RANGE, "OutOfRangeError", IndexError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "ResourceExhaustedError", RuntimeError),
        (grpc.StatusCode.PERMISSION_DENIED, "PermissionDeniedError", PermissionError),
        (grpc.StatusCode.UNAUTHENTICATED, "UnauthenticatedError", PermissionError),
        (grpc.StatusCode.UNAVAILABLE, "UnavailableError", ConnectionError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "DeadlineExceededError", TimeoutError),
        (grpc.StatusCode.FAILED_PRECONDITION, "FailedPreconditionError", RuntimeError),
        (grpc.StatusCode.UNIMPLEMENTED, "UnimplementedError", NotImplementedError),
        (grpc.StatusCode.INTERNAL, "InternalError", RuntimeError),
        (grpc.StatusCode.DATA_LOSS, "DataNodeError", RuntimeError),
    ],
)
def test_translate_rpc_error(code, name, builtin):
    error = errors_module.translate_rpc_error(_FakeRpcError(code, "field: bad"), note="why")
    assert type(error).__name__ == name
    assert isinstance(error, builtin)
    assert isinstance(error, DataNodeError)
    assert (error.code, error.details) == (code, "field: bad (why)")
    assert str(error) == f"{code.name}: field: bad (why)"


# ---------------------------------------------------------------- reconnect and resume


def test_unavailable_mid_stream_resumes_from_the_last_cursor(client, fake_node):
    expected = [list(indices) for _, indices, *_ in collect(client.stream("toy", 3, epochs=2))]
    fake_node.requests.clear()
    fake_node.fail_after = 3
    stream = client.stream("toy", 3, epochs=2, **FAST_RECONNECT)
    got = []
    cursors = []
    for _ in stream:
        got.append(list(stream.indices))
        cursors.append(stream.cursor)
    assert got == expected  # no sample lost, none duplicated
    first, second = fake_node.requests
    assert not first.HasField("resume")
    assert second.resume == cursors[2]
    assert second.seed == fake_node.drawn_seed


def test_unavailable_before_any_batch_reissues_the_original_request(client, fake_node):
    fake_node.fail_after = 0
    origin = Cursor(dataset="toy", seed=5, epoch=0, batch_index=1)
    batches = collect(client.stream("toy", 4, seed=5, resume=origin, **FAST_RECONNECT))
    assert [b[3] for b in batches] == [1, 2]
    first, second = fake_node.requests
    assert first == second
    assert first.resume == origin


def test_reconnects_across_a_node_restart(client, fake_node):
    fake_node.hold_after = 4  # the node goes down with the stream unfinished, however fast
    stream = client.stream("toy", 1, epochs=3, initial_backoff=0.05, max_backoff=0.2)
    seen = [int(next(stream)[2][0]) for _ in range(4)]
    assert fake_node.held.wait(30)
    fake_node.stop()
    restart = threading.Timer(0.3, fake_node.start)
    restart.start()
    try:
        seen += [int(label[0]) for _, _, label in stream]
    finally:
        restart.join()
    assert seen == list(fake_node.arrays["label"]) * 3
    first, resumed = fake_node.requests  # refused connections never reach the node
    assert not first.HasField("resume")
    assert resumed.HasField("resume")


def test_gives_up_after_max_reconnects(client, fake_node):
    fake_node.always_unavailable = True
    stream = client.stream("toy", 2, max_reconnects=3, **FAST_RECONNECT)
    with pytest.raises(UnavailableError, match="gave up after 3 reconnect attempts"):
        next(stream)
    assert len(fake_node.requests) == 4
    assert stream.closed


def test_no_reconnect_when_max_reconnects_is_zero(client, fake_node):
    fake_node.fail_after = 1
    stream = client.stream("toy", 2, max_reconnects=0)
    next(stream)
    with pytest.raises(UnavailableError, match="node is restarting") as caught:
        next(stream)
    assert isinstance(caught.value, ConnectionError)
    assert len(fake_node.requests) == 1


# ---------------------------------------------------------------- cancellation


def test_close_cancels_the_server_side_call(client, fake_node):
    stream = client.stream("toy", 2, loop_forever=True)
    next(stream)
    next(stream)
    assert not fake_node.stream_ended.is_set()
    stream.close()
    assert fake_node.stream_ended.wait(30)
    assert list(stream) == []
    stream.close()  # idempotent


def test_context_exit_cancels_the_call(client, fake_node):
    with client.stream("toy", 2, loop_forever=True) as stream:
        next(stream)
    assert fake_node.stream_ended.wait(30)


def test_garbage_collection_cancels_the_call(client, fake_node):
    stream = client.stream("toy", 2, loop_forever=True)
    next(stream)
    del stream
    gc.collect()
    assert fake_node.stream_ended.wait(30)


def test_close_from_another_thread_stops_iteration(client, fake_node):
    stream = client.stream("toy", 1, loop_forever=True)
    next(stream)
    threading.Timer(0.1, stream.close).start()
    for _ in stream:  # ends cleanly, without an error
        pass
    assert stream.closed
    assert fake_node.stream_ended.wait(30)


def test_client_close_closes_its_streams(fake_node):
    client = DataNodeClient(fake_node.address)
    stream = client.stream("toy", 2, loop_forever=True)
    next(stream)
    client.close()
    assert stream.closed
    assert fake_node.stream_ended.wait(30)


# ---------------------------------------------------------------- token and tls


def test_token_is_sent_with_every_rpc(fake_node):
    fake_node.required_token = "s3cret"
    with DataNodeClient(fake_node.address, token="s3cret") as client:
        client.datasets()
        client.describe("toy")
        list(client.stream("toy", 5))
    assert [m["authorization"] for m in fake_node.metadata] == ["Bearer s3cret"] * 3


@pytest.mark.parametrize("token", [None, "wrong"])
def test_bad_token_raises_unauthenticated(fake_node, token):
    fake_node.required_token = "s3cret"
    with DataNodeClient(fake_node.address, token=token) as client:
        with pytest.raises(UnauthenticatedError):
            client.datasets()
        with pytest.raises(PermissionError, match="bearer token"):
            next(client.stream("toy", 2, max_reconnects=0))


def test_tls_client_cannot_talk_to_a_plaintext_node(fake_node):
    with (
        DataNodeClient(fake_node.address, tls=True, timeout=30) as client,
        pytest.raises(UnavailableError),
    ):
        client.datasets()


def test_tls_forms(tmp_path, fake_node):
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(b"not a certificate")
    for tls in (False, bundle, str(bundle), bundle.read_bytes(), grpc.ssl_channel_credentials()):
        DataNodeClient(fake_node.address, tls=tls).close()
    with pytest.raises(FileNotFoundError):
        DataNodeClient(fake_node.address, tls=tmp_path / "missing.pem")
    with pytest.raises(TypeError, match="tls"):
        DataNodeClient(fake_node.address, tls=3)


def _keepalive_options(monkeypatch, fake_node, **kwargs):
    """The keepalive-related options DataNodeClient(**kwargs) passes to its channel."""
    seen = []
    real = grpc.insecure_channel

    def spy(target, options=None, *args, **kw):
        seen.append(dict(options))
        return real(target, options, *args, **kw)

    monkeypatch.setattr(grpc, "insecure_channel", spy)
    DataNodeClient([fake_node.address, "127.0.0.1:1"], **kwargs).close()
    assert len(seen) == 2
    assert seen[0] == seen[1]  # every node's channel alike
    return {key: value for key, value in seen[0].items() if "ping" in key or "keepalive" in key}


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {},
            {
                "grpc.keepalive_time_ms": 10_000,
                "grpc.keepalive_timeout_ms": 5_000,
                "grpc.http2.ping_timeout_ms": 5_000,
                "grpc.keepalive_permit_without_calls": 0,
                "grpc.http2.max_pings_without_data": 0,
            },
        ),
        (
            {"keepalive": 2.5},
            {
                "grpc.keepalive_time_ms": 2_500,
                "grpc.keepalive_timeout_ms": 2_500,
                "grpc.http2.ping_timeout_ms": 2_500,
                "grpc.keepalive_permit_without_calls": 0,
                "grpc.http2.max_pings_without_data": 0,
            },
        ),
        ({"keepalive": None}, {}),
        (
            {"keepalive": 1, "options": [("grpc.keepalive_timeout_ms", 700)]},
            {
                "grpc.keepalive_time_ms": 1_000,
                "grpc.keepalive_timeout_ms": 700,
                "grpc.http2.ping_timeout_ms": 1_000,
                "grpc.keepalive_permit_without_calls": 0,
                "grpc.http2.max_pings_without_data": 0,
            },
        ),
    ],
    ids=["default", "short", "off", "options-override"],
)
def test_keepalive_channel_options(monkeypatch, fake_node, kwargs, expected):
    assert _keepalive_options(monkeypatch, fake_node, **kwargs) == expected


@pytest.mark.parametrize(
    ("keepalive", "error"),
    [
        (0, ValueError),
        (0.5, ValueError),
        (-10, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (10**7, ValueError),
        ("10", TypeError),
        (True, TypeError),
    ],
)
def test_bad_keepalive_is_refused(fake_node, keepalive, error):
    with pytest.raises(error, match="keepalive"):
        DataNodeClient(fake_node.address, keepalive=keepalive)


def test_a_stream_with_a_short_keepalive_reads_as_usual(fake_node):
    with DataNodeClient(fake_node.address, keepalive=1) as client:
        batches = list(client.stream("toy", 4, epochs=2))
    assert [len(arrays[0]) for arrays in batches] == [4, 4, 2] * 2


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit])
def test_an_interruption_inside_the_client_block_does_not_wait_for_the_channel(
    fake_node, interruption
):
    # gRPC interrupted while setting up a call can leave its channel's close waiting for ever.
    closing, release = threading.Event(), threading.Event()
    client = DataNodeClient(fake_node.address)
    channel = client._nodes[0].channel
    real_close = channel.close

    def stuck_close():
        closing.set()
        release.wait()
        real_close()

    channel.close = stuck_close
    with pytest.raises(interruption), client:
        raise interruption
    # Back here although the close is stuck: it runs in the background.
    assert closing.wait(timeout=60)
    release.set()
    closer = next(t for t in threading.enumerate() if t.name == "data_client-close")
    closer.join(timeout=60)
    assert not closer.is_alive()

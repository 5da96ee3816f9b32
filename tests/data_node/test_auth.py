"""data_node.auth in-process: token checks, roles, streams per token, the interceptor.

Matrix: TokenChecker x {the right token (str and bytes metadata; scheme in any case; extra
spaces), no entry, two entries, another scheme, no token after the scheme, an unknown
token, a prefix of a known token, non-ASCII} with every message free of what was sent;
ROLE_NEEDED covers every DataNode RPC and check_role x {read, build} x {read, build RPC,
a DataNode RPC missing from the table (needs build), reflection}; StreamsPerToken counts per token, refuses at the limit naming it, frees on
release; AuthInterceptor passes health and unknown methods through untouched, refuses with
a handler of the refused method's kind, wraps StreamBatches only with a per-token limit.
"""

from __future__ import annotations

from typing import NamedTuple

import grpc
import pytest

from data_node.auth import (
    OPEN_PREFIX,
    ROLE_NEEDED,
    AuthInterceptor,
    StreamsPerToken,
    TokenChecker,
    check_role,
)
from data_node.config import BearerToken
from data_node.errors import LimitExceededError, RoleError, TokenError
from data_wire.v1 import data_node_pb2

READ = BearerToken("r3ad-token", "read", "auth.tokens_file line 1")
BUILD = BearerToken("bu1ld-token", "build", "auth.tokens_env entry 1")
SERVICE = data_node_pb2.DESCRIPTOR.services_by_name["DataNode"]


class Details(NamedTuple):
    method: str
    invocation_metadata: tuple


@pytest.fixture
def checker():
    return TokenChecker([READ, BUILD])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Bearer r3ad-token", READ),
        (b"Bearer bu1ld-token", BUILD),
        ("bearer bu1ld-token", BUILD),
        ("BEARER   r3ad-token  ", READ),
    ],
)
def test_known_tokens_are_identified(checker, value, expected):
    assert checker.identify([("other", "x"), ("authorization", value)]) is expected


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([], "Got 0 instead"),
        ([("authorization", "Bearer r3ad-token")] * 2, "Got 2 instead"),
        ([("authorization", "Basic r3ad-token")], "'Bearer <token>'. Got another form"),
        ([("authorization", "Bearer ")], "'Bearer <token>'. Got another form"),
        ([("authorization", "r3ad-token")], "'Bearer <token>'. Got another form"),
        ([("authorization", "Bearer s3cret-guess")], "accepts. Got another one"),
        ([("authorization", "Bearer r3ad-toke")], "accepts. Got another one"),
        ([("authorization", "Bearer r3ad-token-")], "accepts. Got another one"),
        ([("authorization", "Bearer s3cr\u00e9t")], "accepts. Got another one"),
        ([("Authorization-bin", b"Bearer r3ad-token")], "Got 0 instead"),
    ],
)
def test_anything_else_is_a_token_error_that_quotes_nothing(checker, metadata, message):
    with pytest.raises(TokenError, match=message) as caught:
        checker.identify(metadata)
    for secret in ("r3ad", "bu1ld", "s3cr", "Basic"):
        assert secret not in str(caught.value)


def test_every_data_node_rpc_has_a_role():
    assert set(ROLE_NEEDED) == {f"/{SERVICE.full_name}/{m.name}" for m in SERVICE.methods}
    reads = {m.rsplit("/", 1)[1] for m, role in ROLE_NEEDED.items() if role == "read"}
    assert reads == {"ListDatasets", "DescribeDataset", "StreamBatches"}


FUTURE_RPC = f"/{SERVICE.full_name}/FutureRpc"


@pytest.mark.parametrize("method", [*sorted(ROLE_NEEDED), FUTURE_RPC, "/grpc.reflection.X/Info"])
def test_check_role(method):
    check_role(BUILD, method)
    if ROLE_NEEDED.get(method) == "build" or method == FUTURE_RPC:
        name = method.rsplit("/", 1)[1]
        with pytest.raises(RoleError, match=f"^{name}: Expected a token with role 'build'"):
            check_role(READ, method)
    else:
        check_role(READ, method)


def test_streams_are_counted_per_token():
    streams = StreamsPerToken(2)
    for _ in range(2):
        streams.acquire(READ)
    streams.acquire(BUILD)
    with pytest.raises(LimitExceededError, match=r"^max_open_streams_per_token: .* at most 2 "):
        streams.acquire(READ)
    assert (streams.open(READ), streams.open(BUILD)) == (2, 1)
    streams.release(READ)
    streams.acquire(READ)
    for token in (READ, READ, BUILD):
        streams.release(token)
    assert (streams.open(READ), streams.open(BUILD)) == (0, 0)


def behavior(request, context):
    return "served"


HANDLERS = {
    "unary_unary": grpc.unary_unary_rpc_method_handler(behavior),
    "unary_stream": grpc.unary_stream_rpc_method_handler(behavior),
    "stream_unary": grpc.stream_unary_rpc_method_handler(behavior),
    "stream_stream": grpc.stream_stream_rpc_method_handler(behavior),
}


class AbortedError(Exception):
    pass


class Context:
    def abort(self, code, details):
        self.status = (code, details)
        raise AbortedError


def intercept(interceptor, method, handler, metadata=()):
    return interceptor.intercept_service(lambda details: handler, Details(method, metadata))


def test_health_and_unknown_methods_pass_through():
    interceptor = AuthInterceptor([READ], None)
    handler = HANDLERS["unary_unary"]
    assert intercept(interceptor, f"{OPEN_PREFIX}Check", handler) is handler
    assert intercept(interceptor, "/no.Such/Method", None) is None


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_refusals_keep_the_kind_of_the_method(kind):
    interceptor = AuthInterceptor([READ], None)
    refusal = intercept(interceptor, "/data_wire.v1.DataNode/GetJob", HANDLERS[kind])
    assert (refusal.request_streaming, refusal.response_streaming) == (
        kind.startswith("stream"),
        kind.endswith("stream"),
    )
    assert refusal.request_deserializer is None  # the request is never parsed
    context = Context()
    with pytest.raises(AbortedError):
        getattr(refusal, kind)(b"", context)
    assert context.status[0] is grpc.StatusCode.UNAUTHENTICATED


def test_streams_are_wrapped_only_with_a_per_token_limit():
    method = f"/{SERVICE.full_name}/StreamBatches"
    handler = grpc.unary_stream_rpc_method_handler(lambda request, context: iter([1, 2]))
    metadata = [("authorization", "Bearer r3ad-token")]
    assert intercept(AuthInterceptor([READ], None), method, handler, metadata) is handler
    interceptor = AuthInterceptor([READ], 1)
    wrapped = intercept(interceptor, method, handler, metadata)
    first = wrapped.unary_stream(b"", Context())
    assert next(first) == 1
    assert interceptor.streams.open(READ) == 1
    context = Context()
    with pytest.raises(AbortedError):
        next(wrapped.unary_stream(b"", context))
    assert context.status[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_open_streams_per_token" in context.status[1]
    first.close()
    assert interceptor.streams.open(READ) == 0
    assert list(wrapped.unary_stream(b"", Context())) == [1, 2]
    assert interceptor.streams.open(READ) == 0

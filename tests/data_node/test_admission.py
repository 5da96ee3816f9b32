"""data_node.rpc.admission in-process: the interceptor, the call limits and the memory budget.

Matrix: CallLimits x {max_open_calls node-wide, max_open_calls_per_token, max_open_streams,
max_open_streams_per_token} refuse at the limit naming it, count per token apart, free on
release, and apply no per-token limit without [auth]; Admission x {unknown method, unary,
unary-stream, stream-unary, stream-stream, non-blocking (health Watch)}: unknown methods pass,
every handler is served request-streaming (counted before its request is awaited; a unary
request is then read from the iterator, none at all is INVALID_ARGUMENT), refusals keep the
response kind and neither await nor parse the request, every call holds its places from its
start until it ends (returned, its generator closed, or the call's callbacks run) and is
refused over a limit; MemoryBudget reserves, refuses naming max_memory_bytes with the cache
counted, releases.
"""

from __future__ import annotations

from typing import NamedTuple

import grpc
import pytest

from data_node.config import BearerToken, LimitsConfig
from data_node.errors import LimitExceededError
from data_node.rpc.admission import NO_TOKEN, Admission, CallLimits, MemoryBudget
from data_node.rpc.auth import OPEN_PREFIX

READ = BearerToken("r3ad-token", "read", "auth.tokens_file line 1")
BUILD = BearerToken("bu1ld-token", "build", "auth.tokens_env entry 1")
STREAM = "/data_wire.v1.DataNode/StreamBatches"
REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
LIMITS = LimitsConfig(
    max_open_calls=5, max_open_calls_per_token=3, max_open_streams=4, max_open_streams_per_token=2
)


class Details(NamedTuple):
    method: str
    invocation_metadata: tuple


class AbortedError(Exception):
    pass


class Context:
    def __init__(self):
        self.callbacks = []

    def abort(self, code, details):
        self.status = (code, details)
        raise AbortedError

    def add_callback(self, callback):
        self.callbacks.append(callback)
        return True

    def is_active(self):
        return True

    def end(self):
        for callback in self.callbacks:
            callback()


def behavior(request, context):
    return "served"


def two(request, context):
    yield from (1, 2)


HANDLERS = {
    "unary_unary": grpc.unary_unary_rpc_method_handler(behavior),
    "unary_stream": grpc.unary_stream_rpc_method_handler(two),
    "stream_unary": grpc.stream_unary_rpc_method_handler(behavior),
    "stream_stream": grpc.stream_stream_rpc_method_handler(two),
}


def intercept(admission, method, handler, token=None):
    metadata = () if token is None else (("authorization", f"Bearer {token.value}"),)
    return admission.intercept_service(lambda details: handler, Details(method, metadata))


@pytest.mark.parametrize(
    ("method", "who", "limit", "value"),
    [
        (REFLECTION, READ.source, "max_open_calls_per_token", 3),
        (STREAM, READ.source, "max_open_streams_per_token", 2),
    ],
)
def test_calls_are_counted_per_token(method, who, limit, value):
    calls = CallLimits(LIMITS, per_token=True)
    taken = [calls.acquire(method, who) for _ in range(value)]
    with pytest.raises(LimitExceededError, match=rf"^{limit}: one token may hold at most {value} "):
        calls.acquire(method, who)
    other = calls.acquire(method, BUILD.source)  # another token is not held back
    assert (calls.open(limit, who), calls.open(limit, BUILD.source)) == (value, 1)
    calls.release(taken.pop())
    taken.append(calls.acquire(method, who))
    for places in [*taken, other]:
        calls.release(places)
    assert calls.open("max_open_calls") == calls.open(limit, who) == 0


def test_node_wide_limits_hold_whoever_calls():
    calls = CallLimits(LIMITS, per_token=True)
    for who in ("a", "b", "c", "d"):
        calls.acquire(STREAM, who)
    with pytest.raises(LimitExceededError, match=r"^max_open_streams: .* at most 4 streams"):
        calls.acquire(STREAM, "e")
    calls.acquire(REFLECTION, "e")
    with pytest.raises(LimitExceededError, match=r"^max_open_calls: .* at most 5 calls at once"):
        calls.acquire(REFLECTION, "f")
    assert calls.open("max_open_calls") == 5


def test_without_auth_only_node_wide_limits_apply():
    calls = CallLimits(LIMITS, per_token=False)
    for _ in range(4):
        calls.acquire(STREAM, None)
    assert calls.open("max_open_calls_per_token", None) == 0
    assert calls.open("max_open_streams") == 4


def request_streaming(kind):
    return "stream_stream" if kind.endswith("stream") else "stream_unary"


def test_unknown_methods_pass_and_every_call_is_counted():
    admission = Admission(LIMITS, [READ])
    assert intercept(admission, "/no.Such/Method", None) is None
    seen = []

    def answer(request, context):
        seen.append(admission.calls.open("max_open_calls_per_token", READ.source))
        return request.upper()

    handler = grpc.unary_unary_rpc_method_handler(answer)
    wrapped = intercept(admission, "/data_wire.v1.DataNode/ListDatasets", handler, READ)
    # Served request-streaming: gRPC runs it before the request comes, the count first.
    assert wrapped.request_streaming
    assert not wrapped.response_streaming
    assert wrapped.stream_unary(iter([b"ok"]), Context()) == b"OK"
    assert seen == [1]
    assert admission.calls.open("max_open_calls") == 0
    context = Context()
    with pytest.raises(AbortedError):
        wrapped.stream_unary(iter([]), context)
    assert context.status == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "request: Expected one message. Got none instead.",
    )
    assert admission.calls.open("max_open_calls") == 0


def test_health_calls_without_a_token_count_as_one_token():
    admission = Admission(LIMITS, [READ])
    wrapped = intercept(admission, f"{OPEN_PREFIX}Watch", HANDLERS["unary_stream"])
    held = [wrapped.stream_stream(iter([b""]), Context()) for _ in range(3)]
    for call in held:
        next(call)
    context = Context()
    with pytest.raises(AbortedError):
        next(wrapped.stream_stream(iter([b""]), context))
    assert context.status[1].startswith("max_open_calls_per_token: ")
    assert admission.calls.open("max_open_calls_per_token", NO_TOKEN) == 3


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_refusals_neither_await_nor_parse_the_request(kind):
    admission = Admission(LIMITS, [READ])
    refusal = intercept(admission, "/data_wire.v1.DataNode/GetJob", HANDLERS[kind])
    assert refusal.request_streaming  # gRPC runs it at once, not after reading a request
    assert refusal.response_streaming == kind.endswith("stream")
    assert refusal.request_deserializer is None
    context = Context()

    def never():
        raise AssertionError("the refusal read the request")
        yield

    with pytest.raises(AbortedError):
        getattr(refusal, request_streaming(kind))(never(), context)
    assert context.status[0] is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("kind", ["unary_stream", "stream_stream"])
def test_a_long_lived_call_holds_its_places_until_it_ends(kind):
    admission = Admission(LIMITS, [READ])
    wrapped = intercept(admission, REFLECTION, HANDLERS[kind], READ)
    first = wrapped.stream_stream(iter([b""]), Context())
    assert next(first) == 1
    assert admission.calls.open("max_open_calls_per_token", READ.source) == 1
    first.close()  # gRPC closes the generator of a call that ends early
    assert admission.calls.open("max_open_calls_per_token", READ.source) == 0
    assert list(wrapped.stream_stream(iter([b""]), Context())) == [1, 2]
    assert admission.calls.open("max_open_calls") == 0


def test_a_call_over_the_limit_is_refused_naming_it():
    admission = Admission(LIMITS, [READ])
    wrapped = intercept(admission, REFLECTION, HANDLERS["stream_stream"], READ)
    contexts = [Context() for _ in range(3)]
    held = [wrapped.stream_stream(iter([]), context) for context in contexts]
    for call in held:
        next(call)
    context = Context()
    with pytest.raises(AbortedError):
        next(wrapped.stream_stream(iter([]), context))
    assert context.status[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert context.status[1].startswith("max_open_calls_per_token: ")
    contexts[0].end()  # the call ended (cancelled) while its generator was suspended
    assert admission.calls.open("max_open_calls_per_token", READ.source) == 2
    assert next(wrapped.stream_stream(iter([]), Context())) == 1


def test_a_non_blocking_call_stays_non_blocking_and_ends_through_its_callbacks():
    sent = []

    def watch(request, context, send):
        send("SERVING")

    watch.experimental_non_blocking = True
    admission = Admission(LIMITS, [READ])
    handler = grpc.unary_stream_rpc_method_handler(watch)
    wrapped = intercept(admission, f"{OPEN_PREFIX}Watch", handler)
    assert wrapped.stream_stream.experimental_non_blocking
    context = Context()
    wrapped.stream_stream(iter([b""]), context, sent.append)
    assert sent == ["SERVING"]
    assert admission.calls.open("max_open_calls_per_token", NO_TOKEN) == 1
    context.end()
    assert admission.calls.open("max_open_calls_per_token", NO_TOKEN) == 0


def test_the_memory_budget_counts_the_cache_and_refuses_naming_itself():
    budget = MemoryBudget(100, cache_bytes=30)
    budget.reserve(50)
    with pytest.raises(
        LimitExceededError, match=r"^max_memory_bytes: .* at most 100 bytes.* 20 are free"
    ):
        budget.reserve(21)
    budget.reserve(20)
    assert budget.held == 70
    budget.release(50)
    budget.release(20)
    assert budget.held == 0

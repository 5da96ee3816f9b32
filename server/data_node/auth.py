"""Who gets in: a server interceptor checking bearer tokens, roles and streams per token.

Every RPC but the gRPC health service (``/grpc.health.v1.Health/``: load balancers and
``data-node health`` probe it without credentials) needs ``authorization: Bearer <token>``
metadata naming a token of the node's ``[auth]`` config:

* no token, another scheme, or a token the node does not know: UNAUTHENTICATED;
* a "read" token on a job RPC or RegisterDataset / RemoveDataset (``ROLE_NEEDED``): PERMISSION_DENIED naming the role needed;
  a "build" token may call everything;
* server reflection needs a valid token too (any role): it is a service like any other;
* more than ``limits.max_open_streams_per_token`` StreamBatches calls open with one token:
  RESOURCE_EXHAUSTED naming the limit.

The check runs before the request is parsed and before any servicer code, so the servicer
knows nothing of tokens. A token is never logged, put in a status message or kept in a
repr; the node compares SHA-256 digests of tokens with ``hmac.compare_digest``, against
every known token, so neither the time taken nor an early exit tells how close a guess was.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from typing import TYPE_CHECKING, Any, Final, NoReturn

import grpc

from data_node.errors import LimitExceededError, RoleError, TokenError
from data_node.status import status_for
from data_wire.v1 import data_node_pb2

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from data_node.config import BearerToken

__all__ = [
    "OPEN_PREFIX",
    "ROLE_NEEDED",
    "AuthInterceptor",
    "StreamsPerToken",
    "TokenChecker",
    "check_role",
]

logger = logging.getLogger(__name__)

OPEN_PREFIX: Final = "/grpc.health.v1.Health/"
"""Methods under this prefix (the health service) need no token."""

_SERVICE = data_node_pb2.DESCRIPTOR.services_by_name["DataNode"].full_name
ROLE_NEEDED: Final = {
    f"/{_SERVICE}/{method}": role
    for method, role in (
        ("ListDatasets", "read"),
        ("DescribeDataset", "read"),
        ("StreamBatches", "read"),
        ("RegisterDataset", "build"),
        ("RemoveDataset", "build"),
        ("SubmitBuildJob", "build"),
        ("GetJob", "build"),
        ("ListJobs", "build"),
        ("CancelJob", "build"),
        ("WatchJob", "build"),
    )
}
"""The role each DataNode RPC needs (one missing here needs "build"); any other service's
method (reflection) takes any valid token."""

_STREAM_METHOD: Final = f"/{_SERVICE}/StreamBatches"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


class TokenChecker:
    """Finds the configured token a call's metadata carries, in constant time."""

    def __init__(self, tokens: Sequence[BearerToken]) -> None:
        """Keep the digests of ``tokens`` (the node's ``auth.tokens``)."""
        self._known = [(_digest(token.value), token) for token in tokens]

    def identify(self, metadata: Sequence[tuple[str, str | bytes]]) -> BearerToken:
        """The token of a call's ``authorization: Bearer <token>`` metadata.

        Raises:
            TokenError: No such metadata, another form, or a token the node does not know.
        """
        values = [value for key, value in metadata if key == "authorization"]
        if len(values) != 1:
            raise TokenError(
                "Expected one 'authorization: Bearer <token>' metadata entry. "
                f"Got {len(values)} instead."
            )
        value = values[0].decode("latin-1") if isinstance(values[0], bytes) else values[0]
        scheme, _, presented = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise TokenError(
                "Expected the authorization metadata to be 'Bearer <token>'. "
                "Got another form instead (not shown)."
            )
        digest = _digest(presented.strip())
        found = None
        for known, token in self._known:  # no early exit: every call compares every token
            if hmac.compare_digest(known, digest):
                found = token
        if found is None:
            raise TokenError(
                "Expected a bearer token this node accepts. Got another one (not shown)."
            )
        return found


def check_role(token: BearerToken, method: str) -> None:
    """Check that ``token`` may call ``method`` (a full "/service/Method" name).

    Raises:
        RoleError: The method needs the "build" role and the token has "read".
    """
    needed = ROLE_NEEDED.get(method, "build" if method.startswith(f"/{_SERVICE}/") else "read")
    if needed == "build" and token.role != "build":
        name = method.rsplit("/", 1)[-1]
        raise RoleError(
            f"{name}: Expected a token with role 'build'. Got one with role {token.role!r}."
        )


class StreamsPerToken:
    """Counts each token's open streams against ``max_open_streams_per_token``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, token: BearerToken) -> None:
        """Count one more stream of ``token``.

        Raises:
            LimitExceededError: The token already holds ``limit`` streams.
        """
        with self._lock:
            count = self._open.get(token.source, 0)
            if count >= self._limit:
                raise LimitExceededError(
                    f"max_open_streams_per_token: one token may hold at most {self._limit} "
                    "streams at once (each holds workers and memory on a shared node); close "
                    "one, retry later or raise the limit."
                )
            self._open[token.source] = count + 1

    def release(self, token: BearerToken) -> None:
        """Count one stream of ``token`` less."""
        with self._lock:
            count = self._open.pop(token.source) - 1
            if count:
                self._open[token.source] = count

    def open(self, token: BearerToken) -> int:
        """Streams ``token`` holds now."""
        with self._lock:
            return self._open.get(token.source, 0)


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without a valid token or role, and counts streams per token.

    Attributes:
        streams: The per-token stream counts, or None without ``max_open_streams_per_token``.
    """

    def __init__(self, tokens: Sequence[BearerToken], max_streams_per_token: int | None) -> None:
        """Check calls against ``tokens``.

        Args:
            tokens: The accepted tokens (``AuthConfig.tokens``).
            max_streams_per_token: ``limits.max_open_streams_per_token``; None: no such limit.
        """
        self._checker = TokenChecker(tokens)
        self.streams = (
            None if max_streams_per_token is None else StreamsPerToken(max_streams_per_token)
        )

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIX):
            return handler
        try:
            token = self._checker.identify(handler_call_details.invocation_metadata)
            check_role(token, method)
        except (TokenError, RoleError) as error:
            logger.warning("refused %s: %s", method, error)
            return _refusal(handler, status_for(error), str(error))
        if method == _STREAM_METHOD and self.streams is not None:
            return _counted(handler, self.streams, token)
        return handler


def _refusal(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of ``handler``'s kind that aborts with ``code``; the request stays unparsed."""

    def abort(request: Any, context: grpc.ServicerContext) -> NoReturn:
        context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


def _counted(
    handler: grpc.RpcMethodHandler[Any, Any], streams: StreamsPerToken, token: BearerToken
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` (unary-stream) holding one of ``token``'s stream slots while it runs."""
    stream = handler.unary_stream
    assert stream is not None

    def behavior(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            streams.acquire(token)
        except LimitExceededError as error:
            context.abort(status_for(error), str(error))
        try:
            yield from stream(request, context)
        finally:
            streams.release(token)

    return grpc.unary_stream_rpc_method_handler(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )

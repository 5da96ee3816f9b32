"""Who gets in and what they may hold: the node's one admission interceptor, and its memory budget.

Every call passes :class:`Admission` before any servicer code and before its request is
parsed:

* with ``[auth]``, every RPC but the health service needs a valid bearer token of the right
  role (data_node.rpc.auth); a refused call gets UNAUTHENTICATED or PERMISSION_DENIED;
* every call holds a place counted against the limits below from its start until it ends:
  long-lived ones (StreamBatches, WatchJob, health Watch, server reflection) and unary
  ones, which are counted before their request is awaited (a client that never sends its
  request holds its place, not an uncounted thread); one over a limit gets
  RESOURCE_EXHAUSTED naming the limit, before it runs:

  - ``limits.max_open_calls``: calls of the whole node;
  - ``limits.max_open_calls_per_token``: calls of one token (with ``[auth]``; calls
    without a token, to the health service, count as one more token);
  - ``limits.max_open_streams``: StreamBatches calls of the whole node;
  - ``limits.max_open_streams_per_token``: StreamBatches calls of one token (optional).

The RPC pool has ``max_open_calls`` threads plus spare ones that refuse calls over a limit
at once (data_node.server), so a token holding every call it may hold leaves the other
tokens their calls. Without ``[auth]`` nothing tells clients apart: only the node-wide
limits apply, and a call over them is refused at once rather than left waiting.

:class:`MemoryBudget` bounds what the node's streams and cache hold together
(``limits.max_memory_bytes``): a stream reserves its worst case (``StreamPlan.memory_bytes``)
before it starts, and one that does not fit gets RESOURCE_EXHAUSTED naming the budget.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import TYPE_CHECKING, Any, Final, NoReturn

import grpc

from data_node.errors import LimitExceededError, RoleError, TokenError
from data_node.rpc.auth import OPEN_PREFIX, TokenChecker, check_role
from data_node.rpc.status import status_for
from data_wire.methods import METHODS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from data_node.config import BearerToken, LimitsConfig

__all__ = ["NO_TOKEN", "Admission", "CallLimits", "MemoryBudget"]

logger = logging.getLogger(__name__)

NO_TOKEN: Final = "no token"
"""Whom calls without a token (health) are counted as, with ``[auth]``."""

_STREAM_METHOD: Final = METHODS["StreamBatches"].path


class CallLimits:
    """Counts open calls, node-wide and per token, against the configured limits.

    Attributes:
        limits: The limits counted against.
    """

    def __init__(self, limits: LimitsConfig, *, per_token: bool) -> None:
        """Count against ``limits``; the per-token limits apply only if ``per_token``."""
        self.limits = limits
        self._per_token = per_token
        self._open: collections.Counter[tuple[str, str | None]] = collections.Counter()
        self._lock = threading.Lock()

    def acquire(self, method: str, who: str | None) -> list[tuple[str, str | None]]:
        """Count one more call of ``method`` by ``who`` (a token's source, or None).

        Returns:
            The places taken; give them back with :meth:`release`.

        Raises:
            LimitExceededError: A limit is reached; the message names it.
        """
        places = self._places(method, who)
        with self._lock:
            for name, key in places:
                limit = getattr(self.limits, name)
                if self._open[name, key] >= limit:
                    raise LimitExceededError(_MESSAGES[name].format(limit=limit))
            self._open.update(places)
        return places

    def release(self, places: list[tuple[str, str | None]]) -> None:
        """Give back the places of one call."""
        with self._lock:
            self._open.subtract(places)
            for place in places:
                if self._open[place] <= 0:
                    del self._open[place]

    def open(self, limit: str, who: str | None = None) -> int:
        """Calls counted now against ``limit`` (e.g. "max_open_calls_per_token") for ``who``."""
        with self._lock:
            return self._open[limit, who]

    def _places(self, method: str, who: str | None) -> list[tuple[str, str | None]]:
        places: list[tuple[str, str | None]] = [("max_open_calls", None)]
        per_token = self._per_token and who is not None
        if per_token:
            places.append(("max_open_calls_per_token", who))
        if method == _STREAM_METHOD:
            places.append(("max_open_streams", None))
            if per_token and self.limits.max_open_streams_per_token is not None:
                places.append(("max_open_streams_per_token", who))
        return places


_MESSAGES: Final = {
    "max_open_calls": (
        "max_open_calls: the node serves at most {limit} calls at once (streams, watches, "
        "reflection, unary calls until answered: each holds an RPC thread); close one, retry "
        "later or raise the limit."
    ),
    "max_open_calls_per_token": (
        "max_open_calls_per_token: one token may hold at most {limit} calls at once "
        "(streams, watches, reflection, unary calls until answered), so that it cannot take "
        "the node's threads from the others; close one, retry later or raise the limit."
    ),
    "max_open_streams": (
        "max_open_streams: the node serves at most {limit} streams at once (each holds "
        "workers and memory); retry later or raise the limit."
    ),
    "max_open_streams_per_token": (
        "max_open_streams_per_token: one token may hold at most {limit} streams at once "
        "(each holds workers and memory on a shared node); close one, retry later or raise "
        "the limit."
    ),
}


class Admission(grpc.ServerInterceptor):
    """Refuses calls without a valid token or role, and counts every call while it is open.

    Attributes:
        calls: The open calls, node-wide and per token.
    """

    def __init__(self, limits: LimitsConfig, tokens: Sequence[BearerToken] | None = None) -> None:
        """Admit calls within ``limits``.

        Args:
            limits: The node's limits (``max_open_calls``, ``max_open_streams`` and their
                per-token forms).
            tokens: The accepted bearer tokens (``AuthConfig.tokens``); None: no ``[auth]``,
                every caller is let in and only the node-wide limits apply.
        """
        self._checker = None if tokens is None else TokenChecker(tokens)
        self.calls = CallLimits(limits, per_token=tokens is not None)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        who = None
        if self._checker is not None:
            who = NO_TOKEN
            if not method.startswith(OPEN_PREFIX):
                try:
                    token = self._checker.identify(handler_call_details.invocation_metadata)
                    check_role(token, method)
                except (TokenError, RoleError) as error:
                    logger.warning("refused %s: %s", method, error)
                    return _refusal(handler, status_for(error), str(error))
                who = token.source
        return _counted(handler, self.calls, method, who)


def _refusal(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler aborting with ``code`` at once: the request is neither awaited nor parsed."""

    def abort(request_iterator: Any, context: grpc.ServicerContext) -> NoReturn:
        context.abort(code, message)

    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    return grpc.stream_unary_rpc_method_handler(abort)


def _counted(
    handler: grpc.RpcMethodHandler[Any, Any], calls: CallLimits, method: str, who: str | None
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` holding its places in ``calls`` from its start until the call ends.

    Every handler is served as request-streaming: gRPC then runs it as soon as the call
    arrives, where for a unary request it would first wait for the request on a pool
    thread, before any check, for as long as a client cares not to send it. Here the call
    is counted first, then its request read.
    """
    inner: Callable[..., Any] = (
        handler.unary_unary  # type: ignore[assignment]
        or handler.unary_stream
        or handler.stream_unary
        or handler.stream_stream
    )
    unary_request = not handler.request_streaming

    def admit(context: grpc.ServicerContext) -> Callable[[], None]:
        """Take the call's places (or abort); return the idempotent release."""
        try:
            places = calls.acquire(method, who)
        except LimitExceededError as error:
            logger.warning("refused %s: %s", method, error)
            context.abort(status_for(error), str(error))
        lock = threading.Lock()
        held = [places]

        def release() -> None:
            with lock:
                taken, held[:] = held[:], []
            for each in taken:
                calls.release(each)

        # The call may end while its behavior is blocked (cancelled, deadline): release then.
        if not context.add_callback(release):
            release()
        return release

    def request_of(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        """What ``inner`` takes: the request iterator, or a unary request's one message."""
        if not unary_request:
            return requests
        try:
            request = next(requests, None)
        except grpc.RpcError:
            context.abort(grpc.StatusCode.CANCELLED, "The call ended before its request came.")
        if request is None:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "request: Expected one message. Got none instead."
            )
        return request

    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if getattr(inner, "experimental_non_blocking", False):
        # Served without holding a thread once answered (health Watch): the call ends
        # through its callbacks.
        def non_blocking(requests: Iterator[Any], context: grpc.ServicerContext, send: Any) -> Any:
            admit(context)
            return inner(request_of(requests, context), context, send)

        non_blocking.experimental_non_blocking = True  # type: ignore[attr-defined]
        non_blocking.experimental_thread_pool = getattr(  # type: ignore[attr-defined]
            inner, "experimental_thread_pool", None
        )
        return grpc.stream_stream_rpc_method_handler(non_blocking, **serializers)

    if handler.response_streaming:

        def streaming(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            release = admit(context)
            try:
                yield from inner(request_of(requests, context), context)
            finally:
                release()

        return grpc.stream_stream_rpc_method_handler(streaming, **serializers)

    def unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        release = admit(context)
        try:
            return inner(request_of(requests, context), context)
        finally:
            release()

    return grpc.stream_unary_rpc_method_handler(unary, **serializers)


class MemoryBudget:
    """Bytes the node's streams may hold together: ``limits.max_memory_bytes`` less the cache."""

    def __init__(self, max_bytes: int, cache_bytes: int) -> None:
        """A budget of ``max_bytes`` of which the cache's ``cache_bytes`` are taken for good."""
        self._max_bytes = max_bytes
        self._cache_bytes = cache_bytes
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Bytes reserved by open streams now."""
        with self._lock:
            return self._held

    def reserve(self, nbytes: int) -> None:
        """Reserve ``nbytes`` for a stream; give them back with :meth:`release`.

        Raises:
            LimitExceededError: They do not fit; the message names ``max_memory_bytes``.
        """
        with self._lock:
            free = self._max_bytes - self._cache_bytes - self._held
            if nbytes > free:
                raise LimitExceededError(
                    f"max_memory_bytes: the node's streams and cache hold at most "
                    f"{self._max_bytes} bytes; this stream may hold {nbytes} (its batches in "
                    f"flight) and {free} are free ({self._held} held by open streams, "
                    f"{self._cache_bytes} by the cache). Retry later, ask for a smaller "
                    "batch_size, or raise the limit."
                )
            self._held += nbytes

    def release(self, nbytes: int) -> None:
        """Give back ``nbytes`` a stream reserved."""
        with self._lock:
            self._held -= nbytes

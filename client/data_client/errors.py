"""Typed errors of the data client: one class per useful gRPC status code."""

from __future__ import annotations

from typing import Final

import grpc

__all__ = [
    "AlreadyExistsError",
    "DataNodeError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "failure_cause",
    "translate_rpc_error",
]


class DataNodeError(RuntimeError):
    """A data node call failed with a gRPC status; the base of every error the client raises.

    Attributes:
        code: The gRPC status code of the failed call.
        details: The node's message (it names the offending request field), or "" if none.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class NotFoundError(DataNodeError, LookupError):
    """NOT_FOUND: the node does not serve the named dataset."""


class AlreadyExistsError(DataNodeError, FileExistsError):
    """ALREADY_EXISTS: the node already serves a dataset of that name."""


class InvalidArgumentError(DataNodeError, ValueError):
    """INVALID_ARGUMENT: a request field is invalid; the details name it."""


class OutOfRangeError(DataNodeError, IndexError):
    """OUT_OF_RANGE: an index or position lies outside what the node serves."""


class ResourceExhaustedError(DataNodeError):
    """RESOURCE_EXHAUSTED: a node limit (streams, workers, message size) was reached."""


class PermissionDeniedError(DataNodeError, PermissionError):
    """PERMISSION_DENIED: the caller may not do this."""


class UnauthenticatedError(DataNodeError, PermissionError):
    """UNAUTHENTICATED: the bearer token is missing or wrong."""


class UnavailableError(DataNodeError, ConnectionError):
    """UNAVAILABLE: the node cannot be reached (for a stream: after every reconnect attempt)."""


class DeadlineExceededError(DataNodeError, TimeoutError):
    """DEADLINE_EXCEEDED: the call did not finish within its timeout."""


class FailedPreconditionError(DataNodeError):
    """FAILED_PRECONDITION: the node is not in a state to serve the request."""


class UnimplementedError(DataNodeError, NotImplementedError):
    """UNIMPLEMENTED: the node does not offer this RPC (an older or different server)."""


class InternalError(DataNodeError):
    """INTERNAL: the node (or decoding its answer) failed unexpectedly."""


_ERROR_BY_CODE: dict[grpc.StatusCode, type[DataNodeError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def translate_rpc_error(error: grpc.RpcError, *, note: str = "") -> DataNodeError:
    """Return the typed error for a failed call (the caller raises it).

    Args:
        error: The ``grpc.RpcError`` raised by a call (it is also the call, with ``code()`` and
            ``details()``; a bare RpcError without them reads as UNKNOWN).
        note: Text appended to the details, e.g. how many reconnects were tried. Default "".

    Returns:
        An instance of the subclass registered for the status code, or of ``DataNodeError``
        itself for any other code.
    """
    code_of = getattr(error, "code", None)
    details_of = getattr(error, "details", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details = (details_of() if callable(details_of) else None) or ""
    if note:
        details = f"{details} ({note})" if details else note
    return _ERROR_BY_CODE.get(code, DataNodeError)(code, details)


_CAUSES: Final = (
    ("connection refused", "connection refused: is a node listening at that address?"),
    (
        "handshake failed",
        (
            "TLS handshake failed: the node serves plaintext, or its certificate does not "
            "chain to the CA given"
        ),
    ),
    (
        "socket closed",
        "the node closed the connection: it may require TLS, or a client certificate",
    ),
    ("resolving", "the address does not resolve"),
)


def failure_cause(code: grpc.StatusCode, details: str) -> str:
    """The likely cause of a failed call in a few words, or "" when the details say it all.

    UNAVAILABLE hides its cause in gRPC's details (a refused connection, a TLS handshake
    that failed, a node closing a plaintext connection); this names it.
    """
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return "unauthenticated: the node needs a bearer token it accepts"
    if code is grpc.StatusCode.UNAVAILABLE:
        lowered = details.lower()
        for marker, cause in _CAUSES:
            if marker in lowered:
                return cause
    return ""

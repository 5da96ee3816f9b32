"""The one table from exception types to gRPC status codes.

The servicer catches every exception at the edge of an RPC, looks its type up here and
aborts the call with the code and the exception's message: no traceback ever reaches the
wire. Order matters: the first matching class wins, so subclasses come before bases.
"""

from __future__ import annotations

import grpc

from data_node.errors import (
    ConfigError,
    CursorAtEndError,
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetRemovedError,
    JobNotFoundError,
    LimitExceededError,
    NodeStoppingError,
    PathOutsideRootError,
    RequestError,
    RoleError,
    StreamFailedError,
    TokenError,
)
from data_tools.errors import (
    ConfinementError,
    DataLossError,
    SourceChangedError,
    UnsupportedIndexError,
    ViewIndexError,
    WorkerError,
)

__all__ = ["STATUS_TABLE", "status_for"]

STATUS_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (DatasetNotFoundError, grpc.StatusCode.NOT_FOUND),
    (DatasetExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (DatasetRemovedError, grpc.StatusCode.FAILED_PRECONDITION),
    (JobNotFoundError, grpc.StatusCode.NOT_FOUND),
    (TokenError, grpc.StatusCode.UNAUTHENTICATED),
    (RoleError, grpc.StatusCode.PERMISSION_DENIED),
    (PathOutsideRootError, grpc.StatusCode.PERMISSION_DENIED),
    (ConfinementError, grpc.StatusCode.PERMISSION_DENIED),
    (LimitExceededError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NodeStoppingError, grpc.StatusCode.UNAVAILABLE),
    (CursorAtEndError, grpc.StatusCode.OUT_OF_RANGE),
    (RequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (ViewIndexError, grpc.StatusCode.OUT_OF_RANGE),
    (UnsupportedIndexError, grpc.StatusCode.INVALID_ARGUMENT),
    (WorkerError, grpc.StatusCode.INTERNAL),
    (StreamFailedError, grpc.StatusCode.INTERNAL),
    (DataLossError, grpc.StatusCode.DATA_LOSS),
    (SourceChangedError, grpc.StatusCode.FAILED_PRECONDITION),
    (FileNotFoundError, grpc.StatusCode.FAILED_PRECONDITION),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (TypeError, grpc.StatusCode.INVALID_ARGUMENT),
    (MemoryError, grpc.StatusCode.RESOURCE_EXHAUSTED),
)


def status_for(error: BaseException) -> grpc.StatusCode:
    """The status code for ``error``: the first table entry it is an instance of, else INTERNAL."""
    for error_type, code in STATUS_TABLE:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL

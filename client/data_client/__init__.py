"""Trainer-side client of a data node: datasets, descriptions and resumable batch streams."""

from __future__ import annotations

from data_client.client import (
    ArrayInfo,
    BatchStream,
    DataNodeClient,
    DatasetInfo,
    TlsOption,
)
from data_client.errors import (
    DataNodeError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from data_wire.v1.tensor_pb2 import Cursor

__all__ = [
    "ArrayInfo",
    "BatchStream",
    "Cursor",
    "DataNodeClient",
    "DataNodeError",
    "DatasetInfo",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "TlsOption",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
]

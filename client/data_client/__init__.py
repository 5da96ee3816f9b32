"""Trainer-side client of data nodes: datasets, resumable batch streams and build jobs."""

from __future__ import annotations

from data_client.client import (
    SEED_LIMIT,
    ArrayInfo,
    ArrayInput,
    ArraySources,
    BatchStream,
    CaseSelection,
    DataNodeClient,
    DatasetInfo,
    TlsConfig,
    TlsOption,
)
from data_client.errors import (
    AlreadyExistsError,
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
from data_client.jobs import (
    BuildJob,
    CaseInput,
    CaseProgress,
    ClassProgress,
    DatasetArray,
    FileArray,
    JobInfo,
    JobState,
)
from data_client.merge import MultiNodeStream
from data_client.nodes import resolve_nodes
from data_client.preview import Preview
from data_wire.v1.tensor_pb2 import Cursor

__all__ = [
    "SEED_LIMIT",
    "AlreadyExistsError",
    "ArrayInfo",
    "ArrayInput",
    "ArraySources",
    "BatchStream",
    "BuildJob",
    "CaseInput",
    "CaseProgress",
    "CaseSelection",
    "ClassProgress",
    "Cursor",
    "DataNodeClient",
    "DataNodeError",
    "DatasetArray",
    "DatasetInfo",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FileArray",
    "InternalError",
    "InvalidArgumentError",
    "JobInfo",
    "JobState",
    "MultiNodeStream",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "Preview",
    "ResourceExhaustedError",
    "TlsConfig",
    "TlsOption",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "resolve_nodes",
]

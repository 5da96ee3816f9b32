"""The exception hierarchy of the data node (mapped to gRPC status codes in rpc/status.py)."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CursorAtEndError",
    "DataNodeError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "DatasetRemovedError",
    "JobNotFoundError",
    "LimitExceededError",
    "NodeStoppingError",
    "PathOutsideRootError",
    "RequestError",
    "RoleError",
    "StreamFailedError",
    "TokenError",
]


class DataNodeError(Exception):
    """Base class of every error the node raises on purpose."""


class ConfigError(DataNodeError, ValueError):
    """The node's configuration is invalid; the message names the key."""


class PathOutsideRootError(DataNodeError, PermissionError):
    """A path resolves (symlinks included) outside the root it must stay in."""


class DatasetNotFoundError(DataNodeError, LookupError):
    """A request names a dataset the node does not serve."""


class DatasetExistsError(DataNodeError, FileExistsError):
    """A registration names a dataset the node serves already (and may not replace)."""


class DatasetRemovedError(DataNodeError, RuntimeError):
    """The dataset a call needs was removed or replaced (or cannot be removed at run time)."""


class JobNotFoundError(DataNodeError, LookupError):
    """A request names a job the node has no record of."""


class RequestError(DataNodeError, ValueError):
    """A request field is invalid; the message names the field."""


class CursorAtEndError(DataNodeError, IndexError):
    """A stream is asked to resume from a cursor at the end of its requested epochs."""


class LimitExceededError(DataNodeError, RuntimeError):
    """A request would exceed one of the node's limits; the message names the limit."""


class NodeStoppingError(DataNodeError, ConnectionError):
    """The node is stopping and cannot take or keep serving this call; retry once it is back."""


class TokenError(DataNodeError, PermissionError):
    """A call carries no bearer token, or one the node does not accept; never quotes it."""


class RoleError(DataNodeError, PermissionError):
    """A call's token is valid but its role does not allow the RPC; names the role needed."""


class StreamFailedError(DataNodeError, RuntimeError):
    """A stream failed after its request was accepted: the node's fault, not the client's."""

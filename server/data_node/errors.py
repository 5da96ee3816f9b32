"""The exception hierarchy of the data node (mapped to gRPC status codes in rpc/status.py)."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CursorAtEndError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "DatasetRemovedError",
    "JobNotFoundError",
    "LimitExceededError",
    "NodeError",
    "NodeStoppingError",
    "PathOutsideRootError",
    "RequestError",
    "RoleError",
    "StreamFailedError",
    "TokenError",
]


class NodeError(Exception):
    """Base class of every error the node raises on purpose.

    Not ``DataNodeError``: that is the client's (``data_client.DataNodeError``), for a failed call.
    """


class ConfigError(NodeError, ValueError):
    """The node's configuration is invalid; the message names the key."""


class PathOutsideRootError(NodeError, PermissionError):
    """A path resolves (symlinks included) outside the root it must stay in."""


class DatasetNotFoundError(NodeError, LookupError):
    """A request names a dataset the node does not serve."""


class DatasetExistsError(NodeError, FileExistsError):
    """A registration names a dataset the node serves already (and may not replace)."""


class DatasetRemovedError(NodeError, RuntimeError):
    """The dataset a call needs was removed or replaced (or cannot be removed at run time)."""


class JobNotFoundError(NodeError, LookupError):
    """A request names a job the node has no record of."""


class RequestError(NodeError, ValueError):
    """A request field is invalid; the message names the field."""


class CursorAtEndError(NodeError, IndexError):
    """A stream is asked to resume from a cursor at the end of its requested epochs."""


class LimitExceededError(NodeError, RuntimeError):
    """A request would exceed one of the node's limits; the message names the limit."""


class NodeStoppingError(NodeError, ConnectionError):
    """The node is stopping and cannot take or keep serving this call; retry once it is back."""


class TokenError(NodeError, PermissionError):
    """A call carries no bearer token, or one the node does not accept; never quotes it."""


class RoleError(NodeError, PermissionError):
    """A call's token is valid but its role does not allow the RPC; names the role needed."""


class StreamFailedError(NodeError, RuntimeError):
    """A stream failed after its request was accepted: the node's fault, not the client's."""

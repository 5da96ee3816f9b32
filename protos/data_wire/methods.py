"""The DataNode service's methods, read from its proto descriptor: the one method table.

Hand-written (the rest of data_wire is generated). The node builds its handlers and its
role table from :data:`METHODS`, the client its calls, so a method added to
``data_node.proto`` (with its ``(data_wire.v1.role)`` option) reaches all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from google.protobuf import message_factory

from data_wire.v1 import data_node_pb2

if TYPE_CHECKING:
    from collections.abc import Mapping

    from google.protobuf.descriptor import MethodDescriptor
    from google.protobuf.message import Message

__all__ = ["METHODS", "SERVICE_NAME", "Method"]

_SERVICE = data_node_pb2.DESCRIPTOR.services_by_name["DataNode"]

SERVICE_NAME: Final = _SERVICE.full_name
"""The service's full name, "data_wire.v1.DataNode"."""


@dataclass(frozen=True)
class Method:
    """One RPC of the DataNode service.

    Attributes:
        name: The RPC's name, e.g. "StreamBatches".
        path: Its full gRPC method name, "/data_wire.v1.DataNode/StreamBatches".
        request_type: The request message class.
        response_type: The response message class.
        response_streaming: The RPC answers with a stream of responses.
        role: The role a bearer token needs to call it on a node with ``[auth]``: "read"
            or "build" (the proto's ``role`` option; unset: "build").
    """

    name: str
    path: str
    request_type: type[Message]
    response_type: type[Message]
    response_streaming: bool
    role: str


def _role(method: MethodDescriptor) -> str:
    # The generated stub types the extension as a plain FieldDescriptor.
    extension: Any = data_node_pb2.role
    return (
        "read" if method.GetOptions().Extensions[extension] == data_node_pb2.ROLE_READ else "build"
    )


def _method(method: MethodDescriptor) -> Method:
    return Method(
        name=method.name,
        path=f"/{SERVICE_NAME}/{method.name}",
        request_type=message_factory.GetMessageClass(method.input_type),
        response_type=message_factory.GetMessageClass(method.output_type),
        response_streaming=method.server_streaming,
        role=_role(method),
    )


METHODS: Final[Mapping[str, Method]] = MappingProxyType(
    {method.name: _method(method) for method in _SERVICE.methods}
)
"""Every DataNode RPC by name, in the order the proto declares them."""

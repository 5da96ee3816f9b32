"""Server reflection in both versions: ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-reflection serves only v1alpha, while newer tools (grpcurl, Postman, grpc-java's
ProtoReflectionService) ask for v1 first. The two protocols are the same messages with the
same field numbers under another package name, so one servicer answers both: v1 requests
are read as v1alpha messages and the answers written back unchanged. The v1 file itself
(``grpc/reflection/v1/reflection.proto``) is the v1alpha one renamed, added to the
descriptor pool so that a client can resolve the v1 service through reflection too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["SERVICE_NAMES", "enable_reflection"]

_ALPHA: Final = "grpc.reflection.v1alpha"
_V1: Final = "grpc.reflection.v1"
SERVICE_NAMES: Final = (f"{_V1}.ServerReflection", reflection.SERVICE_NAME)
"""The reflection services a node serves (v1 first, as clients try it first)."""


def enable_reflection(server: grpc.Server, service_names: Iterable[str]) -> None:
    """Serve both reflection versions on ``server``, listing ``service_names`` and themselves."""
    _add_v1_file()
    servicer = reflection.ReflectionServicer((*service_names, *SERVICE_NAMES))
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    handlers = {"ServerReflectionInfo": handler}
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(name, handlers) for name in SERVICE_NAMES]
    )


def _add_v1_file() -> None:
    """Add ``grpc/reflection/v1/reflection.proto`` to the default pool (once per process)."""
    pool = descriptor_pool.Default()
    alpha = reflection_pb2.DESCRIPTOR
    v1_name = alpha.name.replace("v1alpha", "v1")
    try:
        pool.FindFileByName(v1_name)
    except KeyError:
        pass
    else:
        return
    renamed = descriptor_pb2.FileDescriptorProto()
    alpha.CopyToProto(renamed)
    # Package, file name and every fully qualified type name (".grpc.reflection.v1alpha.X").
    renamed.name = v1_name
    renamed.package = _V1
    renamed.options.Clear()
    for message in renamed.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(f".{_ALPHA}.", f".{_V1}.")
    for service in renamed.service:
        for method in service.method:
            method.input_type = method.input_type.replace(f".{_ALPHA}.", f".{_V1}.")
            method.output_type = method.output_type.replace(f".{_ALPHA}.", f".{_V1}.")
    pool.AddSerializedFile(renamed.SerializeToString())

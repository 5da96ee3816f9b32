"""data_wire's hand-written contract: the method table read from the DataNode service's
descriptor, the defaults node and client share, and the field numbers of the wire.

Matrix: every RPC of data_node.proto x (path, request and response classes, streaming,
role); the node's handlers and the client's calls are built from this table; the default
address and message size as the node's config and the client use them; every field and enum
value of the protos x (number, type) against wire_fields.txt; the seed bound.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

import data_client
import data_tools.io
from data_client import DataNodeClient
from data_client._node import Node
from data_client._requests import CODECS
from data_node.config import LimitsConfig, NodeConfig, load
from data_node.rpc.servicer import method_handlers
from data_wire.defaults import DEFAULT_ADDRESS, DEFAULT_MAX_MESSAGE_BYTES
from data_wire.methods import METHODS, SERVICE_NAME
from data_wire.v1 import data_node_pb2, jobs_pb2, tensor_pb2

PROTOS = Path(data_node_pb2.__file__).parent
SERVICE = data_node_pb2.DESCRIPTOR.services_by_name["DataNode"]
EXPECTED = {
    # name: (request, response, response_streaming, role)
    "ListDatasets": (
        data_node_pb2.ListDatasetsRequest,
        data_node_pb2.ListDatasetsResponse,
        False,
        "read",
    ),
    "DescribeDataset": (
        data_node_pb2.DescribeDatasetRequest,
        data_node_pb2.DatasetDescription,
        False,
        "read",
    ),
    "StreamBatches": (data_node_pb2.StreamRequest, tensor_pb2.Batch, True, "read"),
    "SubmitBuildJob": (jobs_pb2.SubmitBuildJobRequest, jobs_pb2.Job, False, "build"),
    "GetJob": (jobs_pb2.GetJobRequest, jobs_pb2.Job, False, "build"),
    "ListJobs": (jobs_pb2.ListJobsRequest, jobs_pb2.ListJobsResponse, False, "build"),
    "CancelJob": (jobs_pb2.CancelJobRequest, jobs_pb2.Job, False, "build"),
    "WatchJob": (jobs_pb2.WatchJobRequest, jobs_pb2.Job, True, "build"),
    "RegisterDataset": (
        data_node_pb2.RegisterDatasetRequest,
        data_node_pb2.DatasetDescription,
        False,
        "build",
    ),
    "RemoveDataset": (
        data_node_pb2.RemoveDatasetRequest,
        data_node_pb2.RemoveDatasetResponse,
        False,
        "build",
    ),
}


def test_the_table_lists_every_rpc_of_the_service_in_proto_order():
    assert SERVICE_NAME == "data_wire.v1.DataNode"
    assert list(METHODS) == [method.name for method in SERVICE.methods]
    assert set(METHODS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_method_carries_its_generated_classes_streaming_and_role(name):
    request, response, streaming, role = EXPECTED[name]
    method = METHODS[name]
    assert method.name == name
    assert method.path == f"/data_wire.v1.DataNode/{name}"
    # The very classes the generated modules define: messages parse and compare as usual.
    assert method.request_type is request
    assert method.response_type is response
    assert method.response_streaming is streaming
    assert method.role == role


def test_the_role_option_is_set_on_every_rpc():
    for method in SERVICE.methods:
        assert method.GetOptions().Extensions[data_node_pb2.role] in (
            data_node_pb2.ROLE_READ,
            data_node_pb2.ROLE_BUILD,
        ), method.name


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method):
        self.method = method
        self.invocation_metadata = ()


def test_the_node_serves_every_method_of_the_table_and_nothing_else():
    class Servicer:
        def __getattr__(self, name):
            return lambda request, context: (name, request)

    handlers = method_handlers(Servicer())
    for name, method in METHODS.items():
        handler = handlers.service(_Details(method.path))
        assert handler is not None, name
        assert handler.response_streaming is method.response_streaming
        behavior = handler.unary_stream if method.response_streaming else handler.unary_unary
        raw = method.request_type().SerializeToString()
        assert behavior(raw, None) == (name, method.request_type())
        # StreamBatches sends Batches encoded already; every other response is serialized.
        assert (handler.response_serializer is None) is (name == "StreamBatches")
    assert handlers.service(_Details("/data_wire.v1.DataNode/FutureRpc")) is None


def test_the_client_has_a_call_per_method_of_the_table():
    channel = grpc.insecure_channel("127.0.0.1:1")
    try:
        node = Node("127.0.0.1:1", channel, (), None)
        assert set(node.calls) == set(METHODS)
        for name, method in METHODS.items():
            kind = (
                grpc.UnaryStreamMultiCallable
                if method.response_streaming
                else grpc.UnaryUnaryMultiCallable
            )
            assert isinstance(node.calls[name], kind), name
    finally:
        channel.close()


def test_node_and_client_share_the_default_address_and_message_size():
    assert DEFAULT_ADDRESS == "127.0.0.1:50051"
    assert DEFAULT_MAX_MESSAGE_BYTES == 512 * 1024 * 1024
    assert NodeConfig.__dataclass_fields__["listen"].default == DEFAULT_ADDRESS
    assert LimitsConfig().max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES
    client_default = inspect.signature(DataNodeClient).parameters["max_message_bytes"].default
    assert client_default == DEFAULT_MAX_MESSAGE_BYTES


def test_a_config_without_listen_listens_on_the_default_address(tmp_path):
    config = tmp_path / "node.toml"
    (tmp_path / "data").mkdir()
    config.write_text(
        f'[node]\ndata_root = "{tmp_path / "data"}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'output_root = "{tmp_path / "out"}"\n'
    )
    assert load(config).listen == DEFAULT_ADDRESS


def test_the_client_names_every_codec_of_the_proto():
    assert CODECS == {
        "none": tensor_pb2.CODEC_NONE,
        "lz4": tensor_pb2.CODEC_LZ4,
        "zstd": tensor_pb2.CODEC_ZSTD,
    }
    assert set(CODECS.values()) == set(tensor_pb2.Codec.values()) - {tensor_pb2.CODEC_UNSPECIFIED}


# The wire's field numbers, pinned: wire_fields.txt lists every field and enum value the
# protos ever had, as "message field number type". A field may be added (append its line,
# with a number never used in that message), never renumbered nor retyped; a renamed field
# keeps its number (edit the name in its line); a removed one keeps its line and must be
# `reserved` (number and name) in the .proto, so that the number is never reused.
WIRE_FIELDS = Path(__file__).with_name("wire_fields.txt")
_TYPES = {
    number: name.removeprefix("TYPE_").lower()
    for name, number in descriptor_pb2.FieldDescriptorProto.Type.items()
}
_Row = tuple[str, str, int, str]


def _message_rows(owner: str, message: Any) -> Iterator[_Row]:
    """The rows of a DescriptorProto, its nested messages and enums (map entries aside)."""
    name = f"{owner}.{message.name}"
    for field in message.field:
        kind = field.type_name.removeprefix(".") or _TYPES[field.type]
        if field.label == field.LABEL_REPEATED:
            kind = f"repeated {kind}"
        elif field.proto3_optional:
            kind = f"optional {kind}"
        elif field.HasField("oneof_index"):
            kind = f"{kind} oneof {message.oneof_decl[field.oneof_index].name}"
        yield name, field.name, field.number, kind
    for enum in message.enum_type:
        yield from _enum_rows(name, enum)
    for nested in message.nested_type:
        if not nested.options.map_entry:
            yield from _message_rows(name, nested)


def _enum_rows(owner: str, enum: Any) -> Iterator[_Row]:
    for value in enum.value:
        yield f"{owner}.{enum.name}", value.name, value.number, "enum value"


def wire_fields() -> set[_Row]:
    """(message or enum, field or value, number, type) of every proto of data_wire.v1."""
    found: set[_Row] = set()
    for module in (data_node_pb2, jobs_pb2, tensor_pb2):
        file = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(file)
        for message in file.message_type:
            found.update(_message_rows(file.package, message))
        for enum in file.enum_type:
            found.update(_enum_rows(file.package, enum))
    return found


def reserved(full_name: str, pool: Any = None) -> tuple[set[int], set[str]]:
    """The numbers and names ``full_name`` (a message or an enum) reserves in ``pool``
    (default: the pool the generated modules fill)."""
    pool = pool or descriptor_pool.Default()
    try:
        descriptor: Any = pool.FindMessageTypeByName(full_name)
        proto: Any = descriptor_pb2.DescriptorProto()
        ranges_end = 0  # DescriptorProto.ReservedRange's end is exclusive
    except KeyError:
        descriptor = pool.FindEnumTypeByName(full_name)
        proto = descriptor_pb2.EnumDescriptorProto()
        ranges_end = 1  # EnumReservedRange's end is inclusive
    descriptor.CopyToProto(proto)
    numbers = {
        number
        for span in proto.reserved_range
        for number in range(span.start, span.end + ranges_end)
    }
    return numbers, set(proto.reserved_name)


def pinned() -> list[_Row]:
    rows = []
    for line in WIRE_FIELDS.read_text().splitlines():
        if line and not line.startswith("#"):
            owner, name, number, kind = line.split(" ", 3)
            rows.append((owner, name, int(number), kind))
    return rows


def test_the_pinned_list_uses_each_number_once_per_message():
    rows = pinned()
    numbers = [(owner, number) for owner, _, number, _ in rows]
    assert len(numbers) == len(set(numbers))
    names = [(owner, name) for owner, name, _, _ in rows]
    assert len(names) == len(set(names))


def test_every_field_of_the_protos_is_pinned_with_its_number_and_type():
    missing = sorted(wire_fields() - set(pinned()))
    assert not missing, "new or changed fields; a new one gets a line in wire_fields.txt:\n" + (
        "\n".join(" ".join(map(str, row)) for row in missing)
    )


def test_a_pinned_field_that_is_gone_is_reserved_number_and_name():
    gone = set(pinned()) - wire_fields()
    for owner, name, number, _ in sorted(gone):
        numbers, names = reserved(owner)
        hint = f"{owner}.{name} = {number} left the proto: reserve {number} and {name!r} in it"
        assert number in numbers, hint
        assert name in names, hint


def test_reserved_reads_the_numbers_and_names_a_proto_reserves():
    file = descriptor_pb2.FileDescriptorProto(name="t.proto", package="t", syntax="proto3")
    message = file.message_type.add(name="M", reserved_name=["old"])
    message.reserved_range.add(start=3, end=5)  # reserved 3 to 4;
    enum = file.enum_type.add(name="E", reserved_name=["GONE"])
    enum.value.add(name="E_UNSPECIFIED", number=0)
    enum.reserved_range.add(start=2, end=2)  # reserved 2;
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    assert reserved("t.M", pool) == ({3, 4}, {"old"})
    assert reserved("t.E", pool) == ({2}, {"GONE"})


@pytest.mark.parametrize(
    "request_type",
    [
        data_node_pb2.DescribeDatasetRequest,
        data_node_pb2.RegisterDatasetRequest,
        data_node_pb2.RemoveDatasetRequest,
    ],
)
def test_the_renamed_dataset_fields_keep_number_1(request_type):
    """They were ``name`` = 1: the bytes on the wire are those of before the rename."""
    fields = request_type.DESCRIPTOR.fields_by_name
    assert fields["dataset"].number == 1
    assert fields["dataset"].type == fields["dataset"].TYPE_STRING
    assert "name" not in fields
    assert request_type(dataset="brains").SerializeToString() == b"\n\x06brains"


def test_node_library_and_client_share_the_seed_bound():
    """The client may not import data_tools, so it states the bound again: they must agree,
    with each other and with what the .proto documents."""
    proto = (PROTOS / "data_node.proto").read_text()
    documented = re.search(r"SEED_LIMIT = 2\^(\d+)", proto)
    assert documented is not None
    assert data_client.SEED_LIMIT == data_tools.io.SEED_LIMIT == 2 ** int(documented[1])
    seed = data_node_pb2.StreamRequest.DESCRIPTOR.fields_by_name["seed"]
    assert seed.type == seed.TYPE_UINT64  # wider than the bound: a larger seed is refused

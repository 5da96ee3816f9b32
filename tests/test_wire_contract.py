"""data_wire's hand-written contract: the method table read from the DataNode service's
descriptor, and the defaults node and client share.

Matrix: every RPC of data_node.proto x (path, request and response classes, streaming,
role); the node's handlers and the client's calls are built from this table; the default
address and message size as the node's config and the client use them.
"""

from __future__ import annotations

import inspect

import grpc
import pytest

from data_client import DataNodeClient
from data_client._node import Node
from data_client._requests import CODECS
from data_node.config import LimitsConfig, NodeConfig, load
from data_node.rpc.servicer import method_handlers
from data_wire.defaults import DEFAULT_ADDRESS, DEFAULT_MAX_MESSAGE_BYTES
from data_wire.methods import METHODS, SERVICE_NAME
from data_wire.v1 import data_node_pb2, jobs_pb2, tensor_pb2

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

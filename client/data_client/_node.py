"""One node of a client: its address, its channel, and a callable per DataNode method."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from data_client._decode import decode_batch
from data_client.jobs import JobCalls
from data_wire.methods import METHODS, Method
from data_wire.v1 import tensor_pb2

if TYPE_CHECKING:
    import grpc

__all__ = ["Node"]


class Node:
    """The DataNode calls on one channel, one per method of the proto's method table.

    Attributes:
        address: The node's address, as given.
        channel: Its gRPC channel.
        calls: RPC name (e.g. "ListDatasets") -> its multicallable; StreamBatches decodes
            each Batch with ``decode_batch``.
        job_calls: The job calls a ``BuildJob`` makes on this node.
    """

    def __init__(
        self,
        address: str,
        channel: grpc.Channel,
        metadata: tuple[tuple[str, str], ...],
        timeout: float | None,
    ) -> None:
        self.address = address
        self.channel = channel
        self.calls: dict[str, Any] = {
            method.name: _multicallable(channel, method) for method in METHODS.values()
        }
        self.job_calls = JobCalls(
            get_job=self.calls["GetJob"],
            cancel_job=self.calls["CancelJob"],
            watch_job=self.calls["WatchJob"],
            metadata=metadata,
            timeout=timeout,
        )


def _multicallable(channel: grpc.Channel, method: Method) -> Any:
    """The callable of ``method`` on ``channel``: unary or streaming as the proto says."""
    open_call = channel.unary_stream if method.response_streaming else channel.unary_unary
    return open_call(
        method.path,
        request_serializer=method.request_type.SerializeToString,
        response_deserializer=(
            decode_batch
            if method.response_type is tensor_pb2.Batch
            else method.response_type.FromString
        ),
    )

"""DataNodeServicer: translates data_wire messages to library calls and errors to statuses.

It holds no pipeline logic (that is streams.py) and lets no traceback reach the wire: every
exception is looked up in status.py and the call aborted with that code and the message.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import grpc

from data_node.datasets import wire_dtype
from data_node.status import status_for
from data_node.streams import StreamSlots, parse_stream_request, stream_batches
from data_wire.v1 import data_node_pb2

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from data_node.config import NodeConfig
    from data_node.datasets import Dataset, DatasetRegistry

__all__ = ["SERVICE_NAME", "DataNodeServicer", "method_handlers"]

SERVICE_NAME = data_node_pb2.DESCRIPTOR.services_by_name["DataNode"].full_name
logger = logging.getLogger(__name__)
Response = TypeVar("Response")


class DataNodeServicer:
    """The DataNode service over a dataset registry, within the config's limits."""

    def __init__(self, config: NodeConfig, registry: DatasetRegistry) -> None:
        self._config = config
        self._registry = registry
        self._slots = StreamSlots(config.limits.max_open_streams)
        self._stops: set[threading.Event] = set()
        self._lock = threading.Lock()

    @property
    def open_streams(self) -> int:
        """Streams being served now."""
        return self._slots.open

    def ListDatasets(
        self, request: data_node_pb2.ListDatasetsRequest, context: grpc.ServicerContext
    ) -> data_node_pb2.ListDatasetsResponse:
        return _answer(
            context,
            lambda: data_node_pb2.ListDatasetsResponse(
                datasets=[describe(d) for d in self._registry]
            ),
        )

    def DescribeDataset(
        self, request: data_node_pb2.DescribeDatasetRequest, context: grpc.ServicerContext
    ) -> data_node_pb2.DatasetDescription:
        return _answer(context, lambda: describe(self._registry.get(request.name)))

    def StreamBatches(
        self, request: data_node_pb2.StreamRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        stop = threading.Event()
        try:
            dataset = self._registry.get(request.dataset)
            plan = parse_stream_request(
                request, dataset, self._config.limits, self._config.preprocessors
            )
            self._slots.acquire()
        except Exception as error:
            _abort(context, error)
        context.add_callback(stop.set)
        with self._lock:
            self._stops.add(stop)
        try:
            yield from stream_batches(plan, stop)
        except Exception as error:
            _abort(context, error)
        finally:
            with self._lock:
                self._stops.discard(stop)
            self._slots.release()

    def stop_streams(self) -> None:
        """Ask every open stream to end after its current batch."""
        with self._lock:
            for stop in self._stops:
                stop.set()


def describe(dataset: Dataset) -> data_node_pb2.DatasetDescription:
    """The wire description of a dataset."""
    return data_node_pb2.DatasetDescription(
        name=dataset.name,
        length=dataset.length,
        arrays=[
            data_node_pb2.ArrayDescription(
                name=name, dtype=wire_dtype(array.dtype), shape=list(array.shape)
            )
            for name, array in dataset.arrays
        ],
        classes=list(dataset.classes),
    )


def method_handlers(servicer: DataNodeServicer) -> grpc.GenericRpcHandler:
    """The service's handlers. StreamBatches yields encoded bytes: no response serializer."""
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "ListDatasets": grpc.unary_unary_rpc_method_handler(
                servicer.ListDatasets,
                request_deserializer=data_node_pb2.ListDatasetsRequest.FromString,
                response_serializer=data_node_pb2.ListDatasetsResponse.SerializeToString,
            ),
            "DescribeDataset": grpc.unary_unary_rpc_method_handler(
                servicer.DescribeDataset,
                request_deserializer=data_node_pb2.DescribeDatasetRequest.FromString,
                response_serializer=data_node_pb2.DatasetDescription.SerializeToString,
            ),
            "StreamBatches": grpc.unary_stream_rpc_method_handler(
                servicer.StreamBatches,
                request_deserializer=data_node_pb2.StreamRequest.FromString,
                response_serializer=None,
            ),
        },
    )


def _answer(context: grpc.ServicerContext, respond: Callable[[], Response]) -> Response:
    try:
        return respond()
    except Exception as error:
        _abort(context, error)


def _abort(context: grpc.ServicerContext, error: Exception) -> NoReturn:
    code = status_for(error)
    if code is grpc.StatusCode.INTERNAL:
        logger.exception("internal error in an RPC", exc_info=error)
    message: Any = str(error) or type(error).__name__
    context.abort(code, message)

"""DataNodeServicer: translates data_wire messages to library calls and errors to statuses.

It holds no pipeline logic (that is data_node.streaming, and data_node.jobs for build jobs)
and lets no traceback reach the wire: every exception is looked up in data_node.rpc.status
and the call aborted with that code and the message.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError

from data_node.catalog.datasets import wire_dtype
from data_node.catalog.registration import parse_register_request, parse_remove_request
from data_node.errors import ConfigError, DatasetRemovedError, NodeStoppingError, RequestError
from data_node.metrics import NodeMetrics
from data_node.redact import PathRedactor
from data_node.rpc._strings import check_string_lengths
from data_node.rpc.status import status_for
from data_node.streaming.streams import parse_stream_request, stream_batches
from data_wire.methods import METHODS, SERVICE_NAME, Method
from data_wire.v1 import data_node_pb2, jobs_pb2, tensor_pb2

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from data_node.catalog.datasets import Dataset, DatasetRegistry
    from data_node.config import NodeConfig
    from data_node.jobs.manager import JobManager
    from data_node.rpc.admission import MemoryBudget
    from data_tools.io.pool import WorkerPool

__all__ = ["SERVICE_NAME", "DataNodeServicer", "method_handlers"]

logger = logging.getLogger(__name__)
Response = TypeVar("Response")


class DataNodeServicer:
    """The DataNode service over a dataset registry and a job manager, within the limits.

    Streams are counted in ``metrics`` (default: metrics of its own, served nowhere), and
    each reserves its memory in ``budget`` while it is open (default None: no budget). How
    many streams may be open is data_node.rpc.admission's business, before they get here.
    Streams with worker processes run on ``workers``, the node's warm pool (default None:
    each such stream starts processes of its own).
    """

    def __init__(
        self,
        config: NodeConfig,
        registry: DatasetRegistry,
        jobs: JobManager,
        metrics: NodeMetrics | None = None,
        budget: MemoryBudget | None = None,
        workers: WorkerPool | None = None,
    ) -> None:
        self._config = config
        self._workers = workers
        self._registry = registry
        self._jobs = jobs
        self._metrics = NodeMetrics() if metrics is None else metrics
        self._budget = budget
        self._redact = PathRedactor.from_config(config)
        self._stops: set[threading.Event] = set()
        self._lock = threading.Lock()

    @property
    def open_streams(self) -> int:
        """Streams being served now (checked and started, not yet ended)."""
        with self._lock:
            return len(self._stops)

    def ListDatasets(
        self, request: data_node_pb2.ListDatasetsRequest, context: grpc.ServicerContext
    ) -> data_node_pb2.ListDatasetsResponse:
        return self._answer(
            context,
            lambda: data_node_pb2.ListDatasetsResponse(
                datasets=[describe(d) for d in self._registry]
            ),
        )

    def DescribeDataset(
        self, request: data_node_pb2.DescribeDatasetRequest, context: grpc.ServicerContext
    ) -> data_node_pb2.DatasetDescription:
        return self._answer(context, lambda: describe(self._registry.get(request.dataset)))

    def StreamBatches(
        self, request: data_node_pb2.StreamRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        stop = threading.Event()
        try:
            dataset = self._registry.get(request.dataset)
        except Exception as error:
            self._abort(context, error)
        try:
            plan = parse_stream_request(
                request, dataset, self._config.limits, self._config.preprocessors
            )
            if self._budget is not None:
                self._budget.reserve(plan.memory_bytes)
        except Exception as error:
            self._abort_stream(context, dataset.name, error)
        context.add_callback(stop.set)
        with self._lock:
            self._stops.add(stop)
        try:
            with (
                self._registry.serving(dataset, stop.set),
                self._metrics.stream(dataset.name) as metrics,
            ):
                yield from stream_batches(plan, stop, metrics, self._workers)
        except NodeStoppingError as stopped:
            # The stream's stop was set: by the node stopping, the client leaving, or the
            # registry retiring the dataset (which then is no longer the one served).
            reason: Exception = stopped
            if not self._registry.is_served(dataset):
                reason = DatasetRemovedError(
                    f"dataset: {dataset.name!r} was removed or replaced on the node while "
                    "the stream was open; the stream ended before its next batch."
                )
            self._abort_stream(context, dataset.name, reason)
        except Exception as error:
            self._abort_stream(context, dataset.name, error)
        finally:
            with self._lock:
                self._stops.discard(stop)
            if self._budget is not None:
                self._budget.release(plan.memory_bytes)

    def RegisterDataset(
        self, request: data_node_pb2.RegisterDatasetRequest, context: grpc.ServicerContext
    ) -> data_node_pb2.DatasetDescription:
        def register() -> data_node_pb2.DatasetDescription:
            config = parse_register_request(
                request, self._config.data_root, self._config.output_root
            )
            try:
                dataset = self._registry.register(config, replace=request.replace, prefix="")
            except ConfigError as error:  # the request's files, not the node's config
                raise RequestError(str(error)) from error
            return describe(dataset)

        return self._answer(context, register)

    def RemoveDataset(
        self, request: data_node_pb2.RemoveDatasetRequest, context: grpc.ServicerContext
    ) -> data_node_pb2.RemoveDatasetResponse:
        def remove() -> data_node_pb2.RemoveDatasetResponse:
            removed = self._registry.remove(parse_remove_request(request))
            response = data_node_pb2.RemoveDatasetResponse()
            if removed is not None:
                response.removed.CopyFrom(describe(removed))
            return response

        return self._answer(context, remove)

    def SubmitBuildJob(
        self, request: jobs_pb2.SubmitBuildJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.Job:
        return self._answer(context, lambda: self._jobs.submit(request))

    def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.Job:
        return self._answer(context, lambda: self._jobs.get(request.job_id))

    def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        def page() -> jobs_pb2.ListJobsResponse:
            jobs, token = self._jobs.list(request.page_size, request.page_token)
            return jobs_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

        return self._answer(context, page)

    def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.Job:
        return self._answer(context, lambda: self._jobs.cancel(request.job_id))

    def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[jobs_pb2.Job]:
        stop = threading.Event()
        context.add_callback(stop.set)
        try:
            yield from self._jobs.watch(request.job_id, stop)
        except Exception as error:
            self._abort(context, error)

    def _abort_stream(
        self, context: grpc.ServicerContext, dataset: str, error: Exception
    ) -> NoReturn:
        """Abort a stream of a served dataset, counting the error if its client is still there."""
        if context.is_active():
            self._metrics.stream_error(dataset, status_for(error).name)
        self._abort(context, error)

    def _answer(self, context: grpc.ServicerContext, respond: Callable[[], Response]) -> Response:
        try:
            return respond()
        except Exception as error:
            self._abort(context, error)

    def _abort(self, context: grpc.ServicerContext, error: Exception) -> NoReturn:
        """Abort with the status of ``error`` and its message, with no server path in it."""
        code = status_for(error)
        if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS):
            logger.exception("%s in an RPC", code.name, exc_info=error)
        context.abort(code, self._redact(str(error) or type(error).__name__))

    def stop_streams(self) -> None:
        """Ask every open stream to end after its current batch."""
        with self._lock:
            for stop in self._stops:
                stop.set()

    def wait_for_streams(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every stream to end; True if they all did."""
        deadline = time.monotonic() + timeout
        while self.open_streams:
            if time.monotonic() > deadline:
                logger.warning("%d stream(s) still open after %.1f s", self.open_streams, timeout)
                return False
            time.sleep(0.01)
        return True


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
        origin=(
            data_node_pb2.DATASET_ORIGIN_REGISTERED
            if dataset.registered
            else data_node_pb2.DATASET_ORIGIN_CONFIG
        ),
    )


def method_handlers(servicer: DataNodeServicer) -> grpc.GenericRpcHandler:
    """The service's handlers: one per method of the proto's table (data_wire.methods).

    Requests arrive as bytes and are parsed here, so a malformed request gets
    INVALID_ARGUMENT naming the message type rather than gRPC's generic INTERNAL; then
    every string field's length is checked (data_node.rpc._strings) before the method runs.
    StreamBatches yields Batches already encoded (data_node.wire): no response serializer.
    """

    def serialize(message: Any) -> bytes:
        return message.SerializeToString()  # type: ignore[no-any-return]

    def handler(method: Method) -> grpc.RpcMethodHandler[Any, Any]:
        behavior = _parsing(getattr(servicer, method.name), method.request_type)
        serializer = None if method.response_type is tensor_pb2.Batch else serialize
        if method.response_streaming:
            return grpc.unary_stream_rpc_method_handler(behavior, response_serializer=serializer)
        return grpc.unary_unary_rpc_method_handler(behavior, response_serializer=serializer)

    return grpc.method_handlers_generic_handler(
        SERVICE_NAME, {name: handler(method) for name, method in METHODS.items()}
    )


def _parsing(method: Callable[..., Any], request_type: Any) -> Callable[..., Any]:
    """``method`` taking the request's bytes, parsed as ``request_type``."""

    def handler(raw: bytes, context: grpc.ServicerContext) -> Any:
        try:
            request = request_type.FromString(raw)
        except DecodeError as error:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request: Expected a serialized {request_type.DESCRIPTOR.full_name}. "
                f"Got {len(raw)} bytes that do not parse ({error}) instead.",
            )
        try:
            check_string_lengths(request)
        except RequestError as error:
            context.abort(status_for(error), str(error))
        return method(request, context)

    return handler

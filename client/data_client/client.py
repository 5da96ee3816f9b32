"""DataNodeClient: list and describe a data node's datasets, stream minibatches, build datasets."""

from __future__ import annotations

import difflib
import json
import logging
import math
import numbers
import os
import random
import secrets
import threading
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, Self, TypeAlias

import grpc
import numpy as np
import numpy.typing as npt

from data_client._decode import DecodedBatch, decode_batch
from data_client._stream_base import StreamBase
from data_client.errors import UnavailableError, failure_cause, translate_rpc_error
from data_client.jobs import (
    BuildJob,
    CaseInput,
    DatasetArray,
    FileArray,
    JobCalls,
    JobInfo,
    job_info,
)
from data_client.merge import MultiNodeStream
from data_client.nodes import parse_addresses
from data_wire.v1 import data_node_pb2, jobs_pb2, tensor_pb2
from data_wire.v1.data_node_pb2 import (
    Augmentation,
    CaseRange,
    DatasetDescription,
    DescribeDatasetRequest,
    ListDatasetsRequest,
    ListDatasetsResponse,
    RegisterDatasetRequest,
    RemoveDatasetRequest,
    RemoveDatasetResponse,
    SampleWeights,
    Shard,
    StreamRequest,
)
from data_wire.v1.tensor_pb2 import Cursor

if TYPE_CHECKING:
    from types import TracebackType

    from data_client.preview import Preview

__all__ = [
    "SEED_LIMIT",
    "ArrayInfo",
    "ArrayInput",
    "ArraySources",
    "BatchStream",
    "CaseSelection",
    "DataNodeClient",
    "DatasetInfo",
    "TlsConfig",
    "TlsOption",
]

# A stream's reconnects are logged here (INFO): the data-client command shows them on stderr.
_reconnect_log = logging.getLogger("data_client.reconnect")

# Largest message either way, in bytes: the node's default limit (one Batch is one message).
_DEFAULT_MAX_MESSAGE_BYTES: Final = 512 * 1024 * 1024

PemSource: TypeAlias = str | os.PathLike[str] | bytes
"""A PEM file's path, or its contents."""


@dataclass(frozen=True)
class TlsConfig:
    """A client's TLS settings: whom to trust, and its own certificate for mutual TLS.

    Attributes:
        ca: PEM bundle of the CA(s) the node's certificate must chain to. Default None:
            gRPC's bundled root certificates.
        cert: The client's PEM certificate chain, for a node that requires client
            certificates (``[tls] ca`` in the node's config). Default None: none.
        key: The private key of ``cert`` (PEM); never shown in the repr. Default None.

    Each is a path (``str`` or ``os.PathLike``, read when the client is created) or the
    PEM contents as ``bytes``. The node's certificate must name the host dialled; to dial
    another name pass ``options=[("grpc.ssl_target_name_override", NAME)]`` to the client.

    Raises:
        TypeError: A field has none of these forms.
        ValueError: ``cert`` is given without ``key``, or ``key`` without ``cert``.
    """

    ca: PemSource | None = None
    cert: PemSource | None = None
    key: PemSource | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("ca", "cert", "key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str | os.PathLike | bytes):
                shown = "a value" if name == "key" else repr(value)
                raise TypeError(
                    f"Expected TlsConfig.{name} to be a PEM path, PEM bytes or None. "
                    f"Got {shown} of type {type(value).__name__} instead."
                )
        if (self.cert is None) != (self.key is None):
            given, missing = ("cert", "key") if self.key is None else ("key", "cert")
            raise ValueError(
                f"Expected TlsConfig.cert and TlsConfig.key together. Got {given} without "
                f"{missing} instead."
            )


TlsOption: TypeAlias = bool | PemSource | TlsConfig | grpc.ChannelCredentials | None
"""Accepted forms of ``DataNodeClient(tls=...)``."""

ArrayInput: TypeAlias = DatasetArray | FileArray | str
"""Accepted forms of a build job's volume or mask; a ``str`` is ``FileArray(path)``."""

ArraySources: TypeAlias = FileArray | str | Sequence[FileArray | str]
"""Accepted forms of a registered dataset's array: one source or a list of them, each a
``FileArray`` (path under the node's data root and array key) or a path (``FileArray(path)``)."""

CaseSelection: TypeAlias = (
    str | int | range | tuple[int, int] | Sequence[int | range | tuple[int, int]]
)
"""Accepted forms of ``stream(cases=...)``: ``"0-79,90"`` (inclusive ranges and single cases,
comma-separated), a case number, a ``range`` (``range(80)`` is 0-79), a ``(first, last)`` pair
(inclusive), or a sequence of these."""

_METHOD_PREFIX: Final = f"/{data_node_pb2.DESCRIPTOR.services_by_name['DataNode'].full_name}/"
# Codec names as a request spells them -> the wire enum's names (CODEC_LZ4 is "lz4").
_CODECS: Final = {
    name.removeprefix("CODEC_").lower(): name
    for name in tensor_pb2.Codec.keys()  # noqa: SIM118 - an enum wrapper, not a dict
    if name != "CODEC_UNSPECIFIED"
}
# gRPC's own reconnect backoff (1 s growing to 120 s) would keep a channel failing fast long
# after a restarted node is back, wasting every stream reconnect attempt; keep it short.
_CHANNEL_RECONNECT_OPTIONS: Final = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
SEED_LIMIT: Final = 2**32
"""Seeds of streams lie in [0, SEED_LIMIT): data_tools.io.SEED_LIMIT, which the node enforces
(StreamRequest.seed); the client may not import the library, so it states the bound again."""
# The node reads these as medical images, (z, y, x) arrays (data_tools.medical.IMAGE_SUFFIXES).
_IMAGE_SUFFIXES: Final = (".mha", ".mhd", ".nii", ".nii.gz", ".nrrd")
# Keepalive bounds, in seconds. The node accepts pings 0.5 s apart (data_node.server), so
# 1 s leaves room for jitter; gRPC takes the interval as a 32-bit count of milliseconds.
_KEEPALIVE_MIN: Final = 1.0
_KEEPALIVE_MAX: Final = (2**31 - 1) // 1000
# Longest wait for a ping's acknowledgement: a hung node is dropped at most this long after
# the ping, while a busy link still gets a few seconds to answer.
_KEEPALIVE_TIMEOUT_MAX: Final = 5.0


@dataclass(frozen=True)
class ArrayInfo:
    """One named array of a dataset.

    Attributes:
        name: Array name, e.g. "image", "mask" or "label".
        dtype: Element type (little-endian, as on the wire).
        shape: Shape of the whole array; ``shape[0]`` is the dataset length.
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]


@dataclass(frozen=True)
class DatasetInfo:
    """What a node says about one dataset.

    Attributes:
        name: Dataset name as configured on the node.
        length: Number of samples.
        arrays: The arrays iterated in tandem, in the order every batch carries them.
        classes: Class numbers of the "label" array when the dataset has a class list; else ().
        registered: Registered at run time (``register_dataset`` or a build job's
            ``register_as``; removable with ``remove_dataset``), else from the node's config
            file. Default False.
    """

    name: str
    length: int
    arrays: tuple[ArrayInfo, ...]
    classes: tuple[int, ...]
    registered: bool = False


class _StreamCall(Protocol):
    """What BatchStream uses of a running StreamBatches call (grpc's call iterator)."""

    def __next__(self) -> DecodedBatch: ...

    def cancel(self) -> bool: ...


class _StreamRpc(Protocol):
    """The StreamBatches callable (a grpc unary-stream multicallable decoding with decode_batch)."""

    def __call__(
        self, request: StreamRequest, *, metadata: tuple[tuple[str, str], ...]
    ) -> _StreamCall: ...


class BatchStream(StreamBase):
    """An iterator of minibatches from one StreamBatches call; returned by ``DataNodeClient.stream``.

    Each item is a tuple of numpy arrays in the dataset's array order, the first axis being
    the batch axis. Unless the stream was opened with ``copy=True``, the arrays are read-only
    zero-copy views of the received message (they keep it alive; copy one to write to it).

    After each item, ``cursor``, ``indices``, ``epoch`` and ``batch_index`` describe it, so a
    trainer can checkpoint ``cursor_bytes()`` and later pass it as ``stream(..., resume=...)``.

    When the node becomes UNAVAILABLE (restart, dropped connection, keepalive pings left
    unanswered by a hung node), the stream re-issues its request resuming from the last
    cursor received, so no sample is lost or duplicated; before any batch it re-issues the
    original request. With several nodes (one lane of a ``MultiNodeStream``) it first tries
    the next node at once (failover); once every node has failed in a row, and with one node
    after each failure, it waits with exponential backoff. Any other failure, or running out
    of reconnect attempts, raises a ``DataNodeError`` subclass.

    ``stall`` is the time the trainer spent waiting inside ``next()`` (receiving, decoding and
    reconnecting), ``stall_fraction`` its share of the wall time.

    ``close()`` cancels the call so the node frees the stream's workers at once; it is also
    called at exhaustion, on error, by ``with`` exit and when the stream is garbage collected.
    """

    def __init__(
        self,
        rpcs: Sequence[_StreamRpc],
        request: StreamRequest,
        *,
        metadata: tuple[tuple[str, str], ...],
        max_reconnects: int,
        initial_backoff: float,
        max_backoff: float,
        copy: bool,
    ) -> None:
        """Prepare the stream; the call starts at the first ``next()``.

        Args:
            rpcs: The StreamBatches callable (``decode_batch`` as its deserializer) of each
                node that can serve the request: the first is called first, the next one after
                each UNAVAILABLE.
            request: The request to issue (its ``resume`` is the initial cursor, if any).
            metadata: Call metadata sent with every (re)issued call.
            max_reconnects: Rounds of failures (every node UNAVAILABLE in a row) tolerated
                without a batch between, each followed by a backoff; at most
                ``(max_reconnects + 1) * len(rpcs) - 1`` reconnect attempts.
            initial_backoff: Seconds before the first reconnect; doubles per attempt.
            max_backoff: Upper bound of one backoff, in seconds.
            copy: Yield writable arrays that own their memory instead of read-only views.
        """
        self._rpcs = tuple(rpcs)
        self._node = 0  # position in _rpcs of the node called next
        self._request = request
        self._metadata = metadata
        self._max_reconnects = max_reconnects
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._copy = copy
        self._jitter = random.Random()
        # Guards _call against close() from another thread while __next__ (re)opens it.
        self._lock = threading.Lock()
        self._call: _StreamCall | None = None
        self._failures = 0
        super().__init__(request.resume if request.HasField("resume") else None)

    def _next_batch(self) -> tuple[npt.NDArray[Any], ...]:
        while True:
            call = self._open_call()
            if call is None:
                raise StopIteration
            try:
                batch = next(call)
            except StopIteration:
                self.close()
                raise
            except grpc.RpcError as error:
                self._after_failure(error)
                continue
            self._failures = 0
            self._advance(batch)
            arrays = tuple(batch.arrays)
            if self._copy:
                arrays = tuple(a if a.flags.writeable else a.copy() for a in arrays)
            return arrays

    def close(self) -> None:
        """Cancel the call (the node frees the stream's workers); idempotent and thread-safe."""
        with self._lock:
            self._closed.set()
            call, self._call = self._call, None
        self._clock.close()
        if call is not None:
            call.cancel()

    def _open_call(self) -> _StreamCall | None:
        """The current call, issuing one (resuming from ``cursor``) if needed; None once closed."""
        with self._lock:
            if self._closed.is_set():
                return None
            if self._call is None:
                if self._received_all(None if self._request.loop_forever else self._request.epochs):
                    # The node went away after the last batch: the stream is complete, and
                    # a resume from its end would be refused (OUT_OF_RANGE).
                    self._closed.set()
                    return None
                request = _with_resume(self._request, self._cursor)
                self._call = self._rpcs[self._node](request, metadata=self._metadata)
            return self._call

    def _after_failure(self, error: grpc.RpcError) -> None:
        """After UNAVAILABLE try the next node (backing off once all failed); else raise."""
        if self._closed.is_set():  # cancelled by close(): the caller asked for the stop
            return
        nodes = len(self._rpcs)
        unavailable = error.code() is grpc.StatusCode.UNAVAILABLE
        attempts = (self._max_reconnects + 1) * nodes - 1
        if unavailable and self._failures < attempts:
            self._failures += 1
            with self._lock:
                self._call = None
            self._node = (self._node + 1) % nodes
            rounds, rest = divmod(self._failures, nodes)
            delay = 0.0
            if rest == 0:
                # Jitter spreads the reconnects of many trainers after one node restart.
                delay = min(self._max_backoff, self._initial_backoff * 2 ** (rounds - 1))
                delay *= self._jitter.uniform(0.5, 1.0)
            details = error.details() or ""
            _reconnect_log.info(
                "node unavailable (%s); reconnect %d of %d in %.1f s",
                failure_cause(error.code(), details) or details,
                self._failures,
                attempts,
                delay,
            )
            if delay:
                self._closed.wait(delay)
            return
        self.close()
        note = ""
        if unavailable and self._failures:
            where = f" over {nodes} nodes" if nodes > 1 else ""
            note = f"gave up after {self._failures} reconnect attempts{where}"
        raise translate_rpc_error(error, note=note) from error


class _Node:
    """One node of a client: its address, its channel and the DataNode calls on it."""

    def __init__(
        self,
        address: str,
        channel: grpc.Channel,
        metadata: tuple[tuple[str, str], ...],
        timeout: float | None,
    ) -> None:
        self.address = address
        self.channel = channel
        self.list_datasets = self._unary("ListDatasets", ListDatasetsResponse)
        self.describe_dataset = self._unary("DescribeDataset", DatasetDescription)
        self.register_dataset = self._unary("RegisterDataset", DatasetDescription)
        self.remove_dataset = self._unary("RemoveDataset", RemoveDatasetResponse)
        self.stream_batches = channel.unary_stream(
            _METHOD_PREFIX + "StreamBatches",
            request_serializer=StreamRequest.SerializeToString,
            response_deserializer=decode_batch,
        )
        self.submit_build_job = self._unary("SubmitBuildJob", jobs_pb2.Job)
        self.list_jobs = self._unary("ListJobs", jobs_pb2.ListJobsResponse)
        self.job_calls = JobCalls(
            get_job=self._unary("GetJob", jobs_pb2.Job),
            cancel_job=self._unary("CancelJob", jobs_pb2.Job),
            watch_job=channel.unary_stream(
                _METHOD_PREFIX + "WatchJob",
                request_serializer=jobs_pb2.WatchJobRequest.SerializeToString,
                response_deserializer=jobs_pb2.Job.FromString,
            ),
            metadata=metadata,
            timeout=timeout,
        )

    def _unary(self, method: str, response_type: Any) -> Any:
        """A unary-unary callable of the DataNode service returning ``response_type``."""
        return self.channel.unary_unary(
            _METHOD_PREFIX + method,
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=response_type.FromString,
        )


class DataNodeClient:
    """A connection to one data node, or to several serving the same datasets.

    Every RPC sends ``authorization: Bearer <token>`` metadata when a token is given, and every
    failure is raised as a ``data_client.errors.DataNodeError`` subclass (never a raw
    ``grpc.RpcError``). Use as a context manager or call ``close()``.

    Several nodes (a list of addresses, or ``resolve_nodes(name)`` for every address of a
    headless Kubernetes service) share the work of each stream: ``stream()`` reads one lane
    of the epoch from each node in parallel and merges them back into the very stream one
    node would give (a ``MultiNodeStream``), moving a lane to another node if its node goes
    away. The other calls go to the first node that answers, in the order given.

    While a call is open the client sends an HTTP/2 keepalive ping every ``keepalive``
    seconds (default 10), so a node that hangs rather than going away (stopped process,
    frozen VM, a network path silently dropping packets) is noticed within about
    ``keepalive + min(keepalive, 5)`` seconds: its call fails with UNAVAILABLE, and a stream
    fails over to another node or reconnects, as when a node restarts.

    Example:
        >>> with DataNodeClient("localhost:50051") as client:  # doctest: +SKIP
        ...     for image, mask in client.stream("brains", batch_size=32, sample_random=True, seed=1):
        ...         train_step(image, mask)
        >>> nodes = ["node-a:50051", "node-b:50051"]
        >>> with DataNodeClient(nodes) as client:  # doctest: +SKIP
        ...     stream = client.stream("brains", batch_size=32, sample_random=True, seed=1)
        ...     for image, mask in stream:  # the same batches as from one node, in order
        ...         train_step(image, mask)
        ...     print(f"waited {stream.stall:.1f} s for data")
    """

    def __init__(
        self,
        address: str | Sequence[str],
        token: str | None = None,
        tls: TlsOption = None,
        *,
        max_message_bytes: int = _DEFAULT_MAX_MESSAGE_BYTES,
        timeout: float | None = 30.0,
        keepalive: float | None = 10.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Open a channel to each node (connecting lazily, at the first call).

        Args:
            address: The node's ``host:port`` (any gRPC target string), or a sequence of
                distinct addresses of nodes serving the same datasets under the same names
                (e.g. ``resolve_nodes("data-node.ns.svc.cluster.local:50051")``). The order
                matters only for the calls other than ``stream()``: they go to the first node
                that answers.
            token: Bearer token sent with every call. Default None: no authorization metadata.
            tls: Transport security. None or False (default): plaintext. True: TLS verified with
                gRPC's bundled root certificates. A ``str`` or ``os.PathLike``: path to a PEM CA
                bundle the node's certificate must chain to (read now). ``bytes``: the contents
                of such a bundle. A ``TlsConfig``: a CA bundle and, for a node requiring
                mutual TLS, the client's certificate and key. A ``grpc.ChannelCredentials``:
                used as is. The same for every node.
            max_message_bytes: Largest message sent or received, in bytes (one Batch is one
                message). Default 512 MiB, the node's default limit; keep both ends equal.
            timeout: Seconds allowed to each unary call (``datasets()``, ``describe()``, the
                job calls); None waits forever. Default 30. Streams and job watches have no
                deadline (``BuildJob.wait`` takes its own).
            keepalive: Seconds between HTTP/2 keepalive pings while a call is open, >= 1;
                a node that does not acknowledge one within ``min(keepalive, 5)`` seconds
                (hung process, frozen VM, a network path silently dropping packets) fails
                the call with UNAVAILABLE, which a stream treats as any other: it fails
                over or reconnects. None turns the pings off, leaving such a stream blocked
                until the operating system gives up on the connection (often never).
                Default 10: a hung node is noticed within about 15 s. The node accepts
                pings this often; a proxy in between may not.
            options: Further gRPC channel options as (key, value) pairs; they override ours
                (e.g. ``grpc.keepalive_timeout_ms`` with ``grpc.http2.ping_timeout_ms``).

        Raises:
            TypeError: ``address`` is neither a string nor a sequence of strings, or ``tls``
                has none of the accepted forms.
            ValueError: ``address`` is an empty sequence or repeats an address,
                ``max_message_bytes`` is not a positive int, or ``keepalive`` is not None
                or a number of seconds in [1, 2147483] (TypeError if not a number).
            OSError: ``tls`` names a PEM file that cannot be read.
        """
        addresses = parse_addresses(address)
        max_message_bytes = _parse_int("max_message_bytes", max_message_bytes, minimum=1)
        channel_options = list(
            dict(
                (
                    ("grpc.max_send_message_length", max_message_bytes),
                    ("grpc.max_receive_message_length", max_message_bytes),
                    *_CHANNEL_RECONNECT_OPTIONS,
                    *_keepalive_options(keepalive),
                    *options,
                )
            ).items()
        )
        credentials = _channel_credentials(tls)
        self._metadata: tuple[tuple[str, str], ...] = (
            () if token is None else (("authorization", f"Bearer {token}"),)
        )
        self._timeout = timeout
        self._nodes = tuple(
            _Node(
                node_address,
                grpc.insecure_channel(node_address, channel_options)
                if credentials is None
                else grpc.secure_channel(node_address, credentials, channel_options),
                self._metadata,
                timeout,
            )
            for node_address in addresses
        )
        self._channel = self._nodes[0].channel
        self._streams: weakref.WeakSet[BatchStream | MultiNodeStream] = weakref.WeakSet()

    @property
    def addresses(self) -> tuple[str, ...]:
        """The nodes' addresses, in the order given."""
        return tuple(node.address for node in self._nodes)

    @property
    def channel(self) -> grpc.Channel:
        """The first node's gRPC channel, for other services (e.g. ``grpc.health.v1.Health``).

        It carries the client's TLS settings; calls on it send no token unless given one.
        """
        return self._channel

    def datasets(self) -> list[DatasetInfo]:
        """Every dataset the (first answering) node serves, sorted by name.

        Raises:
            DataNodeError: The call failed (a subclass per status code, e.g. UnavailableError
                when no node answers).
        """
        response, _ = self._call("list_datasets", ListDatasetsRequest())
        return [_dataset_info(description) for description in response.datasets]

    def describe(self, dataset: str) -> DatasetInfo:
        """One dataset's arrays (names, dtypes, shapes), length and classes.

        Args:
            dataset: Dataset name as configured on the node.

        Raises:
            NotFoundError: The node does not serve ``dataset`` (also a ``LookupError``).
            DataNodeError: Any other failure (a subclass per status code).
        """
        description, _ = self._call("describe_dataset", DescribeDatasetRequest(dataset=dataset))
        return _dataset_info(description)

    def register_dataset(
        self,
        dataset: str,
        arrays: Mapping[str, ArraySources],
        *,
        class_list: Sequence[int] | None = None,
        maxlen: int | None = None,
        replace: bool = False,
    ) -> DatasetInfo:
        """Serve files under the node's data root as a dataset, at once and after restarts.

        The arguments are those of a ``[datasets.NAME]`` table of the node's config file.
        Needs a token with the "build" role on a node with ``[auth]``.

        Args:
            dataset: The dataset's name: 1 to 128 letters, digits and "._-", starting with a
                letter or digit; not one of the node's config-file datasets.
            arrays: Array name -> its sources (see ``ArraySources``), iterated in tandem in
                this order. A source's format comes from its suffix (.h5/.hdf5, .zarr,
                .bcolz); HDF5 sources need a key.
            class_list: One class per source; adds a "label" array. Default None.
            maxlen: At most this many samples per source, >= 1. Default None: all.
            replace: Replace a dataset registered under ``dataset`` (its open streams end with
                FailedPreconditionError). Default False: AlreadyExistsError.

        Returns:
            The registered dataset's description.

        Raises:
            TypeError, ValueError: An argument is invalid here; the message names it.
            InvalidArgumentError: The node refused a field (named in the details), e.g. a
                source that does not exist or arrays of different lengths.
            AlreadyExistsError: ``dataset`` is served already (see ``replace``).
            PermissionDeniedError: A path leads outside the data root, or the token's role
                is "read".
        """
        if not isinstance(arrays, Mapping) or not arrays:
            raise TypeError(
                f"Expected arrays to be a non-empty dict of array name -> sources. Got {arrays!r} instead."
            )
        request = RegisterDatasetRequest(
            dataset=_parse_name("dataset", dataset), replace=bool(replace)
        )
        for array_name, sources in arrays.items():
            array = request.arrays.add(name=_parse_name("arrays key", array_name))
            listed = [sources] if isinstance(sources, str | FileArray) else list(sources)
            for i, source in enumerate(listed):
                if isinstance(source, str):
                    source = FileArray(source)
                if not isinstance(source, FileArray):
                    raise TypeError(
                        f"Expected arrays[{array_name!r}][{i}] to be a FileArray or a path. "
                        f"Got {source!r} instead."
                    )
                array.sources.add(path=source.path, key=source.key)
        request.class_list.extend(
            _parse_int(f"class_list[{i}]", v, minimum=-(2**63))
            for i, v in enumerate(class_list or ())
        )
        if maxlen is not None:
            request.maxlen = _parse_int("maxlen", maxlen, minimum=1)
        description, _ = self._call("register_dataset", request)
        return _dataset_info(description)

    def remove_dataset(self, dataset: str) -> DatasetInfo | None:
        """Stop serving a registered dataset and forget it across restarts; its files stay.

        Its open streams end with FailedPreconditionError before their next batch. Needs a
        token with the "build" role on a node with ``[auth]``.

        Returns:
            What the node served under ``dataset``, or None when it was registered but not
            served (its files could not be opened when the node started).

        Raises:
            NotFoundError: No dataset of that name is registered.
            FailedPreconditionError: ``dataset`` comes from the node's config file.
        """
        response, _ = self._call(
            "remove_dataset", RemoveDatasetRequest(dataset=_parse_name("dataset", dataset))
        )
        return _dataset_info(response.removed) if response.HasField("removed") else None

    def stream(
        self,
        dataset: str,
        batch_size: int,
        sample_random: bool = False,
        seed: int | None = None,
        epochs: int = 1,
        augmentation: Mapping[str, Any] | None = None,
        preprocessor: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        *,
        sharing: str | None = None,
        sample_with_replacement: bool = False,
        sample_weights: Sequence[float] | npt.ArrayLike | str | None = None,
        drop_incomplete_batches: bool = False,
        loop_forever: bool = False,
        nb_io_workers: int = 0,
        nb_proc_workers: int = 0,
        codec: str = "none",
        resume: Cursor | bytes | None = None,
        copy: bool = False,
        max_reconnects: int = 20,
        initial_backoff: float = 0.1,
        max_backoff: float = 2.0,
        cases: CaseSelection | None = None,
        start_epoch: int = 0,
        shuffle_window: int | None = None,
    ) -> BatchStream | MultiNodeStream:
        """Stream minibatches of a dataset (the call starts at the first ``next()``).

        The node is the authority on every argument; the obvious checks are repeated here so
        that a mistake fails before any network traffic.

        With K > 1 nodes the trainer's part of each epoch is split into K lanes (batch index
        ``b`` in lane ``b % K``), lane k read from node k, and merged back in order: the same
        batches, cursors and indices as from one node, bit for bit. A node that goes away
        has its lane moved to the next node, resumed from the lane's last cursor. Without a
        ``seed`` (and ``resume``) the client draws one for all lanes, as they must agree.

        Args:
            dataset: Dataset name.
            batch_size: Samples per batch, >= 1 (and within the node's limit).
            sample_random: Visit samples in random order. Default False.
            seed: Seed of sample order and augmentation, in [0, 2**32). Default None: the node
                draws one (it is in every cursor, and a resume reuses it).
            epochs: Number of epochs, >= 1; counted from the start of the stream, also when
                resuming. Ignored when ``loop_forever``. Default 1.
            augmentation: Per-sample augmentation on the node: the keyword arguments of
                ``data_tools.data_augmentation.image_random_transform`` (rotation_range,
                width_shift_range, height_shift_range, shear_range, zoom_range (a float z for
                [1-z, 1+z] or a (lo, hi) pair), intensity_shift_range, fill_mode, cval_x,
                cval_y, horizontal_flip, vertical_flip, spline_warp, warp_sigma,
                warp_grid_size, crop_size (an (h, w) pair), order_x, order_y), plus
                ``x_array`` (required) and ``y_array``: the names of the arrays transformed as
                x and y. A value of None leaves that field at the node's default. Default None.
            preprocessor: Name of a preprocessor registered in the node's config. Default None.
            rank: This trainer's shard, 0 <= rank < world_size. Default 0.
            world_size: Number of trainers sharing each epoch, >= 1. Default 1.
            sharing: "partitioned": the ``world_size`` ranks of one data-parallel job get
                disjoint parts of every epoch whose union is the epoch (every rank must pass
                the same ``seed``). "independent": this trainer gets whole epochs in the order
                of its own seed (``world_size`` must be 1). Default None: "partitioned" when
                ``world_size > 1``, else "independent".
            sample_with_replacement: Random sampling with replacement. Default False.
            sample_weights: Relative sampling weights: one float per sample (a sequence or 1-D
                array) or the name of a dataset array holding them. Default None.
            drop_incomplete_batches: Drop each epoch's last batch if smaller. Default False.
            loop_forever: Stream until closed. Default False.
            nb_io_workers: Reader threads on the node; 0 (default) means the node's default.
            nb_proc_workers: Preprocessing processes on the node, >= 0; a stream with
                ``augmentation`` or a ``preprocessor`` gets at least one (they never run in the
                node's own process). Default 0.
            codec: Tensor encoding on the wire: "none" (default), "lz4" or "zstd".
            resume: Continue a stream from a cursor (``BatchStream.cursor`` or its
                ``cursor_bytes()``); the other arguments must match the original stream's.
                Default None: start from the beginning.
            copy: Yield writable arrays owning their memory instead of read-only views of the
                received message (costs one copy per array). Default False.
            max_reconnects: Reconnect attempts after UNAVAILABLE without a batch in between,
                >= 0; 0 raises at the first UNAVAILABLE. Default 20: with the default backoff,
                a node may stay unreachable for about 25 s (16 to 33 s) before UnavailableError.
                With several nodes it counts rounds instead: an UNAVAILABLE node is left for
                the next one at once, and only once every node has failed in a row does the
                stream back off; so all nodes may stay unreachable as long before it gives up.
            initial_backoff: Seconds before the first reconnect, > 0; each further attempt
                waits twice as long, up to ``max_backoff`` (with jitter: between half and all
                of it). Default 0.1.
            max_backoff: Upper bound of one wait, in seconds, > 0. It also bounds how long a
                stream lags behind a node that came back. Default 2.
            cases: Only the samples of these cases (by the dataset's "case" array; see
                ``CaseSelection``): every epoch is drawn from them alone, with the same
                shards, determinism and resume as a whole dataset, e.g. ``"0-79"`` to train
                and ``"80-99"`` to validate. Part of the stream's identity: a cursor resumes
                only the same selection. Default None: every sample.
            start_epoch: Start at batch 0 of this epoch, < ``epochs`` (what a cursor at
                that point resumes; with the same seed, the batches a trainer gets in that
                epoch). Not with ``resume``. Default 0.
            shuffle_window: With ``sample_random``, a chunk-windowed shuffle of windows of about
                this many samples, >= 1, instead of one exact permutation per epoch: the
                node permutes the dataset's storage chunks, cuts them into windows and
                shuffles within each window, so it decodes each chunk about once per epoch
                in bounded memory, at the price of a weaker shuffle (samples of one chunk stay
                within about a window of each other). Every sample still comes once per
                epoch; resume and shards work as without it. Not with replacement or
                weights; part of the stream's identity (a cursor resumes only the same
                window). Default None: the exact permutation.

        Returns:
            A ``BatchStream`` (one node) or ``MultiNodeStream`` (several), yielding tuples of
            numpy arrays in the dataset's array order. Both have ``cursor``,
            ``cursor_bytes()``, ``indices``, ``epoch``, ``batch_index``, ``stall``,
            ``stall_fraction`` and ``close()``.

        Raises:
            TypeError, ValueError: An argument is invalid here; the message names it.
            DataNodeError: From iterating the stream: the node refused the request (e.g.
                NotFoundError, InvalidArgumentError, ResourceExhaustedError) or stayed
                unreachable (UnavailableError).
        """
        request = StreamRequest(
            dataset=_parse_name("dataset", dataset),
            batch_size=_parse_int("batch_size", batch_size, minimum=1),
            sample_random=bool(sample_random),
            sample_with_replacement=bool(sample_with_replacement),
            drop_incomplete_batches=bool(drop_incomplete_batches),
            epochs=_parse_int("epochs", epochs, minimum=1),
            loop_forever=bool(loop_forever),
            nb_io_workers=_parse_int("nb_io_workers", nb_io_workers, minimum=0),
            nb_proc_workers=_parse_int("nb_proc_workers", nb_proc_workers, minimum=0),
            shard=_build_shard(rank, world_size),
            sharing=_parse_sharing(sharing, world_size),
            preprocessor="" if preprocessor is None else _parse_name("preprocessor", preprocessor),
            codec=_CODECS[_parse_option("codec", codec, _CODECS)],
        )
        if seed is not None:
            request.seed = _parse_int("seed", seed, minimum=0, maximum=SEED_LIMIT - 1)
        if sample_weights is not None:
            request.sample_weights.CopyFrom(_build_sample_weights(sample_weights))
        if augmentation is not None:
            request.augmentation.CopyFrom(_build_augmentation(augmentation))
        if cases is not None:
            request.cases.extend(_build_cases(cases))
        request.start_epoch = _parse_int("start_epoch", start_epoch, minimum=0)
        if shuffle_window is not None:
            request.shuffle_window = _parse_int("shuffle_window", shuffle_window, minimum=1)
        stream = _open_stream(
            [node.stream_batches for node in self._nodes],
            _with_resume(request, _parse_cursor(resume)),
            metadata=self._metadata,
            max_reconnects=_parse_int("max_reconnects", max_reconnects, minimum=0),
            initial_backoff=_parse_positive_float("initial_backoff", initial_backoff),
            max_backoff=_parse_positive_float("max_backoff", max_backoff),
            copy=copy,
        )
        self._streams.add(stream)
        return stream

    def preview(
        self,
        dataset: str,
        path: str | os.PathLike[str],
        num_samples: int = 8,
        *,
        sample_random: bool = False,
        seed: int | None = None,
        epoch: int = 0,
        augmentation: Mapping[str, Any] | None = None,
        cases: CaseSelection | None = None,
        sample_with_replacement: bool = False,
        sample_weights: Sequence[float] | npt.ArrayLike | str | None = None,
        image_array: str | None = None,
        mask_array: str | None = None,
        columns: int = 4,
        scale: int | None = None,
    ) -> Preview:
        """Write a PNG grid of samples as a trainer streams them, each beside its original.

        The first ``num_samples`` samples of epoch ``epoch`` of the stream that ``stream()``
        opens with the same arguments, each shown as its original (the same sample without
        augmentation) next to its augmented version, the mask drawn over both in colour: a
        glance shows whether image and mask stay aligned and how strong the augmentation
        is. The layout and colours are those of ``data_client.preview``.

        Args:
            dataset: Dataset name.
            path: The PNG file to write (replaced atomically if it exists).
            num_samples: Samples shown, >= 1 (fewer if the epoch holds fewer). Default 8.
            sample_random, seed, augmentation, cases, sample_with_replacement, sample_weights: As for
                ``stream()``; pass the trainer's to see what it gets. Default seed None:
                one is drawn (it is in the result).
            epoch: The epoch shown, >= 0. Default 0.
            image_array: The array shown as the image. Default None: ``augmentation``'s
                ``x_array``, else "image".
            mask_array: The array drawn over it. Default None: ``augmentation``'s ``y_array``,
                else "mask" if the dataset has one, else no overlay.
            columns: Sample pairs per row, >= 1. Default 4.
            scale: Screen pixels per sample pixel, >= 1. Default None: tiles of about 128
                pixels.

        Returns:
            Where the grid went, which samples it shows and where each tile is.

        Raises:
            TypeError, ValueError: An argument is invalid (named), or an array named is not
                the dataset's.
            OSError: ``path`` cannot be written.
            DataNodeError: The node refused the stream (as ``stream()`` would).
        """
        from data_client.preview import preview  # imports this module: not at the top

        return preview(
            self,
            dataset,
            path,
            num_samples,
            sample_random=sample_random,
            seed=seed,
            epoch=epoch,
            augmentation=augmentation,
            cases=cases,
            sample_with_replacement=sample_with_replacement,
            sample_weights=sample_weights,
            image_array=image_array,
            mask_array=mask_array,
            columns=columns,
            scale=scale,
        )

    def submit_build(
        self,
        output: str,
        patchsize: int,
        volume: ArrayInput,
        mask: ArrayInput | None = None,
        class_list: Sequence[int] | None = None,
        random_order: bool = True,
        batchsize: int = 32,
        file_format: str = "hdf5",
        writer_options: Mapping[str, Any] | None = None,
        *,
        max_patches_per_class: int | None = None,
        register_as: str | None = None,
        overwrite: bool = False,
        slice_axis: int = -1,
        seed: int | None = None,
        executor: str | None = None,
        scheduler_address: str | None = None,
        store_masks: bool = False,
    ) -> BuildJob:
        """Submit a patch-dataset build (``data_tools.patches.create_dataset`` on the node).

        The arguments are create_dataset's, with ``output`` for ``save_path`` and
        ``writer_options`` for ``kwargs``. The node checks them all; the obvious checks are
        repeated here.

        Args:
            output: Name of the output directory under the node's output root.
            patchsize: Patch edge in pixels, >= 1 and at most the slices' sides.
            volume: The 2D slice or 3D volume: a ``DatasetArray``, a ``FileArray``, or a path
                (str) under the node's data root.
            mask: Optional array of the volume's shape holding each pixel's class, in the
                same forms. Default None: every pixel is class 0.
            class_list: Mask values to extract. Default None: every value in the mask.
            random_order: Randomize each class's patch order. Default True.
            batchsize: Patches per write and chunk length, >= 1. Default 32.
            file_format: "hdf5" (default), "zarr" or "bcolz".
            writer_options: JSON-serializable writer options (see the proto's
                ``writer_options`` for the keys each format accepts). Default None.
            max_patches_per_class: At most this many patches per class (>= 1): the first
                ones, or a random subset with ``random_order``. Default None: all.
            register_as: Serve the result as a dataset of this name once the job succeeds,
                with arrays "patch" and "label". Default None.
            overwrite: Replace an existing output once the job succeeds. Default False.
            slice_axis: Axis of a 3D volume indexing its slices, in [-3, 2]. Default -1. A
                medical image is a (z, y, x) array: pass 0 for axial slices (a UserWarning
                says so when a medical image is cut along x).
            seed: Seed of the random choices, >= 0. Default None: the node draws one.
            executor: "local" or "dask". Default None: the node's configured executor.
            scheduler_address: The Dask scheduler's address. Default None: the node's.
            store_masks: Also store each patch's mask patch (needs ``mask``); a registered
                result then serves "patch", "mask" and "label". Default False.

        Returns:
            A ``BuildJob`` handle on the queued job.

        Raises:
            TypeError, ValueError: An argument is invalid here; the message names it.
            InvalidArgumentError, PermissionDeniedError, NotFoundError,
            ResourceExhaustedError: The node refused the request; the details name the field.
        """
        request = jobs_pb2.SubmitBuildJobRequest(
            volume=_build_array_input("volume", volume),
            patchsize=_parse_int("patchsize", patchsize, minimum=1),
            class_list=[
                _parse_int(f"class_list[{i}]", v, minimum=-(2**63))
                for i, v in enumerate(class_list or ())
            ],
            random_order=bool(random_order),
            slice_axis=_parse_int("slice_axis", slice_axis, minimum=-(2**31)),
            executor="" if executor is None else _parse_name("executor", executor),
            scheduler_address=(
                ""
                if scheduler_address is None
                else _parse_name("scheduler_address", scheduler_address)
            ),
            store_masks=bool(store_masks),
        )
        _set_output_fields(
            request, output, batchsize, file_format, writer_options, register_as, overwrite, seed
        )
        _warn_on_image_slice_axis(request)
        if mask is not None:
            request.mask.CopyFrom(_build_array_input("mask", mask))
        if max_patches_per_class is not None:
            request.max_patches_per_class = _parse_int(
                "max_patches_per_class", max_patches_per_class, minimum=1
            )
        job, node = self._call("submit_build_job", request)
        return BuildJob(job.job_id, node.job_calls)

    def submit_import(
        self,
        output: str,
        cases: Sequence[CaseInput],
        *,
        slice_axis: int | None = None,
        orientation: str | None = None,
        spacing: Sequence[float] | None = None,
        size: Sequence[int] | None = None,
        clip: Sequence[float] | None = None,
        normalize: str | None = None,
        keep_unlabelled: float | None = None,
        label_values: Sequence[int] | None = None,
        file_format: str = "hdf5",
        batchsize: int = 32,
        writer_options: Mapping[str, Any] | None = None,
        register_as: str | None = None,
        overwrite: bool = False,
        seed: int | None = None,
    ) -> BuildJob:
        """Submit an import of medical cases (``data_tools.medical.import_cases`` on the node).

        The node writes one dataset of 2D slices (arrays "image", "mask" with labels,
        "case", "slice") and, with ``register_as``, serves it once the job succeeds. The
        options are import_cases'; the node checks them all.

        Args:
            output: Name of the output directory under the node's output root.
            cases: The cases (``CaseInput``: image, optional label, name), at least one.
            slice_axis: Axis of the (z, y, x) arrays cut into slices. Default None: 0.
            orientation: Reorient every case to this code ("RAS", "LPS", ...). Default
                None: keep each case's.
            spacing: Target in-plane spacing (rows, columns). Default None: keep.
            size: Target slice size (rows, columns). Default None: keep the extent.
            clip: (low, high) intensity clipping. Default None.
            normalize: "none", "zscore", "minmax" or "window". Default None: "none".
            keep_unlabelled: Fraction of slices without labels kept. Default None: 1.
            label_values: The label values cases may hold. Default None: any.
            file_format: "hdf5" (default) or "zarr".
            batchsize: Slices per write and chunk length, >= 1. Default 32.
            writer_options: JSON-serializable writer options. Default None.
            register_as: Serve the result as a dataset of this name. Default None.
            overwrite: Replace an existing output once the job succeeds. Default False.
            seed: Seed of the keep_unlabelled draw, >= 0. Default None: the node draws one.

        Returns:
            A ``BuildJob`` handle on the queued job; its ``status().cases`` show progress.

        Raises:
            TypeError, ValueError: An argument is invalid here; the message names it.
            InvalidArgumentError, PermissionDeniedError, ResourceExhaustedError: The node
                refused the request; the details name the field (and the case).
        """
        if not isinstance(cases, Sequence):
            raise TypeError(f"Expected cases to be a sequence of CaseInput. Got {cases!r}.")
        options = jobs_pb2.ImportCases(
            cases=[_build_case_input(i, case) for i, case in enumerate(cases)],
            orientation=orientation or "",
            spacing=list(spacing or ()),
            size=list(size or ()),
            clip=list(clip or ()),
            normalize=normalize or "",
            label_values=list(label_values or ()),
        )
        if slice_axis is not None:
            options.slice_axis = _parse_int("slice_axis", slice_axis, minimum=-(2**31))
        if keep_unlabelled is not None:
            options.keep_unlabelled = keep_unlabelled
        request = jobs_pb2.SubmitBuildJobRequest(import_cases=options)
        _set_output_fields(
            request, output, batchsize, file_format, writer_options, register_as, overwrite, seed
        )
        job, node = self._call("submit_build_job", request)
        return BuildJob(job.job_id, node.job_calls)

    def job(self, job_id: str) -> BuildJob:
        """A handle on a job submitted earlier (by any client); nothing is called yet.

        A job lives on the node that accepted it; with several nodes this handle asks the
        first one (``addresses[0]``). ``submit_build`` returns a handle on the right node.
        """
        return BuildJob(_parse_name("job_id", job_id), self._nodes[0].job_calls)

    def jobs(self) -> list[JobInfo]:
        """Every job the (first answering) node has recorded, in submission order.

        The node answers a page of jobs at a time (ListJobs ``page_token``); this asks for
        every page, from the node that answered the first.
        """
        response, node = self._call("list_jobs", jobs_pb2.ListJobsRequest())
        messages = list(response.jobs)
        while response.next_page_token:
            request = jobs_pb2.ListJobsRequest(page_token=response.next_page_token)
            response = self._call_on(node, "list_jobs", request)
            messages += response.jobs
        return [job_info(message) for message in messages]

    def close(self) -> None:
        """Close every open stream of this client, then the channels; idempotent."""
        for stream in list(self._streams):
            stream.close()
        for node in self._nodes:
            node.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, rpc: str, request: Any) -> tuple[Any, _Node]:
        """The response of unary ``rpc`` from the first node that answers, and that node.

        Raises:
            DataNodeError: The first node that answered refused, or no node answered
                (UnavailableError from the last one).
        """
        for node in self._nodes[:-1]:
            try:
                return self._call_on(node, rpc, request), node
            except UnavailableError:
                continue
        return self._call_on(self._nodes[-1], rpc, request), self._nodes[-1]

    def _call_on(self, node: _Node, rpc: str, request: Any) -> Any:
        try:
            return getattr(node, rpc)(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise translate_rpc_error(error) from error


def _open_stream(
    rpcs: Sequence[_StreamRpc],
    request: StreamRequest,
    *,
    metadata: tuple[tuple[str, str], ...],
    max_reconnects: int,
    initial_backoff: float,
    max_backoff: float,
    copy: bool,
) -> BatchStream | MultiNodeStream:
    """A stream of ``request`` over the nodes whose StreamBatches callables are ``rpcs``.

    One node: a ``BatchStream``. K nodes: a ``MultiNodeStream`` of K lanes, lane k a
    ``BatchStream`` of the request with ``lane {k, K}`` that calls node k first and fails over
    to nodes k+1, k+2, ... (modulo K). The keyword arguments are ``BatchStream``'s.
    """
    options: dict[str, Any] = {
        "metadata": metadata,
        "max_reconnects": max_reconnects,
        "initial_backoff": initial_backoff,
        "max_backoff": max_backoff,
        "copy": copy,
    }
    count = len(rpcs)
    if count == 1:
        return BatchStream(rpcs, request, **options)
    shared = StreamRequest()
    shared.CopyFrom(request)
    if not shared.HasField("seed"):
        # Each node would draw its own seed; the lanes must cut the same epochs.
        shared.seed = secrets.randbelow(SEED_LIMIT)
    lanes = []
    for k in range(count):
        lane_request = StreamRequest()
        lane_request.CopyFrom(shared)
        lane_request.lane.index, lane_request.lane.count = k, count
        lanes.append(BatchStream([*rpcs[k:], *rpcs[:k]], lane_request, **options))
    return MultiNodeStream(
        lanes,
        start=shared.resume if shared.HasField("resume") else None,
        epochs=None if shared.loop_forever else shared.epochs,
        start_epoch=shared.start_epoch,
    )


def _keepalive_options(keepalive: Any) -> tuple[tuple[str, int], ...]:
    """Channel options pinging the node every ``keepalive`` seconds while a call is open."""
    if keepalive is None:
        return ()
    if isinstance(keepalive, bool | np.bool_) or not isinstance(keepalive, numbers.Real):
        raise TypeError(
            f"Expected keepalive to be a number of seconds or None. Got {keepalive!r} instead."
        )
    seconds = float(keepalive)
    if not _KEEPALIVE_MIN <= seconds <= _KEEPALIVE_MAX:
        raise ValueError(
            f"Expected keepalive to be a number of seconds in [{_KEEPALIVE_MIN:g}, "
            f"{_KEEPALIVE_MAX}], or None to turn the pings off. Got {keepalive!r} instead."
        )
    timeout_ms = round(min(seconds, _KEEPALIVE_TIMEOUT_MAX) * 1000)
    return (
        ("grpc.keepalive_time_ms", round(seconds * 1000)),
        ("grpc.keepalive_timeout_ms", timeout_ms),
        # grpcio 1.85 drops the connection only when its general ping timeout (default 60 s)
        # expires, whatever keepalive_timeout_ms says: keep the two equal.
        ("grpc.http2.ping_timeout_ms", timeout_ms),
        # Idle channels stay quiet; unary calls have their own deadline.
        ("grpc.keepalive_permit_without_calls", 0),
        # gRPC stops pinging after 2 pings without data sent (default), and a stream's
        # client sends none after its request: lift the limit or the pings would stop.
        ("grpc.http2.max_pings_without_data", 0),
    )


def _build_array_input(argument: str, value: Any) -> jobs_pb2.ArrayInput:
    if isinstance(value, str | FileArray):
        return jobs_pb2.ArrayInput(file=_file_array(argument, value))
    if isinstance(value, DatasetArray):
        return jobs_pb2.ArrayInput(
            dataset_array=jobs_pb2.DatasetArray(dataset=value.dataset, array=value.array)
        )
    raise TypeError(
        f"Expected {argument} to be a DatasetArray, a FileArray or a path. Got {value!r} instead."
    )


def _set_output_fields(
    request: jobs_pb2.SubmitBuildJobRequest,
    output: Any,
    batchsize: Any,
    file_format: Any,
    writer_options: Any,
    register_as: Any,
    overwrite: Any,
    seed: Any,
) -> None:
    """Check and set the fields every build job has: where and how its result is written."""
    request.batchsize = _parse_int("batchsize", batchsize, minimum=1)
    request.file_format = _parse_name("file_format", file_format)
    request.writer_options = _dump_writer_options(writer_options)
    request.output = _parse_name("output", output)
    request.register_as = "" if register_as is None else _parse_name("register_as", register_as)
    request.overwrite = bool(overwrite)
    if seed is not None:
        request.seed = _parse_int("seed", seed, minimum=0, maximum=2**64 - 1)


def _warn_on_image_slice_axis(request: jobs_pb2.SubmitBuildJobRequest) -> None:
    path = request.volume.file.path
    if path.lower().endswith(_IMAGE_SUFFIXES) and request.slice_axis in (-1, 2):
        warnings.warn(
            f"volume {path!r} is a medical image, a (z, y, x) array: slice_axis="
            f"{request.slice_axis} cuts it along x. Pass slice_axis=0 to cut its axial slices.",
            stacklevel=3,
        )


def _build_case_input(index: int, case: Any) -> jobs_pb2.CaseInput:
    if not isinstance(case, CaseInput):
        raise TypeError(f"Expected cases[{index}] to be a CaseInput. Got {case!r} instead.")
    message = jobs_pb2.CaseInput(image=_file_array(f"cases[{index}].image", case.image))
    message.name = case.name
    if case.label is not None:
        message.label.CopyFrom(_file_array(f"cases[{index}].label", case.label))
    return message


def _file_array(argument: str, value: Any) -> jobs_pb2.FileArray:
    if isinstance(value, str):
        value = FileArray(value)
    if not isinstance(value, FileArray):
        raise TypeError(f"Expected {argument} to be a FileArray or a path. Got {value!r} instead.")
    return jobs_pb2.FileArray(path=value.path, key=value.key)


def _dump_writer_options(options: Mapping[str, Any] | None) -> str:
    if options is None:
        return ""
    if not isinstance(options, Mapping):
        raise TypeError(f"Expected writer_options to be a dict or None. Got {options!r} instead.")
    try:
        return json.dumps(dict(options))
    except TypeError as error:
        raise TypeError(f"Expected writer_options to be JSON-serializable: {error}") from error


def _channel_credentials(tls: TlsOption) -> grpc.ChannelCredentials | None:
    if tls is None or tls is False:
        return None
    if tls is True:
        return grpc.ssl_channel_credentials()
    if isinstance(tls, grpc.ChannelCredentials):
        return tls
    if isinstance(tls, str | os.PathLike | bytes):
        tls = TlsConfig(ca=tls)
    if isinstance(tls, TlsConfig):
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(tls.ca),
            private_key=_read_pem(tls.key),
            certificate_chain=_read_pem(tls.cert),
        )
    raise TypeError(
        "Expected tls to be None, a bool, a CA bundle path, PEM bytes, a TlsConfig or "
        f"grpc.ChannelCredentials. Got {tls!r} instead."
    )


def _read_pem(source: PemSource | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


def _dataset_info(description: DatasetDescription) -> DatasetInfo:
    return DatasetInfo(
        name=description.name,
        length=description.length,
        arrays=tuple(
            ArrayInfo(name=array.name, dtype=np.dtype(array.dtype), shape=tuple(array.shape))
            for array in description.arrays
        ),
        classes=tuple(description.classes),
        registered=description.origin == data_node_pb2.DATASET_ORIGIN_REGISTERED,
    )


def _with_resume(request: StreamRequest, cursor: Cursor | None) -> StreamRequest:
    """``request`` continuing from ``cursor`` (itself when None), with the cursor's seed if unset."""
    if cursor is None:
        return request
    resumed = StreamRequest()
    resumed.CopyFrom(request)
    resumed.resume.CopyFrom(cursor)
    if not resumed.HasField("seed"):
        resumed.seed = cursor.seed
    return resumed


def _build_shard(rank: Any, world_size: Any) -> Shard:
    world_size = _parse_int("world_size", world_size, minimum=1)
    return Shard(
        rank=_parse_int("rank", rank, minimum=0, maximum=world_size - 1), world_size=world_size
    )


_SHARING: Final = {
    "independent": data_node_pb2.SHARING_INDEPENDENT,
    "partitioned": data_node_pb2.SHARING_PARTITIONED,
}


def _parse_sharing(sharing: str | None, world_size: int) -> Any:
    if sharing is None:
        sharing = "partitioned" if world_size > 1 else "independent"
    return _SHARING[_parse_option("sharing", sharing, _SHARING)]


_CASES_FORM: Final = (
    "case numbers >= 0 and inclusive ranges first-last, comma-separated (e.g. '0-79,90'), "
    "a range, a (first, last) pair, or a sequence of these"
)


def _build_cases(cases: CaseSelection) -> list[CaseRange]:
    """The ``StreamRequest.cases`` ranges of a ``CaseSelection``.

    Raises:
        TypeError, ValueError: ``cases`` has none of the accepted forms, holds a range with
            first > last or a negative case, or selects nothing; the message names cases.
    """
    if isinstance(cases, str):
        parts: list[Any] = [part.strip() for part in cases.split(",")]
    elif (isinstance(cases, Sequence) and not isinstance(cases, range | tuple)) or (
        isinstance(cases, tuple) and not (len(cases) == 2 and all(_is_int(v) for v in cases))
    ):
        parts = list(cases)
    else:
        parts = [cases]
    if not parts:
        raise ValueError(f"Expected cases to hold {_CASES_FORM}. Got {cases!r} instead.")
    ranges = [_case_range(part, cases) for part in parts]
    return [CaseRange(first=first, last=last) for first, last in ranges]


def _case_range(part: Any, cases: Any) -> tuple[int, int]:
    first: Any
    last: Any
    if isinstance(part, str):
        first, sep, last = part.partition("-")
        if not sep:
            last = first
        try:
            first, last = int(first), int(last)
        except ValueError:
            raise ValueError(
                f"Expected cases to hold {_CASES_FORM}. Got {cases!r} ({part!r}) instead."
            ) from None
    elif isinstance(part, range):
        if part.step != 1 or not part:
            raise ValueError(
                f"Expected cases' ranges to have step 1 and hold a case. Got {part!r} instead."
            )
        first, last = part.start, part.stop - 1
    elif isinstance(part, tuple) and len(part) == 2:
        first, last = part
    else:
        first = last = part
    if not (_is_int(first) and _is_int(last)):
        raise TypeError(f"Expected cases to hold {_CASES_FORM}. Got {cases!r} instead.")
    if not 0 <= int(first) <= int(last):
        raise ValueError(
            f"Expected each of cases to be 0 <= first <= last. Got {first}-{last} instead."
        )
    return int(first), int(last)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _build_sample_weights(weights: Sequence[float] | npt.ArrayLike | str) -> SampleWeights:
    if isinstance(weights, str):
        return SampleWeights(array=_parse_name("sample_weights", weights))
    values = np.asarray(weights, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(
            "Expected sample_weights to be an array name or a 1-D sequence of floats. "
            f"Got an array of shape {values.shape} instead."
        )
    message = SampleWeights()
    message.values.values.extend(values.tolist())
    return message


def _build_augmentation(augmentation: Mapping[str, Any]) -> Augmentation:
    """The Augmentation message for an ``augmentation`` dict; its keys are the message's fields."""
    fields = Augmentation.DESCRIPTOR.fields_by_name
    message = Augmentation()
    for key, value in augmentation.items():
        field = fields.get(key)
        if field is None:
            raise ValueError(
                f"Expected augmentation keys among {sorted(fields)}. Got {key!r} instead."
                + _did_you_mean(key, fields)
            )
        if value is None:
            continue
        try:
            if field.is_repeated:
                values = np.atleast_1d(np.asarray(value)).tolist()
                getattr(message, key).extend(values)
            else:
                setattr(message, key, value)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"Expected augmentation[{key!r}] to be {_describe_field(field)}. Got {value!r} instead."
            ) from error
    if not message.x_array:
        raise ValueError(
            "Expected augmentation['x_array'] to name the array to transform. Got none."
        )
    return message


def _describe_field(field: Any) -> str:
    kind = {
        field.TYPE_STRING: "a string",
        field.TYPE_BOOL: "a bool",
        field.TYPE_DOUBLE: "a float",
    }.get(field.type, "an integer")
    return f"{kind} or a sequence of them" if field.is_repeated else kind


def _parse_cursor(resume: Cursor | bytes | None) -> Cursor | None:
    if resume is None or isinstance(resume, Cursor):
        return resume
    if isinstance(resume, bytes):
        return Cursor.FromString(resume)
    raise TypeError(
        f"Expected resume to be a Cursor, its serialized bytes or None. Got {resume!r} instead."
    )


def _parse_name(argument: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"Expected {argument} to be a non-empty string. Got {value!r} instead.")
    return value


def _parse_int(argument: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Expected {argument} to be an integer. Got {value!r} instead.")
    result = int(value)
    if result < minimum or (maximum is not None and result > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"Expected {argument} to be an integer {bounds}. Got {result} instead.")
    return result


def _parse_positive_float(argument: str, value: Any) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected {argument} to be a number. Got {value!r} instead.")
    result = float(value)
    if not (math.isfinite(result) and result > 0):
        raise ValueError(f"Expected {argument} to be a finite number > 0. Got {value!r} instead.")
    return result


def _parse_option(argument: str, value: Any, options: Mapping[str, Any]) -> str:
    if isinstance(value, str) and value in options:
        return value
    hint = _did_you_mean(value, options) if isinstance(value, str) else ""
    raise ValueError(
        f"Expected {argument} to be one of {sorted(options)}. Got {value!r} instead.{hint}"
    )


def _did_you_mean(value: str, choices: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""

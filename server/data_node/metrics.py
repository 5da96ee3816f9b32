"""The node's Prometheus metrics: what it serves, where a batch's time goes, cache and jobs.

Every node has its own :class:`NodeMetrics` (its own ``CollectorRegistry``, never the
process-wide default one, so several nodes in one process keep apart); with
``[metrics] listen`` it is served over HTTP at ``/metrics``. Metrics (``dataset`` is the
name of a served dataset, never a string a request made up):

* ``data_node_batches_total{dataset}``: batches sent (taken by gRPC);
* ``data_node_bytes_total{dataset}``: encoded ``Batch`` bytes sent;
* ``data_node_open_streams{dataset}``: streams being served;
* ``data_node_stream_queue_depth{dataset}``: batches finished and waiting, summed over the
  open streams (as of each stream's last batch sent): high when the trainers (or the
  network) are the bottleneck, 0 when the trainers wait for the node;
* ``data_node_stage_seconds{dataset,stage}``: histogram of seconds per batch and stage:
  ``read`` (reading the rows from storage), ``augment`` (augmentation and preprocessor),
  ``encode`` (numpy to wire bytes), ``send`` (gRPC taking the message, waiting for the
  client's flow control included: backpressure shows here);
* ``data_node_stream_errors_total{dataset,code}``: streams of a served dataset refused (a
  bad field, a limit) or ended with an error status, by status code name; a client that
  cancels or goes away is not counted;
* ``data_node_decoded_bytes_total{dataset}``: bytes of storage chunks decoded for its
  streams (through the chunk cache: read on a miss or decoded ahead; without it, each chunk
  every batch reads, whole: ``data_tools.io.decoded_nbytes``);
* ``data_node_delivered_bytes_total{dataset}``: bytes of the sample arrays of the batches
  sent, before encoding;
* ``data_node_read_amplification{dataset}``: decoded over delivered bytes since the node
  started (1 when each chunk is decoded once; an exact shuffle over more than the cache
  holds decodes a chunk per sample or so);
* ``data_node_cache_{hits,misses,evictions,decoded_ahead}_total``, ``data_node_cache_bytes``,
  ``data_node_cache_max_bytes``: the decoded-chunk cache (only with a cache);
* ``data_node_jobs{state}``: build jobs by state (QUEUED, RUNNING, SUCCEEDED, FAILED,
  CANCELLED); QUEUED is the job queue's depth;
* ``data_node_pool_workers``, ``data_node_pool_busy_workers``: the worker pool's processes
  alive, and those running a batch now (only with a pool).

The endpoint cannot be used to exhaust the node: it serves at most
:data:`MAX_CONNECTIONS` connections at once, each on its own thread (named
``data_node-metrics-conn``) and for at most :data:`CONNECTION_TIMEOUT_S` seconds without a
byte; a connection beyond the limit is closed as soon as it is accepted. A thousand idle
connections therefore hold at most ``MAX_CONNECTIONS`` threads and descriptors, each for a
few seconds.

Cost: a batch updates a few counters and one histogram per stage, each behind its own
short lock and through label children looked up once per stream; the cache and job figures
and pool figures are read only when scraped.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import TYPE_CHECKING, Any, Final, Protocol, Self
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping
    from types import TracebackType

    from prometheus_client.metrics_core import Metric

    from data_tools.chunk_cache import ChunkCache
    from data_tools.io.data_flow import BatchInfo

__all__ = [
    "CONNECTION_TIMEOUT_S",
    "MAX_CONNECTIONS",
    "STAGES",
    "STAGE_BUCKETS",
    "JobCounts",
    "NodeMetrics",
    "PoolCounts",
    "StreamMetrics",
]

MAX_CONNECTIONS: Final = 8
"""Connections the metrics endpoint serves at once; more are closed when accepted."""
CONNECTION_TIMEOUT_S: Final = 5.0
"""Seconds a metrics connection may stay silent before the endpoint closes it."""

STAGES = ("read", "augment", "encode", "send")
# Seconds: a small batch encodes in tens of microseconds, a slow read takes seconds.
STAGE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class JobCounts(Protocol):
    """What the metrics read of the job manager."""

    def count_by_state(self) -> Mapping[str, int]:
        """Jobs per state name ("QUEUED", "RUNNING", ...), every state present."""
        ...


class PoolCounts(Protocol):
    """What the metrics read of a worker pool (data_tools.io.pool.WorkerPool)."""

    @property
    def num_workers(self) -> int: ...

    @property
    def busy_workers(self) -> int: ...


class NodeMetrics:
    """The metrics of one node, in a registry of their own, optionally served over HTTP.

    Args:
        datasets: Names of the datasets served from the start; their series exist (at 0)
            before their first stream. Default: none (a dataset's series then appear with
            its first stream).
        cache: The node's decoded-chunk cache, read when scraped. Default None: no cache
            metrics.
        jobs: The job manager, read when scraped. Default None: no job metrics.
        pool: The worker pool, read when scraped. Default None: no pool metrics.

    Attributes:
        registry: The registry holding every metric of the node (what ``/metrics`` serves).
        batches, bytes, open_streams, queue_depth, stage_seconds, stream_errors: The
            metrics the streams update (see the module docstring).
    """

    def __init__(
        self,
        datasets: Iterable[str] = (),
        *,
        cache: ChunkCache | None = None,
        jobs: JobCounts | None = None,
        pool: PoolCounts | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.batches = Counter("data_node_batches", "Batches sent.", ["dataset"], registry=registry)
        self.bytes = Counter(
            "data_node_bytes", "Encoded Batch bytes sent.", ["dataset"], registry=registry
        )
        self.open_streams = Gauge(
            "data_node_open_streams", "Streams being served.", ["dataset"], registry=registry
        )
        self.queue_depth = Gauge(
            "data_node_stream_queue_depth",
            "Batches finished and waiting to be sent, summed over the open streams "
            "(as of each stream's last batch sent).",
            ["dataset"],
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "data_node_stage_seconds",
            "Seconds per batch in each stage: read (rows from storage), augment "
            "(augmentation and preprocessor), encode (to wire bytes), send (gRPC taking "
            "the message, waiting on the client's flow control included: backpressure).",
            ["dataset", "stage"],
            registry=registry,
            buckets=STAGE_BUCKETS,
        )
        self.decoded_bytes = Counter(
            "data_node_decoded_bytes",
            "Bytes of storage chunks decoded for the streams (through the chunk cache).",
            ["dataset"],
            registry=registry,
        )
        self.delivered_bytes = Counter(
            "data_node_delivered_bytes",
            "Bytes of the sample arrays of the batches sent, before encoding.",
            ["dataset"],
            registry=registry,
        )
        self.read_amplification = Gauge(
            "data_node_read_amplification",
            "Bytes decoded over bytes delivered since the node started.",
            ["dataset"],
            registry=registry,
        )
        # dataset -> [decoded, delivered] since the node started, for the gauge.
        self._read_totals: dict[str, list[int]] = {}
        self._read_lock = threading.Lock()
        self.stream_errors = Counter(
            "data_node_stream_errors",
            "Streams refused or ended with an error status, by gRPC status code name.",
            ["dataset", "code"],
            registry=registry,
        )
        if cache is not None:
            registry.register(_CacheCollector(cache))
        if jobs is not None:
            registry.register(_JobCollector(jobs))
        if pool is not None:
            registry.register(_PoolCollector(pool))
        for name in datasets:
            self.stream(name)
        self._http: tuple[_BoundedServer, threading.Thread] | None = None

    def stream(self, dataset: str) -> StreamMetrics:
        """The metrics of one stream of ``dataset`` (a served dataset's name)."""
        return StreamMetrics(self, dataset)

    def bytes_read(self, dataset: str, decoded: int, delivered: int) -> float:
        """Add to ``dataset``'s decoded and delivered bytes; return its amplification now."""
        with self._read_lock:
            totals = self._read_totals.setdefault(dataset, [0, 0])
            totals[0] += decoded
            totals[1] += delivered
            return totals[0] / totals[1] if totals[1] else 0.0

    def stream_error(self, dataset: str, code: str) -> None:
        """Count a stream of ``dataset`` that ended with status ``code`` (e.g. "INTERNAL")."""
        self.stream_errors.labels(dataset, code).inc()

    @property
    def port(self) -> int | None:
        """The port of the HTTP endpoint, or None when it is not serving."""
        return None if self._http is None else int(self._http[0].server_port)

    def serve(self, listen: str) -> int:
        """Serve ``/metrics`` over HTTP on ``listen`` ("host:port"; port 0 picks one).

        Returns:
            The port bound.

        Raises:
            RuntimeError: The address cannot be bound (in use, or an unknown host); the
                message names ``metrics.listen``.
        """
        host, _, port = listen.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")  # "[::1]:9400"
        try:
            family = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0][0]
            server = _BoundedServer((host, int(port)), family)
        except OSError as error:
            raise RuntimeError(
                f"metrics.listen: cannot bind {listen!r} ({error.strerror or error})."
            ) from error
        server.set_app(make_wsgi_app(self.registry))
        thread = threading.Thread(
            target=server.serve_forever, name="data_node-metrics", daemon=True
        )
        thread.start()
        self._http = server, thread
        return int(server.server_port)

    def close(self) -> None:
        """Stop the HTTP endpoint, if serving, and free its port; idempotent."""
        http, self._http = self._http, None
        if http is None:
            return
        server, thread = http
        server.shutdown()
        server.server_close()
        thread.join()
        server.join_connections()


class StreamMetrics:
    """One stream's handles on its dataset's metrics; ``with`` it while the stream is open.

    Label children are looked up once here, so a batch costs a few short-locked updates.
    """

    def __init__(self, metrics: NodeMetrics, dataset: str) -> None:
        self._batches = metrics.batches.labels(dataset)
        self._bytes = metrics.bytes.labels(dataset)
        self._open = metrics.open_streams.labels(dataset)
        self._queue_depth = metrics.queue_depth.labels(dataset)
        self._read, self._augment, self._encode, self._send = (
            metrics.stage_seconds.labels(dataset, stage) for stage in STAGES
        )
        self._decoded = metrics.decoded_bytes.labels(dataset)
        self._delivered = metrics.delivered_bytes.labels(dataset)
        self._amplification = metrics.read_amplification.labels(dataset)
        self._metrics = metrics
        self._dataset = dataset
        self._ready = 0

    def __enter__(self) -> Self:
        self._open.inc()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open.dec()
        self._queue_depth.dec(self._ready)
        self._ready = 0

    def batch_sent(
        self, info: BatchInfo, nbytes: int, encode_seconds: float, send_seconds: float
    ) -> None:
        """Count a batch gRPC has taken: its bytes, stage times and the queue behind it.

        Args:
            info: The batch as data_flow handed it out (read and augment seconds, ready).
            nbytes: Its encoded size.
            encode_seconds: Seconds encoding it took.
            send_seconds: Seconds from handing the message to gRPC until gRPC asked for
                the next one.
        """
        self._batches.inc()
        self._bytes.inc(nbytes)
        self._read.observe(info.read_seconds)
        self._augment.observe(info.preprocess_seconds)
        self._encode.observe(encode_seconds)
        self._send.observe(send_seconds)
        self._queue_depth.inc(info.ready - self._ready)
        self._ready = info.ready

    def bytes_read(self, decoded: int, delivered: int) -> None:
        """Count the chunk bytes decoded for a batch sent and the bytes of its arrays."""
        self._decoded.inc(decoded)
        self._delivered.inc(delivered)
        self._amplification.set(self._metrics.bytes_read(self._dataset, decoded, delivered))


class _CacheCollector:
    """The decoded-chunk cache's counters, read from ``cache.stats()`` when scraped."""

    def __init__(self, cache: ChunkCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        stats = self._cache.stats()
        yield CounterMetricFamily(
            "data_node_cache_hits", "Chunk reads served from the cache.", value=stats.hits
        )
        yield CounterMetricFamily(
            "data_node_cache_misses",
            "Chunks read and decoded from storage (on a lookup that missed, or ahead of need).",
            value=stats.misses,
        )
        yield CounterMetricFamily(
            "data_node_cache_evictions",
            "Chunks dropped to stay within the budget.",
            value=stats.evictions,
        )
        yield CounterMetricFamily(
            "data_node_cache_decoded_ahead",
            "Of the misses, the chunks decoded ahead of need for the streams.",
            value=stats.decoded_ahead,
        )
        yield GaugeMetricFamily(
            "data_node_cache_bytes", "Bytes of decoded chunks held.", value=stats.nbytes
        )
        yield GaugeMetricFamily(
            "data_node_cache_max_bytes", "The cache's budget in bytes.", value=stats.max_bytes
        )


class _JobCollector:
    """Build jobs by state, counted by the job manager when scraped."""

    def __init__(self, jobs: JobCounts) -> None:
        self._jobs = jobs

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "data_node_jobs", "Build jobs by state (QUEUED: the queue's depth).", labels=["state"]
        )
        for state, count in self._jobs.count_by_state().items():
            family.add_metric([state], count)
        yield family


class _PoolCollector:
    """The worker pool's processes, all and busy, read when scraped."""

    def __init__(self, pool: PoolCounts) -> None:
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "data_node_pool_workers",
            "Worker processes of the pool alive (starting ones included).",
            value=self._pool.num_workers,
        )
        yield GaugeMetricFamily(
            "data_node_pool_busy_workers",
            "Worker processes of the pool running a batch now.",
            value=self._pool.busy_workers,
        )


class _QuietHandler(WSGIRequestHandler):
    """Serves one scrape; gives up on a connection silent for ``CONNECTION_TIMEOUT_S``."""

    timeout = CONNECTION_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: a scrape every few seconds would flood the node's log."""


class _BoundedServer(WSGIServer):
    """A WSGI server with one thread per connection, at most ``MAX_CONNECTIONS`` of them."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily) -> None:
        self.address_family = family
        super().__init__(address, _QuietHandler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve ``request`` on a thread of its own, or close it when all slots are taken."""
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        thread = threading.Thread(
            target=self._serve, args=(request, client_address), name="data_node-metrics-conn"
        )
        thread.daemon = True
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            with contextlib.suppress(OSError):  # timed out, or the client went away
                self.finish_request(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Drop a failed connection quietly (a scraper's problem, not the node's)."""

    def join_connections(self) -> None:
        """Wait for the connections being served (each ends within its timeout)."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(CONNECTION_TIMEOUT_S + 1)

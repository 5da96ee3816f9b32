"""Build, run and stop a data node: gRPC server, health and reflection services, datasets, jobs.

Security: with ``[tls]`` the port speaks only TLS (and, with ``tls.ca``, only
to clients presenting a certificate from that CA). Every call passes data_node.rpc.admission's
interceptor first: with ``[auth]``, bearer tokens and roles (every call but health); always,
the limits on open calls, node-wide and per token. Requests larger than
``limits.max_request_bytes`` (compressed or not) are refused by gRPC before they are parsed.

Metrics: with ``[metrics] listen`` the node serves Prometheus metrics (data_node.metrics)
over plain HTTP at ``/metrics``, from ``start()`` until ``stop()``.

Stop order (``NodeServer.stop``): health says NOT_SERVING, so load balancers and
``data-node health`` see the node going; new calls are refused and running ones get
``grace`` seconds; open streams are told to end, and job watches too (UNAVAILABLE); each
leaves the worker pool as its generator closes; once every call has ended, the worker pool
stops (its processes, started with the node, see data_tools.io.pool), then the job manager
stops: running jobs' processes are terminated and recorded as interrupted (FAILED), queued
jobs stay queued for the next start.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import threading
from concurrent import futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from data_node.catalog.dataset_store import DatasetStore
from data_node.catalog.datasets import DatasetRegistry
from data_node.jobs.manager import JobManager
from data_node.metrics import NodeMetrics
from data_node.resources import auto_cache_bytes, return_large_frees
from data_node.rpc.admission import Admission, MemoryBudget
from data_node.rpc.reflection import enable_reflection
from data_node.rpc.servicer import SERVICE_NAME, DataNodeServicer, method_handlers
from data_tools.chunk_cache import ChunkCache
from data_tools.io.pool import WorkerPool

if TYPE_CHECKING:
    from data_node.config import LimitsConfig, NodeConfig, TlsConfig

__all__ = ["NodeServer", "build_server", "serve", "server_credentials", "server_options"]

logger = logging.getLogger(__name__)
# Threads beyond the open calls' limit: they refuse calls over a limit at once (admission
# runs on a pool thread), however many calls are held open.
_SPARE_THREADS = 16
# Seconds stop() waits for cancelled streams to release their workers.
_STREAM_CLOSE_TIMEOUT = 10.0
# Clients ping to detect a hung node (data_client's keepalive, >= 1 s apart). gRPC's own
# policy (pings >= 5 min apart while the node sends nothing, e.g. to a slow consumer, none
# on an idle connection) would answer them with GOAWAY "too_many_pings", ending every call
# on the connection. Accept pings 0.5 s apart (jitter margin under the client's 1 s floor),
# on idle connections too (a client may opt in); a third earlier one with nothing sent
# in between still gets GOAWAY.
_PING_POLICY = [
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_ping_strikes", 2),
]


def server_options(limits: LimitsConfig) -> list[tuple[str, Any]]:
    """The node's gRPC options: it sends Batches of up to ``max_message_bytes`` and takes
    requests of up to ``max_request_bytes`` (gRPC checks a compressed request's size, and
    its size once decompressed, against that limit), and accepts clients' keepalive pings.
    """
    return [
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.max_receive_message_length", limits.max_request_bytes),
        *_PING_POLICY,
        # gRPC sets SO_REUSEPORT by default: a second node could bind a port a node
        # serves, and clients would alternate between them. One node per port.
        ("grpc.so_reuseport", 0),
    ]


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """The port's TLS credentials; mutual TLS (client certificates required) with a client CA.

    Raises:
        OSError: A file cannot be read.
    """
    client_ca = None if tls.ca is None else tls.ca.read_bytes()
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


@dataclass
class NodeServer:
    """A built (not yet started) node. ``start()``, then ``stop()`` or ``wait()``.

    ``metrics`` are served on ``metrics_listen`` ("host:port"; None: not served). ``pool``
    is the RPC thread pool, shut down by ``stop()``.
    """

    server: grpc.Server
    port: int
    servicer: DataNodeServicer
    health: health.HealthServicer
    jobs: JobManager
    admission: Admission
    metrics: NodeMetrics = field(default_factory=NodeMetrics)
    metrics_listen: str | None = None
    pool: futures.ThreadPoolExecutor | None = None
    workers: WorkerPool | None = None

    @property
    def metrics_port(self) -> int | None:
        """The port serving ``/metrics`` (once started), or None."""
        return self.metrics.port

    def start(self) -> None:
        """Start the metrics endpoint, serving and running jobs; health reports SERVING.

        Raises:
            RuntimeError: ``metrics_listen`` cannot be bound (the message names
                metrics.listen); the node is stopped again.
        """
        if self.metrics_listen is not None:
            try:
                port = self.metrics.serve(self.metrics_listen)
            except RuntimeError:
                self.stop(None)
                raise
            host = self.metrics_listen.rpartition(":")[0]
            logger.info("metrics: http://%s:%d/metrics", host, port)
        if self.workers is not None:
            self.workers.start()
            logger.info("worker pool: %d processes", self.workers.num_workers)
        self.server.start()
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        # Jobs (and deleting what an earlier run left) start once health answers: a
        # restarted node is healthy at once, however much it has to delete.
        self.jobs.start()

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop: NOT_SERVING, refuse new calls, end streams and watches, wait, stop the jobs."""
        self.health.enter_graceful_shutdown()
        stopped = self.server.stop(grace)
        self.servicer.stop_streams()
        self.jobs.stop_watchers()
        stopped.wait()
        # Cancelled streams close their pipelines on their own threads; wait for them so
        # the workers are stopped by the streams, not killed when the process exits.
        self.servicer.wait_for_streams(_STREAM_CLOSE_TIMEOUT)
        if self.workers is not None:
            self.workers.close()
        self.jobs.close()
        self.metrics.close()
        if self.pool is not None:
            self.pool.shutdown(wait=False)  # its idle threads end; gRPC never shuts it down

    def wait(self) -> None:
        """Block until the server has stopped."""
        self.server.wait_for_termination()


def build_server(config: NodeConfig, address: str | None = None) -> tuple[NodeServer, int]:
    """Open every dataset and build the server bound to ``address`` (default config.listen).

    Returns:
        The node and the port it is bound to (useful with port 0).

    Raises:
        ConfigError: A configured dataset cannot be opened or its arrays do not line up, or
            the registered datasets' file in the state dir cannot be read.
        OSError: The state dir or output root cannot be created, or a TLS file read.
        sqlite3.DatabaseError: The job database in the state dir cannot be opened.
        RuntimeError: The address cannot be bound (or the TLS certificate and key do not
            match).
    """
    # Freed batches go back to the system: the node holds what its streams reserve.
    return_large_frees()
    credentials = None if config.tls is None else server_credentials(config.tls)
    admission = Admission(config.limits, None if config.auth is None else config.auth.tokens)
    cache_bytes = _cache_bytes(config)
    cache = ChunkCache(cache_bytes, decode_ahead=config.cache.decode_ahead) if cache_bytes else None
    store = DatasetStore(
        config.state_dir, {"data_root": config.data_root, "output_root": config.output_root}
    )
    registry = DatasetRegistry.from_config(config.datasets, cache, store)
    jobs = JobManager(config, registry)
    workers = WorkerPool(config.workers.processes, preload=_worker_preload(config))
    metrics = NodeMetrics(
        (dataset.name for dataset in registry), cache=cache, jobs=jobs, pool=workers
    )
    budget = MemoryBudget(config.limits.max_memory_bytes, cache_bytes)
    servicer = DataNodeServicer(config, registry, jobs, metrics, budget, workers)
    pool = futures.ThreadPoolExecutor(
        max_workers=config.limits.max_open_calls + _SPARE_THREADS,
        thread_name_prefix="data_node-rpc",
    )
    server = grpc.server(
        pool,
        interceptors=[admission],
        options=server_options(config.limits),
    )
    server.add_generic_rpc_handlers((method_handlers(servicer),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(server, (SERVICE_NAME, health.SERVICE_NAME))
    target = address or config.listen
    try:
        if credentials is None:
            port = server.add_insecure_port(target)
        else:
            port = server.add_secure_port(target, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        jobs.close()
        workers.close()
        pool.shutdown(wait=False)
        raise RuntimeError(f"node.listen: cannot bind {target!r}{_bind_hint(target, credentials)}.")
    node = NodeServer(
        server,
        port,
        servicer,
        health_servicer,
        jobs,
        admission,
        metrics,
        config.metrics.listen,
        pool,
        workers,
    )
    return node, port


def _worker_preload(config: NodeConfig) -> list[str]:
    """What the pool's workers import as they start: what a stream's transform runs."""
    preprocessors = sorted({path.partition(":")[0] for path in config.preprocessors.values()})
    return ["h5py", "data_tools.data_augmentation", "data_tools.io.preprocessing", *preprocessors]


def _cache_bytes(config: NodeConfig) -> int:
    """``[cache] max_bytes``, sized from the node's memory when the config leaves it out;
    logged either way, saying which."""
    if config.cache.max_bytes is not None:
        nbytes, how = config.cache.max_bytes, "explicit: [cache] max_bytes of the config"
    else:
        nbytes, how = auto_cache_bytes(config.limits.max_memory_bytes)
        how = f"automatic: {how}"
    logger.info("cache.max_bytes: %d bytes (%.0f MiB), %s", nbytes, nbytes / 2**20, how)
    return nbytes


def _bind_hint(target: str, credentials: grpc.ServerCredentials | None) -> str:
    """Why ``target`` could not be bound, where a plain socket can tell."""
    host, _, port = target.rpartition(":")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host.strip("[]"), int(port)))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            return f": port {port} is already in use (another node or program serves it)"
    except ValueError:
        pass
    return "" if credentials is None else " (or tls.cert and tls.key do not match)"


def serve(config: NodeConfig, *, ready: threading.Event | None = None) -> None:
    """Run a node until SIGTERM or SIGINT, then stop it in order (see NodeServer.stop)."""
    node, port = build_server(config)
    node.start()
    logger.info("data node serving %d dataset(s) on port %d", len(config.datasets), port)
    logger.info("security: %s; %s", _describe_tls(config), _describe_auth(config))
    stopping = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        logger.info("received %s; stopping", signal.Signals(signum).name)
        stopping.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if ready is not None:
            ready.set()
        stopping.wait()
        node.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _describe_tls(config: NodeConfig) -> str:
    if config.tls is None:
        return "plaintext (no [tls])"
    if config.tls.ca is None:
        return "TLS"
    return "mutual TLS (client certificates required)"


def _describe_auth(config: NodeConfig) -> str:
    if config.auth is None:
        return "no bearer tokens (no [auth]): every caller is let in"
    roles = [token.role for token in config.auth.tokens]
    return f"{roles.count('read')} read and {roles.count('build')} build token(s)"

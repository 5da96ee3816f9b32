"""The node's configuration: one TOML file plus ``DATA_NODE_*`` overrides, validated once.

A config file looks like this (relative paths are relative to the file's directory for
``data_root``, ``state_dir`` and ``output_root``, and relative to ``data_root`` for sources)::

    [node]
    listen = "127.0.0.1:50051"     # host:port ([::1]:port for IPv6); port 0 picks a free one
    data_root = "data"             # every source must resolve inside it
    state_dir = "state"            # the node's own files (the job database); apart from
                                   # data_root and output_root (checked)
    output_root = "outputs"        # build jobs write their outputs inside it; may lie in
                                   # data_root, never hold it (checked)

    [limits]
    max_batch_size = 4096          # see LimitsConfig for every limit and its default

    [jobs]                         # patch-dataset build jobs; see JobsConfig
    max_concurrent_jobs = 2
    executor = "local"             # or "dask", with scheduler_address

    [workers]                      # the warm worker pool of every stream; see WorkersConfig
    processes = 8                  # default: the cores this process may use

    [cache]                        # decoded storage chunks shared by streams; see CacheConfig
    max_bytes = 536870912          # 0 turns it off
    decode_ahead = 8               # threads decoding chunks ahead; default: the cores, 0: none

    [metrics]                      # optional Prometheus endpoint; see MetricsConfig
    listen = "9400"                # a port alone binds loopback; "0.0.0.0:9400": every host

    [tls]                          # optional; see TlsConfig
    cert = "server.pem"            # the node's certificate chain (PEM)
    key = "server.key"             # its private key (PEM)
    ca = "ca.pem"                  # optional: mutual TLS, clients need a certificate from it

    [auth]                         # optional bearer tokens; see AuthConfig
    tokens_file = "tokens.txt"     # lines "TOKEN [ROLE]", ROLE "read" or "build" (default)
    tokens_env = "NODE_TOKENS"     # and/or a variable holding "TOKEN [ROLE]" entries

    [preprocessors]                # name -> "package.module:function"
    scale = "my_project.prep:scale"

    [datasets.brains]
    class_list = [0, 1]            # optional: one class per source; adds a "label" array
    maxlen = 1000                  # optional: at most this many samples per source
    [datasets.brains.arrays]       # arrays iterated in tandem, in this order
    image = [{ path = "healthy.h5", key = "image" }, { path = "tumour.zarr", key = "image" }]
    mask = [{ path = "healthy.h5", key = "mask" }, { path = "tumour.zarr", key = "mask" }]

A source's ``format`` ("hdf5", "zarr" or "bcolz") is taken from its suffix (.h5/.hdf5,
.zarr, .bcolz) unless given. The ``tls`` and ``auth`` files are relative to the config
file's directory. Environment variables ``DATA_NODE_<SECTION>__<KEY>`` override scalar keys
of the ``node``, ``limits``, ``jobs``, ``workers``, ``cache``, ``metrics``, ``tls`` and ``auth`` sections (for example
``DATA_NODE_LIMITS__MAX_OPEN_STREAMS=8``); their values are read as TOML values, falling
back to a plain string. An unknown ``DATA_NODE_*`` variable is an error, not a warning.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_node.errors import ConfigError, PathOutsideRootError
from data_node.fields import not_one_of
from data_node.resources import usable_cores
from data_tools.storage import FORMATS, WRITABLE_FORMATS, Root
from data_wire.addresses import split_address
from data_wire.defaults import DEFAULT_ADDRESS, DEFAULT_MAX_MESSAGE_BYTES

__all__ = [
    "RENAMED_KEYS",
    "ROLES",
    "ArrayConfig",
    "AuthConfig",
    "BearerToken",
    "CacheConfig",
    "DatasetConfig",
    "JobsConfig",
    "LimitsConfig",
    "MetricsConfig",
    "NodeConfig",
    "SourceConfig",
    "TlsConfig",
    "WorkersConfig",
    "load",
    "parse_config",
    "parse_dataset",
    "resolve_inside",
    "resolve_preprocessor",
]

ENV_PREFIX = "DATA_NODE_"
# Suffix -> the stored format it names, for the formats data_tools writes (and so serves).
SOURCE_FORMATS = {suffix: name for name in WRITABLE_FORMATS for suffix in FORMATS[name].suffixes}
LABEL_ARRAY = "label"
EXECUTORS = ("dask", "local")
MiB = 1 << 20
LOOPBACK = "127.0.0.1"
GiB = 1 << 30
RENAMED_KEYS = {
    "tls.cert_file": "tls.cert",
    "tls.key_file": "tls.key",
    "tls.client_ca_file": "tls.ca",
    "limits.max_io_workers": "limits.max_nb_io_workers",
    "limits.max_proc_workers": "limits.max_nb_proc_workers",
}
"""Old key -> its new name (one name per concept: README, Names); an old key is refused."""
ROLES = ("build", "read")
"""Token roles: "read" lists, describes and streams datasets; "build" may also run jobs."""
# RFC 6750's b64token: what a bearer token may hold (it travels as an HTTP header value).
_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


#: The most worker processes a node starts: far more than the cores of any one machine.
MAX_WORKER_PROCESSES = 1024


@dataclass(frozen=True)
class LimitsConfig:
    """Per-node limits; a request beyond one gets RESOURCE_EXHAUSTED or INVALID_ARGUMENT.

    Attributes:
        max_batch_size: Largest batch_size a stream may ask for.
        max_batch_bytes: Largest encoded batch, in bytes; bounds the node's memory per batch.
        max_open_streams: Streams served at once; more get RESOURCE_EXHAUSTED.
        max_open_streams_per_token: Streams one bearer token may hold open at once; more
            get RESOURCE_EXHAUSTED. Needs ``[auth]``. None (default): only
            ``max_open_streams`` applies.
        max_open_calls: Calls open at once: long-lived ones (StreamBatches, WatchJob,
            health Watch, server reflection) and unary ones until answered (from before
            their request arrives); more get RESOURCE_EXHAUSTED. The RPC pool has this many
            threads plus spare ones that refuse calls over a limit.
        max_open_calls_per_token: Calls one bearer token may hold open at once (with
            ``[auth]``; calls without a token, to the health service, count as one token);
            more get RESOURCE_EXHAUSTED, so one client cannot take the others' threads.
        max_nb_io_workers: Largest nb_io_workers a stream may ask for.
        max_nb_proc_workers: Largest nb_proc_workers a stream may ask for: the most of the
            pool's workers it uses at once, also for a stream with a transform that leaves
            nb_proc_workers 0. Default ``MAX_WORKER_PROCESSES``: no cap below the pool's size.
        max_message_bytes: gRPC send limit: the largest message (a Batch) the node sends.
        max_request_bytes: gRPC receive limit: the largest request the node takes, checked
            on the compressed and on the decompressed message before the request is parsed.
        max_in_flight: Batches a stream prepares ahead of the consumer.
        max_memory_bytes: The node's memory budget: what its open streams may hold (each
            reserves its batches in flight, see ``StreamPlan.memory_bytes``) plus the chunk
            cache's ``cache.max_bytes``. A stream that does not fit gets RESOURCE_EXHAUSTED
            naming it.
    """

    max_batch_size: int = 4096
    max_batch_bytes: int = 256 * MiB
    max_open_streams: int = 64
    max_open_streams_per_token: int | None = None
    max_open_calls: int = 96
    max_open_calls_per_token: int = 32
    max_nb_io_workers: int = 8
    max_nb_proc_workers: int = MAX_WORKER_PROCESSES
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_request_bytes: int = 4 * MiB
    max_in_flight: int = 4
    max_memory_bytes: int = 8 * GiB


@dataclass(frozen=True)
class CacheConfig:
    """The node's shared cache of decoded storage chunks (``[cache]``).

    Attributes:
        max_bytes: Bytes of decoded chunks kept, shared by every stream of every dataset
            read in the node process; 0 turns it off. None (default): sized when the node
            starts, from the memory it may use (``data_node.resources.auto_cache_bytes``:
            a quarter of its cgroup's memory limit, else of the memory available, at most
            half of ``limits.max_memory_bytes``), and logged. Eviction: the chunk the open
            streams need farthest in the future goes first (least recently used without
            streams).
        decode_ahead: Threads (niced: they use idle cores) that decode the chunks the open
            streams read next before they read them; they run while a stream is open. 0
            turns decoding ahead off. Default: the cores this process may use
            (``data_node.resources.usable_cores``). From 0 to ``MAX_DECODE_AHEAD``.
    """

    max_bytes: int | None = None
    decode_ahead: int = field(default_factory=usable_cores)


#: The most decode-ahead threads a node starts: far more than the cores of any one machine.
MAX_DECODE_AHEAD = 1024


@dataclass(frozen=True)
class WorkersConfig:
    """The node's warm pool of worker processes (``[workers]``).

    Attributes:
        processes: Worker processes started with the node, which run every stream's
            augmentation and preprocessor; a stream's ``nb_proc_workers`` is the most of
            them it uses at once. Default: the cores this process may use (its CPU
            affinity, capped by its cgroup's CPU quota: ``data_node.resources.usable_cores``).
            From 1 to ``MAX_WORKER_PROCESSES``.
    """

    processes: int = field(default_factory=usable_cores)


@dataclass(frozen=True)
class MetricsConfig:
    """The node's Prometheus endpoint (``[metrics]``).

    Attributes:
        listen: ``host:port`` serving ``/metrics`` over HTTP (port 0 picks a free one); a
            port alone (``"9400"`` or ``":9400"``) binds loopback, ``127.0.0.1``: the
            endpoint has no authentication, so it is exposed only when a host is named.
            None (default): no endpoint.
    """

    listen: str | None = None


@dataclass(frozen=True)
class JobsConfig:
    """How the node runs patch-dataset build jobs (``[jobs]``).

    Attributes:
        max_concurrent_jobs: Jobs running at once, each in its own process; more wait queued.
        max_queued_jobs: Jobs waiting at once; a submission beyond gets RESOURCE_EXHAUSTED.
        max_watchers: WatchJob streams open at once (each holds an RPC thread); more get
            RESOURCE_EXHAUSTED.
        executor: Default executor of a job: "local" (the job's process extracts and
            writes) or "dask" (the job's process drives tasks on a Dask cluster).
        scheduler_address: Default Dask scheduler address, e.g. "tcp://10.0.0.5:8786";
            None: a dask job must name one.
        dask_task_bytes: Patch bytes one Dask task extracts and writes, rounded to whole
            chunks; bounds a Dask worker's memory per task.
        max_output_bytes: Largest output a build may plan (patches x patch bytes, before
            compression); a larger plan, or one larger than the free space under the
            output root, fails before anything is written (RESOURCE_EXHAUSTED at
            submission when the plan is known then, without a mask).
    """

    max_concurrent_jobs: int = 2
    max_queued_jobs: int = 64
    max_watchers: int = 16
    executor: str = "local"
    scheduler_address: str | None = None
    dask_task_bytes: int = 16 * MiB
    max_output_bytes: int = 1 << 40


@dataclass(frozen=True)
class TlsConfig:
    """TLS of the node's port (``[tls]``); without it the node serves plaintext.

    Attributes:
        cert: The node's PEM certificate chain (its names must match the address
            clients dial, e.g. a SAN of "localhost" or "127.0.0.1").
        key: The PEM private key of that certificate.
        ca: PEM bundle of the CAs whose client certificates the node accepts;
            when set every client must present one (mutual TLS). None (default): clients
            need no certificate.
    """

    cert: Path
    key: Path
    ca: Path | None = None


@dataclass(frozen=True)
class BearerToken:
    """One accepted bearer token; its value never appears in a repr or a message.

    Attributes:
        value: The token, as clients send it in ``authorization: Bearer <value>``.
        role: "read" or "build" (see ``ROLES``).
        source: Where it was read, for logs: e.g. "auth.tokens_file line 3".
    """

    value: str = field(repr=False)
    role: str
    source: str


@dataclass(frozen=True)
class AuthConfig:
    """Bearer tokens (``[auth]``): with them, every RPC but health needs a valid token.

    Tokens are read from a file (``tokens_file``), an environment variable (``tokens_env``)
    or both, never from the config file itself. A file holds one ``TOKEN [ROLE]`` per line
    (blank lines and ``#`` comments skipped); the variable holds such entries separated by
    commas or newlines. ROLE is "read" or "build" (the default): see ``ROLES``. A token is
    RFC 6750 text (letters, digits, ``-._~+/``, then ``=`` padding), e.g. from
    ``python -c "import secrets; print(secrets.token_urlsafe(32))"``.

    Attributes:
        tokens_file: The resolved tokens file, or None.
        tokens_env: The variable's name, or None. It may not start with ``DATA_NODE_``
            (those are config overrides).
        tokens: Every token read, from the file first; at least one.
    """

    tokens_file: Path | None = None
    tokens_env: str | None = None
    tokens: tuple[BearerToken, ...] = ()


@dataclass(frozen=True)
class SourceConfig:
    """One stored array: a resolved path inside the data root, its format and array key.

    Attributes:
        path: The file or store directory.
        format: "hdf5", "zarr" or "bcolz".
        key: The array inside it (HDF5: required).
        root: The directory every read of it must stay inside, content included (HDF5
            links, zarr entries...). Default None: the directory holding ``path``.
    """

    path: Path
    format: str
    key: str | None = None
    root: Root | None = None


@dataclass(frozen=True)
class ArrayConfig:
    """One named array of a dataset, combined from one or more sources."""

    name: str
    sources: tuple[SourceConfig, ...]


@dataclass(frozen=True)
class DatasetConfig:
    """A dataset: named arrays iterated in tandem, with optional classes and limits."""

    name: str
    arrays: tuple[ArrayConfig, ...]
    class_list: tuple[int, ...] | None = None
    maxlen: int | None = None


@dataclass(frozen=True)
class NodeConfig:
    """The whole node configuration. Build it with :func:`load` or :func:`parse_config`."""

    data_root: Path
    state_dir: Path
    output_root: Path
    listen: str = DEFAULT_ADDRESS
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tls: TlsConfig | None = None
    auth: AuthConfig | None = None
    preprocessors: Mapping[str, str] = field(default_factory=dict)
    datasets: Mapping[str, DatasetConfig] = field(default_factory=dict)


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Read and validate a TOML config file, applying ``DATA_NODE_*`` overrides.

    Args:
        path: The TOML file.
        environ: Environment to read overrides from (default: none). Pass ``os.environ``
            to honour the process environment.

    Raises:
        ConfigError: The file is missing or not TOML, or a key is invalid (named in
            the message).
        PathOutsideRootError: A source resolves outside ``data_root``.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as error:
        raise ConfigError(f"Expected a config file at {str(path)!r}. It does not exist.") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"Expected {str(path)!r} to be TOML: {error}") from error
    environ = environ or {}
    _apply_overrides(raw, environ)
    return parse_config(raw, base_dir=path.resolve().parent, environ=environ)


def parse_config(
    raw: Mapping[str, Any], *, base_dir: Path, environ: Mapping[str, str] | None = None
) -> NodeConfig:
    """Validate a config already read into nested dicts (the TOML layout above).

    Args:
        raw: The config's tables.
        base_dir: Directory relative paths start from (the config file's).
        environ: Environment ``auth.tokens_env`` is read from. Default None: empty.

    Raises:
        ConfigError: A key is invalid (named in the message).
        PathOutsideRootError: A source resolves outside ``data_root``.
    """
    _check_keys("", raw, _SECTIONS)
    node = _table("node", raw.get("node", {}))
    _check_keys("node", node, _NODE_KEYS)
    if "data_root" not in node:
        raise ConfigError("node.data_root: Expected the directory holding the data. It is missing.")
    data_root = _existing_dir(
        "node.data_root", base_dir / _string("node.data_root", node["data_root"])
    )
    state_dir = (base_dir / _string("node.state_dir", node.get("state_dir", "state"))).resolve()
    output_root = _output_root(
        base_dir / _string("node.output_root", node.get("output_root", "outputs"))
    )
    _check_roots(data_root, state_dir, output_root)
    preprocessors = _parse_preprocessors(_table("preprocessors", raw.get("preprocessors", {})))
    datasets_raw = _table("datasets", raw.get("datasets", {}))
    datasets = {
        name: parse_dataset(
            name, _table(f"datasets.{name}", spec), data_root, output_root=output_root
        )
        for name, spec in sorted(datasets_raw.items())
    }
    limits = _parse_limits(_table("limits", raw.get("limits", {})))
    auth = None
    if "auth" in raw:
        auth = _parse_auth(_table("auth", raw["auth"]), base_dir, environ or {})
    cache = _parse_cache(_table("cache", raw.get("cache", {})))
    if cache.max_bytes is not None and limits.max_memory_bytes <= cache.max_bytes:
        raise ConfigError(
            f"limits.max_memory_bytes: Expected more than cache.max_bytes ({cache.max_bytes}): "
            f"the budget holds the cache and the streams. Got {limits.max_memory_bytes} instead."
        )
    if limits.max_open_streams_per_token is not None and auth is None:
        raise ConfigError(
            "limits.max_open_streams_per_token: Expected [auth] tokens to count streams by. "
            "Got none; add an [auth] section or remove the limit."
        )
    return NodeConfig(
        data_root=data_root,
        state_dir=state_dir,
        output_root=output_root,
        listen=_listen(_string("node.listen", node.get("listen", DEFAULT_ADDRESS))),
        limits=limits,
        jobs=_parse_jobs(_table("jobs", raw.get("jobs", {}))),
        workers=_parse_workers(_table("workers", raw.get("workers", {}))),
        cache=cache,
        metrics=_parse_metrics(_table("metrics", raw.get("metrics", {}))),
        tls=_parse_tls(_table("tls", raw["tls"]), base_dir) if "tls" in raw else None,
        auth=auth,
        preprocessors=preprocessors,
        datasets=datasets,
    )


def resolve_inside(root: Path, path: str | Path, *, field_name: str) -> Path:
    """Resolve ``path`` (relative to ``root``; symlinks followed) and check it stays inside.

    Raises:
        PathOutsideRootError: The resolved path is outside ``root``.
    """
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise PathOutsideRootError(
            f"{field_name}: Expected a path inside {str(root)!r}. "
            f"Got {str(path)!r}, which resolves to {str(resolved)!r}, instead."
        )
    return resolved


def resolve_preprocessor(import_path: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` and return the callable.

    Raises:
        ValueError: The path is malformed or cannot be imported.
        TypeError: The imported object is not callable.
    """
    module_name, sep, attribute = import_path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(
            f"Expected an import path 'package.module:function'. Got {import_path!r} instead."
        )
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"Cannot import {import_path!r}: {error}") from error
    if not callable(target):
        raise TypeError(f"Expected {import_path!r} to be callable. Got {target!r} instead.")
    return target  # type: ignore[no-any-return]


# ---------------------------------------------------------------- sections


def _parse_limits(raw: Mapping[str, Any]) -> LimitsConfig:
    known = {f.name for f in dataclasses.fields(LimitsConfig)}
    _check_keys("limits", raw, known)
    values = {name: _positive_int(f"limits.{name}", value) for name, value in raw.items()}
    limits = LimitsConfig(**values)
    if limits.max_batch_bytes >= limits.max_message_bytes:
        # One Batch is one gRPC message: a batch the limit allows must fit in a message.
        raise ConfigError(
            f"limits.max_batch_bytes: Expected less than limits.max_message_bytes "
            f"({limits.max_message_bytes}). Got {limits.max_batch_bytes} instead."
        )
    return limits


def _parse_jobs(raw: Mapping[str, Any]) -> JobsConfig:
    _check_keys("jobs", raw, _JOBS_KEYS)
    values: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"jobs.{name}"
        if name == "executor":
            values[name] = _string(key, value)
            if value not in EXECUTORS:
                raise ConfigError(not_one_of(key, value, EXECUTORS))
        elif name == "scheduler_address":
            values[name] = _string(key, value)
        else:
            values[name] = _positive_int(key, value)
    return JobsConfig(**values)


def _parse_workers(raw: Mapping[str, Any]) -> WorkersConfig:
    _check_keys("workers", raw, _WORKERS_KEYS)
    if "processes" not in raw:
        return WorkersConfig()
    value = _int_in(
        "workers.processes",
        raw["processes"],
        1,
        MAX_WORKER_PROCESSES,
        f"worker processes started with the node; default: the {usable_cores()} cores this "
        "process may use",
    )
    return WorkersConfig(processes=value)


def _parse_cache(raw: Mapping[str, Any]) -> CacheConfig:
    _check_keys("cache", raw, _CACHE_KEYS)
    values: dict[str, int] = {}
    if "max_bytes" in raw:
        value = raw["max_bytes"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(
                f"cache.max_bytes: Expected an integer >= 0 (0 turns the cache off). "
                f"Got {value!r} instead."
            )
        values["max_bytes"] = value
    if "decode_ahead" in raw:
        values["decode_ahead"] = _int_in(
            "cache.decode_ahead",
            raw["decode_ahead"],
            0,
            MAX_DECODE_AHEAD,
            f"threads decoding chunks ahead of the streams; 0 turns it off; default: the "
            f"{usable_cores()} cores this process may use",
        )
    return CacheConfig(**values)


def _parse_metrics(raw: Mapping[str, Any]) -> MetricsConfig:
    _check_keys("metrics", raw, _METRICS_KEYS)
    if "listen" not in raw:
        return MetricsConfig()
    listen = _string("metrics.listen", raw["listen"])
    if listen.removeprefix(":").isdigit():
        listen = f"{LOOPBACK}:{listen.removeprefix(':')}"
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"metrics.listen: Expected host:port (port 0 picks a free one). Got {listen!r} instead."
        )
    return MetricsConfig(listen=listen)


def _parse_tls(raw: Mapping[str, Any], base_dir: Path) -> TlsConfig:
    _check_keys("tls", raw, _TLS_KEYS)
    for key, what in (("cert", "certificate chain"), ("key", "private key")):
        if key not in raw:
            raise ConfigError(f"tls.{key}: Expected the node's PEM {what}. It is missing.")
    ca = raw.get("ca")
    return TlsConfig(
        cert=_pem_file("tls.cert", raw["cert"], base_dir),
        key=_pem_file("tls.key", raw["key"], base_dir),
        ca=None if ca is None else _pem_file("tls.ca", ca, base_dir),
    )


def _parse_auth(raw: Mapping[str, Any], base_dir: Path, environ: Mapping[str, str]) -> AuthConfig:
    _check_keys("auth", raw, _AUTH_KEYS)
    if not raw:
        raise ConfigError("auth: Expected tokens_file or tokens_env (or both). Got neither.")
    tokens: list[BearerToken] = []
    tokens_file = None
    if "tokens_file" in raw:
        tokens_file = _existing_file("auth.tokens_file", raw["tokens_file"], base_dir)
        try:
            lines = tokens_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(
                f"auth.tokens_file: Expected a readable UTF-8 file. Got {str(tokens_file)!r}, "
                f"which cannot be read ({type(error).__name__}), instead."
            ) from None
        tokens += _parse_tokens("auth.tokens_file line", lines)
    tokens_env = None
    if "tokens_env" in raw:
        tokens_env = _string("auth.tokens_env", raw["tokens_env"])
        if not _ENV_NAME_PATTERN.fullmatch(tokens_env) or tokens_env.startswith(ENV_PREFIX):
            raise ConfigError(
                f"auth.tokens_env: Expected an environment variable name not starting with "
                f"{ENV_PREFIX!r} (those override config keys). Got {tokens_env!r} instead."
            )
        if not environ.get(tokens_env):
            raise ConfigError(
                f"auth.tokens_env: Expected the variable {tokens_env!r} to hold tokens. "
                "It is not set or empty."
            )
        entries = re.split(r"[,\n]", environ[tokens_env])
        tokens += _parse_tokens("auth.tokens_env entry", entries)
    if not tokens:
        raise ConfigError("auth: Expected at least one token. Got none (nobody could get in).")
    _check_unique(tokens)
    return AuthConfig(tokens_file=tokens_file, tokens_env=tokens_env, tokens=tuple(tokens))


def _parse_tokens(where: str, entries: list[str]) -> list[BearerToken]:
    """The tokens of ``entries`` ("TOKEN [ROLE]"); no message ever quotes an entry."""
    tokens = []
    for number, entry in enumerate(entries, start=1):
        words = entry.split()
        if not words or words[0].startswith("#"):
            continue
        source = f"{where} {number}"
        if len(words) > 2 or (len(words) == 2 and words[1] not in ROLES):
            raise ConfigError(
                f"{source}: Expected 'TOKEN [ROLE]' with ROLE one of {list(ROLES)}. "
                "Got something else instead (not shown: it may hold a secret)."
            )
        if not _TOKEN_PATTERN.fullmatch(words[0]):
            raise ConfigError(
                f"{source}: Expected a token of letters, digits and '-._~+/' (then '=' "
                "padding). Got other characters instead (not shown: it may hold a secret)."
            )
        role = words[1] if len(words) == 2 else "build"
        tokens.append(BearerToken(value=words[0], role=role, source=source))
    return tokens


def _check_unique(tokens: list[BearerToken]) -> None:
    first_seen: dict[str, str] = {}
    for token in tokens:
        if token.value in first_seen:
            raise ConfigError(
                f"{token.source}: Expected each token once. Got the same token as "
                f"{first_seen[token.value]} instead."
            )
        first_seen[token.value] = token.source


def _parse_preprocessors(raw: Mapping[str, Any]) -> dict[str, str]:
    result = {}
    for name, import_path in sorted(raw.items()):
        key = f"preprocessors.{name}"
        try:
            resolve_preprocessor(_string(key, import_path))
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{key}: {error}") from error
        result[name] = import_path
    return result


def _check_roots(data_root: Path, state_dir: Path, output_root: Path) -> None:
    """Refuse roots that hold one another where the node would write over what it keeps.

    The state dir stays apart from both others (an output could replace the job database;
    clients could read the node's own files). The data root may not lie inside the output
    root (an output could replace the data); the output root may lie inside the data root.
    """
    roots = {"node.data_root": data_root, "node.state_dir": state_dir}
    roots["node.output_root"] = output_root
    apart = (
        ("node.state_dir", "node.output_root", "a job's output could replace the job database"),
        ("node.state_dir", "node.data_root", "clients could read the node's own files"),
    )
    for key, other, why in apart:
        path, other_path = roots[key], roots[other]
        if path.is_relative_to(other_path) or other_path.is_relative_to(path):
            raise ConfigError(
                f"{key}: Expected a directory apart from {other} ({why}). Got "
                f"{str(path)!r}, which {_relation(path, other_path)} {other} "
                f"{str(other_path)!r}, instead."
            )
    if data_root.is_relative_to(output_root):
        raise ConfigError(
            f"node.data_root: Expected a directory outside node.output_root (an output with "
            f"overwrite could replace the data). Got {str(data_root)!r}, which "
            f"{_relation(data_root, output_root)} node.output_root {str(output_root)!r}, instead."
        )


def _relation(path: Path, other: Path) -> str:
    if path == other:
        return "is also"
    return "lies inside" if path.is_relative_to(other) else "holds"


def parse_dataset(
    name: str,
    raw: Mapping[str, Any],
    data_root: Path,
    *,
    output_root: Path,
    prefix: str | None = None,
) -> DatasetConfig:
    """Validate one dataset's table (``arrays``, ``class_list``, ``maxlen``), as in the file.

    Args:
        name: The dataset's name.
        raw: Its table: ``arrays`` maps array names to a source table or a list of them.
        data_root: The resolved root every source must stay inside.
        output_root: The resolved root of build jobs' outputs, where no source may lie (a
            build job with overwrite could replace it under its readers).
        prefix: What error messages put before each key. Default None: ``datasets.<name>``.
            "" names the keys bare (``arrays.image[0].path``), as a request's fields.

    Raises:
        ConfigError: A key is invalid (named in the message).
        PathOutsideRootError: A source resolves outside ``data_root``.
    """
    prefix = f"datasets.{name}" if prefix is None else prefix
    _check_keys(prefix, raw, {"arrays", "class_list", "maxlen"})
    arrays_key = _join(prefix, "arrays")
    arrays_raw = _table(arrays_key, raw.get("arrays", {}))
    if not arrays_raw:
        raise ConfigError(f"{arrays_key}: Expected at least one array. Got none.")
    arrays = tuple(
        ArrayConfig(array_name, _parse_sources(f"{arrays_key}.{array_name}", spec, data_root))
        for array_name, spec in arrays_raw.items()
    )
    for array in arrays:
        for i, source in enumerate(array.sources):
            if source.path.is_relative_to(output_root):
                raise ConfigError(
                    f"{arrays_key}.{array.name}[{i}].path: Expected a file outside "
                    f"node.output_root (a build job with overwrite could replace it under "
                    f"its readers; serve job outputs with register_as). Got "
                    f"{str(source.path)!r} instead."
                )
    class_list = None
    if "class_list" in raw:
        key = _join(prefix, "class_list")
        class_list = _int_list(key, raw["class_list"])
        if LABEL_ARRAY in arrays_raw:
            raise ConfigError(
                f"{key}: adds an array named {LABEL_ARRAY!r}, but {arrays_key} already has one."
            )
        for array in arrays:
            if len(array.sources) != len(class_list):
                raise ConfigError(
                    f"{key}: Expected one class per source "
                    f"({len(array.sources)} in {arrays_key}.{array.name}). "
                    f"Got {len(class_list)} instead."
                )
    maxlen = None
    if "maxlen" in raw:
        maxlen = _positive_int(_join(prefix, "maxlen"), raw["maxlen"])
    return DatasetConfig(name=name, arrays=arrays, class_list=class_list, maxlen=maxlen)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _parse_sources(prefix: str, raw: Any, data_root: Path) -> tuple[SourceConfig, ...]:
    specs = [raw] if isinstance(raw, Mapping) else raw
    if not isinstance(specs, list) or not specs:
        raise ConfigError(
            f"{prefix}: Expected a source table or a non-empty list of them. Got {raw!r} instead."
        )
    return tuple(_parse_source(f"{prefix}[{i}]", spec, data_root) for i, spec in enumerate(specs))


def _parse_source(prefix: str, raw: Any, data_root: Path) -> SourceConfig:
    spec = _table(prefix, raw)
    _check_keys(prefix, spec, {"path", "key", "format"})
    if "path" not in spec:
        raise ConfigError(f"{prefix}.path: Expected a path under data_root. It is missing.")
    given = _string(f"{prefix}.path", spec["path"])
    path = resolve_inside(data_root, given, field_name=f"{prefix}.path")
    if not path.exists():
        raise ConfigError(
            f"{prefix}.path: Expected an existing file. {str(path)!r} does not exist."
        )
    if "format" in spec:
        source_format = _string(f"{prefix}.format", spec["format"])
        if source_format not in WRITABLE_FORMATS:
            raise ConfigError(not_one_of(f"{prefix}.format", source_format, WRITABLE_FORMATS))
    elif path.suffix in SOURCE_FORMATS:
        source_format = SOURCE_FORMATS[path.suffix]
    else:
        raise ConfigError(
            f"{prefix}.format: Cannot tell the format of {given!r} from its suffix "
            f"(known: {sorted(SOURCE_FORMATS)}); set format to one of {list(WRITABLE_FORMATS)}."
        )
    key = spec.get("key")
    if FORMATS[source_format].key == "required" and key is None:
        noun = FORMATS[source_format].noun
        raise ConfigError(f"{prefix}.key: Expected the {noun} path. It is missing.")
    return SourceConfig(
        path=path,
        format=source_format,
        key=None if key is None else _string(f"{prefix}.key", key),
        root=Root(data_root),
    )


# ---------------------------------------------------------------- overrides


_NODE_KEYS = {"listen", "data_root", "state_dir", "output_root"}
_JOBS_KEYS = {f.name for f in dataclasses.fields(JobsConfig)}
_TLS_KEYS = {f.name for f in dataclasses.fields(TlsConfig)}
_AUTH_KEYS = {"tokens_file", "tokens_env"}
_CACHE_KEYS = {f.name for f in dataclasses.fields(CacheConfig)}
_WORKERS_KEYS = {f.name for f in dataclasses.fields(WorkersConfig)}
_METRICS_KEYS = {f.name for f in dataclasses.fields(MetricsConfig)}
_SECTIONS = {
    "node",
    "limits",
    "jobs",
    "workers",
    "cache",
    "metrics",
    "tls",
    "auth",
    "preprocessors",
    "datasets",
}


def _apply_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    sections = {
        "node": _NODE_KEYS,
        "jobs": _JOBS_KEYS,
        "workers": _WORKERS_KEYS,
        "cache": _CACHE_KEYS,
        "metrics": _METRICS_KEYS,
        "tls": _TLS_KEYS,
        "auth": _AUTH_KEYS,
    }
    sections["limits"] = {f.name for f in dataclasses.fields(LimitsConfig)}
    for variable, text in sorted(environ.items()):
        if not variable.startswith(ENV_PREFIX):
            continue
        section, sep, key = variable[len(ENV_PREFIX) :].lower().partition("__")
        if not sep or section not in sections or key not in sections[section]:
            known = sorted(
                f"{ENV_PREFIX}{s.upper()}__{k.upper()}" for s in sections for k in sections[s]
            )
            new = RENAMED_KEYS.get(f"{section}.{key}", "").upper().replace(".", "__")
            hint = f" Did you mean {ENV_PREFIX}{new}? (renamed)" if new else ""
            raise ConfigError(
                f"{variable}: Expected one of {known}. Got an unknown variable.{hint}"
            )
        raw.setdefault(section, {})[key] = _toml_value(text)


def _toml_value(text: str) -> Any:
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


# ---------------------------------------------------------------- field checks


def _check_keys(prefix: str, raw: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(
            f"{key}: Expected one of {sorted(known)}. Got an unknown key.{_renamed_hint(key)}"
        )


def _renamed_hint(key: str) -> str:
    """ " Did you mean 'new'? (renamed)" for a key of ``RENAMED_KEYS``, else ""."""
    new = RENAMED_KEYS.get(key)
    return "" if new is None else f" Did you mean {new.rpartition('.')[2]!r}? ({key} is now {new})"


def _table(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: Expected a table. Got {value!r} instead.")
    return value


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: Expected a non-empty string. Got {value!r} instead.")
    return value


def _positive_int(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key}: Expected an integer >= 1. Got {value!r} instead.")
    return value


def _int_in(key: str, value: Any, low: int, high: int, meaning: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(
            f"{key}: Expected an integer in [{low}, {high}] ({meaning}). Got {value!r} instead."
        )
    return value


def _int_list(key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ConfigError(f"{key}: Expected a list of integers. Got {value!r} instead.")
    return tuple(value)


def _output_root(path: Path) -> Path:
    """The resolved output root: an existing directory, or a path one can be created at."""
    resolved = path.resolve()
    if resolved.exists() and not resolved.is_dir():
        raise ConfigError(
            f"node.output_root: Expected a directory (created if missing). "
            f"Got {str(path)!r}, which is a file, instead."
        )
    return resolved


def _existing_file(key: str, value: Any, base_dir: Path) -> Path:
    path = (base_dir / _string(key, value)).resolve()
    if not path.is_file():
        raise ConfigError(f"{key}: Expected an existing file. Got {str(path)!r} instead.")
    return path


def _pem_file(key: str, value: Any, base_dir: Path) -> Path:
    """An existing PEM file; checked here because gRPC reports a bad one only as 'cannot bind'."""
    path = _existing_file(key, value, base_dir)
    try:
        is_pem = b"-----BEGIN " in path.read_bytes()
    except OSError as error:
        raise ConfigError(
            f"{key}: Expected a readable file. {str(path)!r} cannot be read ({error.strerror})."
        ) from None
    if not is_pem:
        raise ConfigError(
            f"{key}: Expected a PEM file (-----BEGIN ...). Got {str(path)!r} instead."
        )
    return path


def _listen(address: str) -> str:
    """``node.listen``: HOST:PORT, the port named (gRPC would read a bare host as port 443)."""
    try:
        split_address(address, "node.listen", min_port=0)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return address


def _existing_dir(key: str, path: Path) -> Path:
    resolved = path.resolve()
    if not resolved.is_dir():
        raise ConfigError(f"{key}: Expected an existing directory. Got {str(path)!r} instead.")
    return resolved

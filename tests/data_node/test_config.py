"""Node config: a valid file loads; every invalid key is named in the error.

Matrix: full config (two multi-source arrays, class_list, maxlen, preprocessor, limits);
env overrides (known, unknown, TOML-typed); missing file / not TOML; unknown keys at each
level; missing data_root / path / key; source outside data_root (``..``, absolute, symlink);
missing source file; unknown format; class_list length; label collision; bad limit values;
preprocessor malformed / not importable / not callable. Jobs: output_root default and
override, output_root naming a file, [jobs] defaults / values / env overrides / bad values.
TLS: files relative to the config, optional client CA, env overrides; missing cert/key,
missing file, not PEM, unknown key. Auth: tokens from a file (comments, default role) and
an environment variable (commas, newlines), both; repr and every error free of tokens;
missing / empty / unreadable sources, a DATA_NODE_ variable, bad role, bad characters,
duplicates, an empty section; max_open_streams_per_token with and without [auth]. Hardening:
the new limits' defaults, max_memory_bytes above cache.max_bytes; a metrics port alone binds
loopback. Workers: [workers] processes defaults to the usable cores, set in the file or the
environment; out of [1, 1024], not an integer, an unknown key, not a table. Cache:
[cache] decode_ahead defaults to the usable cores, 0 turns it off, set in the file or the
environment, beside max_bytes or alone; out of [0, 1024], not an integer.
"""

from __future__ import annotations

import textwrap

import pytest

from data_node.config import (
    AuthConfig,
    BearerToken,
    CacheConfig,
    JobsConfig,
    LimitsConfig,
    TlsConfig,
    WorkersConfig,
    load,
    resolve_inside,
    resolve_preprocessor,
)
from data_node.errors import ConfigError, PathOutsideRootError
from data_node.resources import usable_cores


@pytest.fixture
def root(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.h5", "b.zarr", "c.bcolz", "plain"):
        (data / name).touch()
    return tmp_path


def write(root, body):
    path = root / "node.toml"
    path.write_text(textwrap.dedent(body))
    return path


GOOD = """
    [node]
    listen = "127.0.0.1:0"
    data_root = "data"
    [limits]
    max_batch_size = 64
    [preprocessors]
    scale = "numpy:negative"
    [datasets.toy]
    class_list = [0, 1]
    maxlen = 10
    [datasets.toy.arrays]
    image = [{ path = "a.h5", key = "image" }, { path = "b.zarr", key = "image" }]
    mask = [{ path = "a.h5", key = "mask" }, { path = "plain", format = "bcolz" }]
"""


def test_full_config_loads(root):
    config = load(write(root, GOOD))
    assert config.listen == "127.0.0.1:0"
    assert config.data_root == (root / "data").resolve()
    assert config.state_dir == (root / "state").resolve()
    assert config.limits == LimitsConfig(max_batch_size=64)
    assert config.preprocessors == {"scale": "numpy:negative"}
    toy = config.datasets["toy"]
    assert [a.name for a in toy.arrays] == ["image", "mask"]
    assert [s.format for s in toy.arrays[0].sources] == ["hdf5", "zarr"]
    assert toy.arrays[1].sources[1].format == "bcolz"
    assert toy.arrays[0].sources[0].path == (root / "data" / "a.h5").resolve()
    assert toy.class_list == (0, 1)
    assert toy.maxlen == 10


def test_single_source_table_is_accepted(root):
    config = load(
        write(
            root,
            """
            [node]
            data_root = "data"
            [datasets.one.arrays]
            image = { path = "c.bcolz" }
            """,
        )
    )
    assert config.datasets["one"].arrays[0].sources[0].format == "bcolz"


def test_env_overrides_are_typed(root):
    config = load(
        write(root, GOOD),
        {
            "DATA_NODE_LIMITS__MAX_OPEN_STREAMS": "3",
            "DATA_NODE_NODE__LISTEN": "0.0.0.0:9",
            "OTHER": "ignored",
        },
    )
    assert config.limits.max_open_streams == 3
    assert config.listen == "0.0.0.0:9"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DATA_NODE_LIMITS__MAX_COFFEE", "1", "DATA_NODE_LIMITS__MAX_COFFEE"),
        ("DATA_NODE_NOPE", "1", "DATA_NODE_NOPE"),
        ("DATA_NODE_LIMITS__MAX_OPEN_STREAMS", "zero", "limits.max_open_streams"),
    ],
)
def test_bad_env_overrides(root, variable, value, message):
    with pytest.raises(ConfigError, match=message):
        load(write(root, GOOD), {variable: value})


def test_missing_and_malformed_files(root):
    with pytest.raises(ConfigError, match="does not exist"):
        load(root / "nope.toml")
    with pytest.raises(ConfigError, match="to be TOML"):
        load(write(root, "[node\n"))


def replace(old, new):
    assert old in GOOD
    return GOOD.replace(old, new)


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (GOOD + "\n[extra]\n", ConfigError, r"^extra: Expected one of"),
        (replace('listen = "127.0.0.1:0"', "lissen = 1"), ConfigError, r"node\.lissen"),
        (replace('data_root = "data"', ""), ConfigError, r"node\.data_root: .* missing"),
        (replace('data_root = "data"', 'data_root = "nope"'), ConfigError, "existing directory"),
        (replace("max_batch_size = 64", "max_batch_size = 0"), ConfigError, r"max_batch_size"),
        (replace("max_batch_size = 64", "max_batch_size = true"), ConfigError, "max_batch_size"),
        (replace("max_batch_size = 64", "batch = 1"), ConfigError, r"limits\.batch"),
        (replace("maxlen = 10", "maxlen = -1"), ConfigError, r"datasets\.toy\.maxlen"),
        (replace("maxlen = 10", "max_len = 1"), ConfigError, r"datasets\.toy\.max_len"),
        (replace("class_list = [0, 1]", "class_list = [0]"), ConfigError, "one class per source"),
        (replace("class_list = [0, 1]", 'class_list = ["a", 1]'), ConfigError, "class_list"),
        (
            replace('key = "mask" }, { path = "plain"', 'key = "mask" }, { path = "plain.txt"'),
            ConfigError,
            r"arrays\.mask\[1\]\.path: .* does not exist",
        ),
        (
            replace('{ path = "plain", format = "bcolz" }', '{ path = "plain" }'),
            ConfigError,
            r"arrays\.mask\[1\]\.format: Cannot tell",
        ),
        (
            replace('format = "bcolz"', 'format = "csv"'),
            ConfigError,
            r"arrays\.mask\[1\]\.format: Expected one of",
        ),
        (
            replace('{ path = "a.h5", key = "mask" }', '{ path = "a.h5" }'),
            ConfigError,
            r"arrays\.mask\[0\]\.key",
        ),
        (
            replace('{ path = "a.h5", key = "mask" }', '{ key = "mask" }'),
            ConfigError,
            r"arrays\.mask\[0\]\.path",
        ),
        (
            replace('{ path = "a.h5", key = "mask" }', '{ path = "a.h5", key = "m", x = 1 }'),
            ConfigError,
            r"arrays\.mask\[0\]\.x",
        ),
        (replace("mask = [", "label = ["), ConfigError, "already has one"),
        (replace("mask = [", "mask = 3 #"), ConfigError, r"arrays\.mask: Expected a source"),
        (
            replace('{ path = "a.h5", key = "mask" }', '{ path = "../node.toml", key = "m" }'),
            PathOutsideRootError,
            r"arrays\.mask\[0\]\.path: Expected a path inside",
        ),
        (
            replace('{ path = "a.h5", key = "mask" }', '{ path = "/etc/hostname", key = "m" }'),
            PathOutsideRootError,
            "resolves to '/etc/hostname'",
        ),
        (replace('"numpy:negative"', '"numpy.negative"'), ConfigError, r"preprocessors\.scale"),
        (replace('"numpy:negative"', '"no_such_mod:f"'), ConfigError, "Cannot import"),
        (replace('"numpy:negative"', '"numpy:pi"'), ConfigError, "to be callable"),
        (replace("[datasets.toy.arrays]", "[datasets.toy.arrayz]"), ConfigError, "arrayz"),
    ],
)
def test_invalid_configs_name_the_key(root, body, error, message):
    with pytest.raises(error, match=message):
        load(write(root, body))


def test_symlink_out_of_the_data_root_is_refused(root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "secret.h5"
    outside.touch()
    (root / "data" / "link.h5").symlink_to(outside)
    with pytest.raises(PathOutsideRootError, match=r"link\.h5"):
        load(
            write(
                root, replace('{ path = "a.h5", key = "mask" }', '{ path = "link.h5", key = "m" }')
            )
        )


def test_resolve_inside_accepts_nested_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    assert resolve_inside(tmp_path, "sub/../sub/x", field_name="f") == tmp_path / "sub" / "x"


def test_resolve_preprocessor():
    import numpy as np

    assert resolve_preprocessor("numpy:negative") is np.negative
    assert resolve_preprocessor("numpy.linalg:norm") is np.linalg.norm


def test_jobs_defaults_and_output_root(root):
    config = load(write(root, GOOD))
    assert config.output_root == (root / "outputs").resolve()
    assert config.jobs == JobsConfig()
    assert config.jobs.executor == "local"
    assert config.jobs.scheduler_address is None
    assert not (root / "outputs").exists()  # created by the node, not by loading


def test_jobs_section_and_env_overrides(root):
    body = replace('data_root = "data"', 'data_root = "data"\noutput_root = "built"') + (
        '\n[jobs]\nmax_concurrent_jobs = 3\nexecutor = "dask"\n'
        'scheduler_address = "tcp://10.0.0.5:8786"\ndask_task_bytes = 4096\n'
    )
    config = load(
        write(root, body),
        {"DATA_NODE_JOBS__MAX_QUEUED_JOBS": "5", "DATA_NODE_NODE__OUTPUT_ROOT": "elsewhere"},
    )
    assert config.output_root == (root / "elsewhere").resolve()
    assert config.jobs == JobsConfig(
        max_concurrent_jobs=3,
        max_queued_jobs=5,
        executor="dask",
        scheduler_address="tcp://10.0.0.5:8786",
        dask_task_bytes=4096,
    )


@pytest.mark.parametrize(
    ("jobs", "message"),
    [
        ("max_concurrent_jobs = 0", r"^jobs\.max_concurrent_jobs: Expected an integer >= 1"),
        ("max_queued_jobs = true", r"^jobs\.max_queued_jobs"),
        ("max_watchers = -1", r"^jobs\.max_watchers"),
        ('executor = "dusk"', r"^jobs\.executor: Expected one of \['dask', 'local'\]"),
        ("scheduler_address = 5", r"^jobs\.scheduler_address: Expected a non-empty string"),
        ("max_jobs = 1", r"^jobs\.max_jobs: Expected one of"),
    ],
)
def test_bad_jobs_values_name_the_key(root, jobs, message):
    with pytest.raises(ConfigError, match=message):
        load(write(root, GOOD + f"\n[jobs]\n{jobs}\n"))


def test_output_root_must_not_be_a_file(root):
    (root / "data" / "file").touch()
    body = replace('data_root = "data"', 'data_root = "data"\noutput_root = "data/file"')
    with pytest.raises(ConfigError, match=r"^node\.output_root: Expected a directory"):
        load(write(root, body))
    with pytest.raises(ConfigError, match="DATA_NODE_JOBS__EXECUTOR"):
        load(write(root, GOOD), {"DATA_NODE_JOBS__EXECUTORS": "dask"})


# ---------------------------------------------------------------- tls and auth

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def pem_files(root):
    (root / "pki").mkdir()
    for name in ("server.pem", "server.key", "ca.pem", "other.pem"):
        (root / "pki" / name).write_text(PEM)
    (root / "pki" / "not_pem.txt").write_text("hello")
    return root / "pki"


TLS = '\n[tls]\ncert = "pki/server.pem"\nkey = "pki/server.key"\n'


def test_tls_files_resolve_against_the_config_file(root, pem_files):
    config = load(write(root, GOOD + TLS))
    assert config.tls == TlsConfig(pem_files / "server.pem", pem_files / "server.key")
    assert load(write(root, GOOD)).tls is None
    with_ca = load(
        write(root, GOOD + TLS + 'ca = "pki/ca.pem"\n'),
        {"DATA_NODE_TLS__CERT": "pki/other.pem"},
    )
    assert with_ca.tls == TlsConfig(
        pem_files / "other.pem", pem_files / "server.key", pem_files / "ca.pem"
    )


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ('key = "pki/server.key"', r"^tls\.cert: Expected the node's PEM certificate"),
        ('cert = "pki/server.pem"', r"^tls\.key: Expected the node's PEM private key"),
        ('ca = "pki/ca.pem"', r"^tls\.cert: .* missing"),
        (TLS + 'ca = "pki/nope.pem"', r"^tls\.ca: Expected an existing"),
        (TLS.replace("server.key", "not_pem.txt"), r"^tls\.key: Expected a PEM file"),
        (TLS.replace("pki/server.pem", "pki"), r"^tls\.cert: Expected an existing file"),
        (TLS + "ca_bundle = 1", r"^tls\.ca_bundle: Expected one of"),
        (TLS.replace('"pki/server.pem"', "3"), r"^tls\.cert: Expected a non-empty string"),
    ],
)
def test_bad_tls_values_name_the_key(root, pem_files, tls, message):
    body = GOOD + (tls if tls.startswith("\n[tls]") else f"\n[tls]\n{tls}\n")
    with pytest.raises(ConfigError, match=message):
        load(write(root, body))


TOKENS = "# team tokens\nr3ad-Token_1 read\n\nbu1ld.token~2/+== build\n   defaulted-token-3  \n"
AUTH = '\n[auth]\ntokens_file = "tokens.txt"\n'
SECRETS = ("r3ad-Token_1", "bu1ld", "defaulted", "env-token", "s3cret")


def test_tokens_from_a_file_and_the_environment(root):
    (root / "tokens.txt").write_text(TOKENS)
    config = load(
        write(root, GOOD + AUTH + 'tokens_env = "TEAM_TOKENS"\n'),
        {"TEAM_TOKENS": "env-token-4 read, env-token-5\nenv-token-6 build"},
    )
    assert config.auth == AuthConfig(
        tokens_file=(root / "tokens.txt").resolve(),
        tokens_env="TEAM_TOKENS",
        tokens=(
            BearerToken("r3ad-Token_1", "read", "auth.tokens_file line 2"),
            BearerToken("bu1ld.token~2/+==", "build", "auth.tokens_file line 4"),
            BearerToken("defaulted-token-3", "build", "auth.tokens_file line 5"),
            BearerToken("env-token-4", "read", "auth.tokens_env entry 1"),
            BearerToken("env-token-5", "build", "auth.tokens_env entry 2"),
            BearerToken("env-token-6", "build", "auth.tokens_env entry 3"),
        ),
    )
    assert not any(secret in repr(config) for secret in SECRETS)
    assert "role='read'" in repr(config)


def test_auth_sources_and_limit_through_env_overrides(root):
    (root / "other.txt").write_text("s3cret-token read\n")
    config = load(
        write(root, GOOD + AUTH),
        {
            "DATA_NODE_AUTH__TOKENS_FILE": "other.txt",
            "DATA_NODE_LIMITS__MAX_OPEN_STREAMS_PER_TOKEN": "2",
        },
    )
    assert [token.value for token in config.auth.tokens] == ["s3cret-token"]
    assert config.limits.max_open_streams_per_token == 2
    assert load(write(root, GOOD)).auth is None
    only_env = load(write(root, GOOD + '[auth]\ntokens_env = "T"\n'), {"T": "s3cret"})
    assert only_env.auth.tokens == (BearerToken("s3cret", "build", "auth.tokens_env entry 1"),)


@pytest.mark.parametrize(
    ("tokens", "env", "message"),
    [
        ("s3cret-a writer\n", None, r"^auth\.tokens_file line 1: Expected 'TOKEN \[ROLE\]'"),
        ("s3cret-a read extra\n", None, r"^auth\.tokens_file line 1: Expected 'TOKEN"),
        ("# c\ns3cret-a read\ns3cret*b\n", None, r"^auth\.tokens_file line 3: Expected a token"),
        ("s3cret-a read\ns3cret-a build\n", None, r"^auth\.tokens_file line 2: .* line 1 "),
        ("s3cret-a\n", "s3cret-a read", r"^auth\.tokens_env entry 1: .*auth\.tokens_file line 1 "),
        ("s3cret-a\n", "s3cret-b read,s3cret\u00e9", r"^auth\.tokens_env entry 2: Expected a"),
        ("s3cret-a\n", "", r"^auth\.tokens_env: .* not set or empty"),
        ("# only a comment\n\n", None, r"^auth: Expected at least one token"),
    ],
)
def test_bad_tokens_are_named_without_quoting_them(root, tokens, env, message):
    (root / "tokens.txt").write_text(tokens)
    body = GOOD + AUTH + ('tokens_env = "TEAM_TOKENS"\n' if env is not None else "")
    with pytest.raises(ConfigError, match=message) as caught:
        load(write(root, body), {"TEAM_TOKENS": env} if env else {})
    assert not any(secret in str(caught.value) for secret in SECRETS)


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ("[auth]\n", r"^auth: Expected tokens_file or tokens_env"),
        ('[auth]\ntokens = "s3cret"\n', r"^auth\.tokens: Expected one of"),
        ('[auth]\ntokens_file = "nope.txt"\n', r"^auth\.tokens_file: Expected an existing file"),
        ('[auth]\ntokens_file = "bin.txt"\n', r"^auth\.tokens_file: Expected a readable UTF-8"),
        ('[auth]\ntokens_env = "NOT_SET"\n', r"^auth\.tokens_env: .*'NOT_SET'.* not set"),
        ('[auth]\ntokens_env = "DATA_NODE_TOKENS"\n', r"^auth\.tokens_env: .* not starting"),
        ('[auth]\ntokens_env = "A-B"\n', r"^auth\.tokens_env: Expected an environment"),
        ("[limits]\nmax_open_streams_per_token = 0\n", r"^limits\.max_open_streams_per_token"),
    ],
)
def test_bad_auth_sections_name_the_key(root, auth, message):
    (root / "bin.txt").write_bytes(b"\xff\xfe s3cret")
    body = GOOD.replace("[limits]", auth.strip()) if auth.startswith("[limits]") else GOOD + auth
    with pytest.raises(ConfigError, match=message):
        load(write(root, body))


def test_a_per_token_limit_needs_auth(root):
    with pytest.raises(ConfigError, match=r"^limits\.max_open_streams_per_token: .*\[auth\]"):
        load(write(root, GOOD), {"DATA_NODE_LIMITS__MAX_OPEN_STREAMS_PER_TOKEN": "2"})


def test_a_batch_must_fit_in_a_message(root):
    with pytest.raises(ConfigError, match=r"limits\.max_batch_bytes: Expected less than"):
        load(
            write(
                root,
                GOOD.replace(
                    "max_batch_size = 64", "max_batch_bytes = 4096\nmax_message_bytes = 4096"
                ),
            )
        )


def test_hardening_limits_have_defaults_and_are_checked(root):
    limits = load(write(root, GOOD)).limits
    assert (limits.max_open_calls, limits.max_open_calls_per_token) == (96, 32)
    assert (limits.max_request_bytes, limits.max_memory_bytes) == (4 << 20, 8 << 30)
    config = load(
        write(root, GOOD),
        {"DATA_NODE_LIMITS__MAX_MEMORY_BYTES": "2000", "DATA_NODE_CACHE__MAX_BYTES": "0"},
    )
    assert config.limits.max_memory_bytes == 2000
    with pytest.raises(
        ConfigError, match=r"^limits\.max_memory_bytes: .*cache\.max_bytes \(2000\)"
    ):
        load(
            write(root, GOOD),
            {"DATA_NODE_LIMITS__MAX_MEMORY_BYTES": "2000", "DATA_NODE_CACHE__MAX_BYTES": "2000"},
        )


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("9400", "127.0.0.1:9400"), (":0", "127.0.0.1:0"), ("0.0.0.0:9400", "0.0.0.0:9400")],
)
def test_a_metrics_port_alone_binds_loopback(root, listen, expected):
    config = load(write(root, GOOD), {"DATA_NODE_METRICS__LISTEN": f'"{listen}"'})
    assert config.metrics.listen == expected


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('\n[tls]\ncert_file = "pki/server.pem"\n', "tls.cert"),
        ('\n[tls]\nkey_file = "pki/server.key"\n', "tls.key"),
        ('\n[tls]\nclient_ca_file = "pki/ca.pem"\n', "tls.ca"),
        ("max_io_workers = 2\n", "limits.max_nb_io_workers"),
        ("max_proc_workers = 2\n", "limits.max_nb_proc_workers"),
    ],
)
def test_a_renamed_key_is_refused_naming_its_new_name(root, pem_files, old, new):
    body = GOOD.replace("max_batch_size = 64\n", f"max_batch_size = 64\n{old}")
    if old.startswith("\n[tls]"):
        body = GOOD + old
    key = old.strip().splitlines()[-1].split(" = ")[0]
    section = new.split(".")[0]
    with pytest.raises(ConfigError) as caught:
        load(write(root, body))
    message = str(caught.value)
    assert message.startswith(f"{section}.{key}: Expected one of ")
    assert message.endswith(
        f"Got an unknown key. Did you mean {new.split('.')[1]!r}? ({section}.{key} is now {new})"
    )
    variable = f"DATA_NODE_{section.upper()}__{key.upper()}"
    with pytest.raises(
        ConfigError, match=rf"Did you mean DATA_NODE_{new.upper().replace('.', '__')}\? \(renamed\)"
    ):
        load(write(root, GOOD), {variable: "2"})


@pytest.mark.parametrize("listen", ["127.0.0.1", "localhost", "[::1]", "host:", "h:70000"])
def test_a_listen_address_must_name_a_port(root, listen):
    body = GOOD.replace('listen = "127.0.0.1:0"', f"listen = {listen!r}")
    with pytest.raises(ConfigError, match=r"^node\.listen: Expected HOST:PORT with a port in"):
        load(write(root, body))


def test_an_ipv6_listen_address_needs_brackets(root):
    body = GOOD.replace('listen = "127.0.0.1:0"', 'listen = "::1"')
    with pytest.raises(ConfigError, match=r"^node\.listen: .* write '\[::1\]:PORT'\."):
        load(write(root, body))
    bracketed = GOOD.replace('listen = "127.0.0.1:0"', 'listen = "[::1]:50051"')
    assert load(write(root, bracketed)).listen == "[::1]:50051"


def test_workers_default_to_the_usable_cores_and_can_be_set(root):
    # The CPUs this process may run on, capped by its cgroup's CPU quota (docker --cpus).
    assert load(write(root, GOOD)).workers == WorkersConfig(usable_cores())
    assert load(write(root, GOOD + "\n[workers]\nprocesses = 3\n")).workers.processes == 3
    overridden = load(write(root, GOOD), {"DATA_NODE_WORKERS__PROCESSES": "5"})
    assert overridden.workers == WorkersConfig(processes=5)


@pytest.mark.parametrize(
    ("workers", "message"),
    [
        ("processes = 0", r"^workers\.processes: Expected an integer in \[1, 1024\] .*Got 0 "),
        ("processes = -2", r"^workers\.processes: Expected an integer in \[1, 1024\]"),
        ("processes = 1025", r"^workers\.processes: .*Got 1025 instead\.$"),
        ("processes = true", r"^workers\.processes: .*Got True instead\.$"),
        ('processes = "4"', r"^workers\.processes: .*Got '4' instead\.$"),
        ("processes = 2.0", r"^workers\.processes: .*Got 2\.0 instead\.$"),
        ("procs = 2", r"^workers\.procs: Expected one of \['processes'\]\. Got an unknown key"),
    ],
)
def test_bad_workers_values_name_the_key(root, workers, message):
    with pytest.raises(ConfigError, match=message):
        load(write(root, GOOD + f"\n[workers]\n{workers}\n"))


def test_a_workers_section_must_be_a_table(root):
    with pytest.raises(ConfigError, match=r"^workers: Expected a table"):
        load(write(root, "\n    workers = 3" + GOOD))
    with pytest.raises(ConfigError, match=r"^DATA_NODE_WORKERS__PROCS: Expected one of"):
        load(write(root, GOOD), {"DATA_NODE_WORKERS__PROCS": "2"})


def test_decode_ahead_defaults_to_the_usable_cores_and_can_be_set(root):
    cores = usable_cores()  # as for the workers: the CPU quota included
    assert load(write(root, GOOD)).cache == CacheConfig(max_bytes=None, decode_ahead=cores)
    alone = load(write(root, GOOD + "\n[cache]\ndecode_ahead = 0\n")).cache
    assert alone == CacheConfig(max_bytes=None, decode_ahead=0)
    both = load(write(root, GOOD + "\n[cache]\nmax_bytes = 4096\ndecode_ahead = 3\n")).cache
    assert both == CacheConfig(max_bytes=4096, decode_ahead=3)
    overridden = load(write(root, GOOD), {"DATA_NODE_CACHE__DECODE_AHEAD": "5"})
    assert overridden.cache.decode_ahead == 5


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", r"^cache\.decode_ahead: Expected an integer in \[0, 1024\] \(threads .*0 turns "),
        ("1025", r"^cache\.decode_ahead: .*Got 1025 instead\.$"),
        ("true", r"^cache\.decode_ahead: .*Got True instead\.$"),
        ('"2"', r"^cache\.decode_ahead: .*Got '2' instead\.$"),
        ("1.5", r"^cache\.decode_ahead: .*Got 1\.5 instead\.$"),
    ],
)
def test_bad_decode_ahead_values_name_the_key(root, value, message):
    with pytest.raises(ConfigError, match=message):
        load(write(root, GOOD + f"\n[cache]\ndecode_ahead = {value}\n"))

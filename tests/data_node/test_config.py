"""Node config: a valid file loads; every invalid key is named in the error.

Matrix: full config (two multi-source arrays, class_list, maxlen, preprocessor, limits);
env overrides (known, unknown, TOML-typed); missing file / not TOML; unknown keys at each
level; missing data_root / path / key; source outside data_root (``..``, absolute, symlink);
missing source file; unknown format; class_list length; label collision; bad limit values;
preprocessor malformed / not importable / not callable. Jobs: output_root default and
override, output_root naming a file, [jobs] defaults / values / env overrides / bad values.
"""

from __future__ import annotations

import textwrap

import pytest

from data_node.config import JobsConfig, LimitsConfig, load, resolve_inside, resolve_preprocessor
from data_node.errors import ConfigError, PathOutsideRootError


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

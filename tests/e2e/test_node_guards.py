"""Operator mistakes fail loudly; cleanup never delays serving nor blocks job RPCs.

Matrix: roots holding one another (the output root holding the state dir or being it, the
state dir inside the data root, the data root inside the output root, a configured source
inside the output root): `data-node serve` exits 2 naming both keys. A second node on a port
another node serves: "node.listen: cannot bind ...: port N is already in use", and clients
keep reaching the first. A second node on a state dir in use: it exits 2 naming the dir and
the first node's pid, while the first node's running job keeps running and its staging
stays; on an output root in use (another state dir): refused naming node.output_root. Leftover
staging is moved to the trash when the node is built and deleted only once it serves (health
answers SERVING while the deletion is held up), and an overwritten output is deleted outside
the job lock (GetJob and ListJobs answer while its deletion is held up).
"""

from __future__ import annotations

import re
import subprocess
import threading

import h5py
import numpy as np
import pytest
from node_support import (
    node_command,
    node_environment,
    start_blocked_job,
    start_node_process,
    wait_for_empty_trash,
)

from data_client import DataNodeClient
from data_client.jobs import FileArray, JobState
from data_node.cli import main
from data_node.config import load
from data_node.errors import ConfigError
from data_node.jobs import _output_tree
from data_node.server import build_server

VOLUME = np.random.default_rng(51).random((4, 12, 10), dtype=np.float32)
IMAGE = FileArray("vol.h5", "image")


def write_node(root, node_lines=""):
    (root / "data").mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "data" / "vol.h5", "w") as file:
        file["image"] = VOLUME
    config = root / "node.toml"
    config.write_text(f'[node]\nlisten = "127.0.0.1:0"\ndata_root = "data"\n{node_lines}')
    return config


@pytest.mark.parametrize(
    ("node_lines", "pattern"),
    [
        (
            'output_root = "out"\nstate_dir = "out/state"\n',
            (
                r"node\.state_dir: Expected a directory apart from node\.output_root \(a job's "
                r"output could replace the job database\)\. Got '.*/out/state', which lies "
                r"inside node\.output_root '.*/out', instead\."
            ),
        ),
        (
            'output_root = "same"\nstate_dir = "same"\n',
            r"node\.state_dir: .*Got '.*/same', which is also node\.output_root",
        ),
        (
            'state_dir = "data/state"\n',
            r"node\.state_dir: Expected a directory apart from node\.data_root .* lies inside",
        ),
        (
            'output_root = "."\nstate_dir = "/tmp/elsewhere-state"\n',
            r"node\.data_root: Expected a directory outside node\.output_root .* lies inside",
        ),
        (
            (
                'output_root = "data/outputs"\n[datasets.d.arrays]\n'
                'image = { path = "outputs/x.h5", key = "x" }\n'
            ),
            r"datasets\.d\.arrays\.image\[0\]\.path: Expected a file outside node\.output_root",
        ),
    ],
    ids=["output-holds-state", "same-dir", "state-in-data", "data-in-output", "source-in-output"],
)
def test_overlapping_roots_are_refused_naming_the_keys(tmp_path, capsys, node_lines, pattern):
    config = write_node(tmp_path, node_lines)
    (tmp_path / "data" / "outputs").mkdir()
    with h5py.File(tmp_path / "data" / "outputs" / "x.h5", "w") as file:
        file["x"] = VOLUME
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"data-node: cannot serve {str(config)!r}: ")
    assert re.search(pattern, err), err


def test_a_second_node_on_a_port_in_use_is_refused(tmp_path):
    first, port = start_node_process(write_node(tmp_path / "a"), tmp_path / "a.log")
    try:
        config = load(write_node(tmp_path / "b"))

        def bind_the_same_port():
            server, _ = build_server(config, f"127.0.0.1:{port}")
            server.stop(None)  # only reached if it bound: the test fails

        with pytest.raises(RuntimeError) as caught:
            bind_the_same_port()
        assert str(caught.value) == (
            f"node.listen: cannot bind '127.0.0.1:{port}': port {port} is already in use "
            "(another node or program serves it)."
        )
        assert main(["health", "--address", f"127.0.0.1:{port}"]) == 0
    finally:
        first.kill()
        first.wait()


def test_a_second_node_on_a_state_dir_or_output_root_in_use_is_refused(tmp_path):
    config_path = write_node(tmp_path)
    config = load(config_path)
    first, port = start_node_process(config_path, tmp_path / "first.log")
    try:
        with DataNodeClient(f"127.0.0.1:{port}") as client:
            job = start_blocked_job(client, "blocked", IMAGE)
            second = subprocess.run(
                node_command(config_path),
                env=node_environment(),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert second.returncode == 2
            assert (
                f"node.state_dir: Expected a directory no other node uses. "
                f"{str(config.state_dir)!r} is locked by another node (pid {first.pid})"
            ) in second.stderr
            other_state = load(config_path, {"DATA_NODE_NODE__STATE_DIR": "other-state"})
            with pytest.raises(ConfigError, match=r"^node\.output_root: Expected a directory no"):
                build_server(other_state, "127.0.0.1:0")
            assert job.status().state is JobState.RUNNING
            assert (config.output_root / ".jobs" / job.job_id).is_dir()
            assert job.cancel().state is JobState.CANCELLED
    finally:
        first.kill()
        first.wait()


@pytest.fixture
def held_deletes(monkeypatch):
    """Deleting from the trash waits until the event is set; yields the event."""
    release = threading.Event()
    delete = _output_tree._delete

    def held(name, directory):
        assert release.wait(30), "the deletion was never released"
        delete(name, directory)

    monkeypatch.setattr(_output_tree, "_delete", held)
    yield release
    release.set()


def test_leftover_staging_is_deleted_once_the_node_serves(tmp_path, held_deletes):
    config = load(write_node(tmp_path))
    debris = config.output_root / ".jobs" / "dead-job"
    debris.mkdir(parents=True)
    for i in range(100):
        (debris / f"chunk{i}").write_bytes(b"x" * 1000)
    server, port = build_server(config, "127.0.0.1:0")
    try:
        assert list((config.output_root / ".jobs").iterdir()) == []
        (trashed,) = (config.output_root / ".trash").iterdir()
        assert len(list((trashed / "dead-job").iterdir())) == 100
        server.start()
        assert main(["health", "--address", f"127.0.0.1:{port}"]) == 0  # deletion held up
        assert trashed.exists()
        held_deletes.set()
        wait_for_empty_trash(config)
    finally:
        server.stop(None)


def test_an_overwritten_output_is_deleted_outside_the_job_lock(tmp_path, held_deletes):
    config = load(write_node(tmp_path))
    server, port = build_server(config, "127.0.0.1:0")
    server.start()
    try:
        with DataNodeClient(f"127.0.0.1:{port}", timeout=10) as client:
            first = client.submit_build("out", 3, IMAGE).wait(progress=False)
            trash = set((config.output_root / ".trash").iterdir())  # the first .jobs
            second = client.submit_build("out", 3, IMAGE, overwrite=True).wait(progress=False)
            assert second.state is JobState.SUCCEEDED, second.error
            (old,) = set((config.output_root / ".trash").iterdir()) - trash  # held up
            assert (old / "patches.h5").is_file()
            assert client.job(second.job_id).status().state is JobState.SUCCEEDED
            jobs = {info.job_id: info for info in client.jobs()}
            assert jobs[first.job_id].replaced_by == second.job_id
            assert old.exists()
        held_deletes.set()
        wait_for_empty_trash(config)
    finally:
        server.stop(None)

"""A node killed (SIGKILL) at each step of a publish: after a restart jobs and files agree.

Matrix: a job replacing (overwrite) the output, and the dataset, of an earlier succeeded job,
its node process killed at each of data_node.jobs.manager.PUBLISH_STEPS ("start": the result is
complete, nothing journaled; "intent": journaled; "aside": the old output moved aside;
"install": the result renamed into place; "commit": recorded SUCCEEDED). After a restart
(in-process) every job's state is checked against the files: a SUCCEEDED job not replaced
has its complete output (its own classes), no other job's result lies under its name, the
registered dataset streams exactly the output's patches, and no staging or trash is left.
Killed before the journal, the new job is FAILED (interrupted) and the old one stands;
killed after it, the restart finishes the publish: the new job SUCCEEDED, the old one
replaced by it.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from node_support import start_node_process, wait_for_empty_trash

from data_client import DataNodeClient
from data_client.jobs import FileArray, JobState
from data_node.config import load
from data_node.jobs.manager import INTERRUPTED, KILL_AT_VARIABLE, PUBLISH_STEPS
from data_node.server import build_server
from data_tools.patches import is_dataset_complete

VOLUME = np.random.default_rng(21).random((4, 12, 10), dtype=np.float32)
MASK = (VOLUME * 3).astype(np.uint8)
IMAGE = FileArray("vol.h5", "image")
LABELS = FileArray("vol.h5", "mask")
OLD_CLASSES, NEW_CLASSES = [1], [0, 2]


def write_node(root):
    (root / "data").mkdir()
    with h5py.File(root / "data" / "vol.h5", "w") as file:
        file["image"] = VOLUME
        file["mask"] = MASK
    config = root / "node.toml"
    config.write_text('[node]\nlisten = "127.0.0.1:0"\ndata_root = "data"\n')
    return config


def submit(client, class_list, **fields):
    return client.submit_build(
        "out", 3, IMAGE, LABELS, class_list, random_order=False, register_as="ds", **fields
    )


def classes_at(path):
    """The class values of the complete output at ``path``, or None."""
    if not is_dataset_complete(path):
        return None
    with h5py.File(path / "patches.h5", "r") as file:
        return sorted(int(name.removeprefix("class_")) for name in file)


def check_jobs_against_files(config, client):
    """Every job's state agrees with the files; returns the jobs by id."""
    jobs = {info.job_id: info for info in client.jobs()}
    for info in jobs.values():
        found = classes_at(config.output_root / info.output)
        own = sorted(c.value for c in info.classes) if info.classes else None
        if info.state is JobState.SUCCEEDED and not info.replaced_by:
            assert found == own, f"{info.job_id}: {found} under its name, not {own}"
        elif info.state is not JobState.SUCCEEDED:
            owners = [
                other
                for other in jobs.values()
                if other.state is JobState.SUCCEEDED
                and not other.replaced_by
                and other.output == info.output
            ]
            assert found is None or owners, f"{info.job_id} left an output: {found}"
    assert list((config.output_root / ".jobs").iterdir()) == []
    return jobs


@pytest.mark.parametrize("step", PUBLISH_STEPS)
def test_a_node_killed_while_publishing_restarts_with_jobs_and_files_in_agreement(tmp_path, step):
    config_path = write_node(tmp_path)
    config = load(config_path)
    server, port = build_server(config, "127.0.0.1:0")
    server.start()
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        old = submit(client, OLD_CLASSES).wait(progress=False)
    server.stop(None)
    assert old.state is JobState.SUCCEEDED, old.error

    node, port = start_node_process(config_path, tmp_path / "node.log", **{KILL_AT_VARIABLE: step})
    try:
        with DataNodeClient(f"127.0.0.1:{port}") as client:
            new = submit(client, NEW_CLASSES, overwrite=True)
            assert node.wait(timeout=60) == -9  # killed itself at ``step``
    finally:
        node.kill()
        node.wait()

    server, port = build_server(config, "127.0.0.1:0")
    server.start()
    try:
        with DataNodeClient(f"127.0.0.1:{port}") as client:
            jobs = check_jobs_against_files(config, client)
            expected = OLD_CLASSES if step == "start" else NEW_CLASSES
            assert classes_at(config.output_root / "out") == expected
            if step == "start":
                assert (jobs[new.job_id].state, jobs[new.job_id].error) == (
                    JobState.FAILED,
                    INTERRUPTED,
                )
                assert jobs[old.job_id].replaced_by == ""
            else:
                assert jobs[new.job_id].state is JobState.SUCCEEDED
                assert jobs[old.job_id].replaced_by == new.job_id
            described = client.describe("ds")
            assert described.classes == tuple(expected)
            patches, labels = next(iter(client.stream("ds", described.length)))
            with h5py.File(config.output_root / "out" / "patches.h5", "r") as file:
                written = [file[f"class_{value}"][()] for value in expected]
            np.testing.assert_array_equal(patches, np.concatenate(written))
            assert list(labels) == [v for v, p in zip(expected, written, strict=True) for _ in p]
        wait_for_empty_trash(config)
    finally:
        server.stop(None)

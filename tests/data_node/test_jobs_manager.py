"""JobManager with real job processes: results, failures, cancels, limits, restarts.

Matrix: a local job writes exactly what create_dataset writes (hdf5 / zarr / bcolz, with
writer_options reaching the writer; random order, seed, class_list order) and registers
"patch"/"label"; max_patches_per_class ordered (a prefix)
and random (a seeded subset); a failing build (class_list value absent) and a killed job
process end FAILED with no output and no staging dir; cancel a running job (terminated
within seconds), a queued job (at once) and an ended one (no change); max_queued_jobs;
an output nested in a running job's; watch events (first, progress, last), NOT_FOUND,
max_watchers, stop_watchers; close() fails a running job as interrupted; a new manager on
the same state dir marks a job recorded RUNNING as interrupted, removes staging debris and
runs a job recorded QUEUED; overwrite replaces an output when the job succeeds and keeps it
when the job fails; a manager failing to start (a database of another version) releases the
state dir and output root it locked. Every test ends with no job process left (children of the forkserver)
and no data_node-jobs thread.

"Blocked" jobs use the Dask executor with an unreachable scheduler: their process reads the
inputs, then waits for a connection, so they stay RUNNING without using CPU or disk.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time

import bcolz
import h5py
import numpy as np
import pytest
import zarr
from leak_check import assert_no_leaks, forkserver_children

from data_node.catalog.datasets import DatasetRegistry
from data_node.config import parse_config
from data_node.errors import (
    JobNotFoundError,
    LimitExceededError,
    NodeStoppingError,
    RequestError,
)
from data_node.jobs._store import JobRecord, JobStore
from data_node.jobs.manager import INTERRUPTED, STAGING_DIR, JobManager
from data_tools.patches import create_dataset, is_dataset_complete
from data_wire.v1 import jobs_pb2

VOLUME = np.random.default_rng(5).random((3, 9, 8), dtype=np.float32)
MASK = (VOLUME * 3).astype(np.uint8)
UNREACHABLE = "tcp://127.0.0.1:1"
ENDED = (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    with h5py.File(data / "vol.h5", "w") as file:
        file["image"] = VOLUME
        file["mask"] = MASK
    return data


@pytest.fixture
def make_manager(data_root, tmp_path):
    managers = []

    def make(**jobs):
        raw = {"node": {"data_root": str(data_root)}, "jobs": jobs}
        config = parse_config(raw, base_dir=tmp_path)
        registry = DatasetRegistry()
        manager = JobManager(config, registry)
        manager.start()
        managers.append(manager)
        return manager, config, registry

    with assert_no_leaks(thread_prefix="data_node-jobs"):
        yield make
        for manager in managers:
            manager.close()
        deadline = time.monotonic() + 5
        while forkserver_children():
            assert time.monotonic() < deadline, f"job processes left: {forkserver_children()}"
            time.sleep(0.02)


def request(output="out", **fields):
    base = {
        "volume": jobs_pb2.ArrayInput(file=jobs_pb2.FileArray(path="vol.h5", key="image")),
        "mask": jobs_pb2.ArrayInput(file=jobs_pb2.FileArray(path="vol.h5", key="mask")),
        "patchsize": 3,
        "output": output,
    }
    return jobs_pb2.SubmitBuildJobRequest(**(base | fields))


def blocked(output="blocked"):
    return request(output, executor="dask", scheduler_address=UNREACHABLE, file_format="zarr")


def wait_for(manager, job_id, states=ENDED, timeout=20.0):
    deadline = time.monotonic() + timeout
    while (job := manager.get(job_id)).state not in states:
        assert time.monotonic() < deadline, f"job stuck in {job.state}"
        time.sleep(0.02)
    return job


def wait_running_with_plan(manager, job_id):
    deadline = time.monotonic() + 20
    while not (job := manager.get(job_id)).classes:
        assert job.state in (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING), job.error
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return job


def read_back(path, file_format="hdf5"):
    """({array: contents}, {array: the backend's own array}) of a create_dataset output."""
    if file_format == "hdf5":
        with h5py.File(path / "patches.h5", "r") as file:
            return {n: file[n][()] for n in file}, {n: file[n].compression for n in file}
    if file_format == "zarr":
        group = zarr.open_group(str(path / "patches.zarr"), mode="r")
        return {n: a[...] for n, a in group.arrays()}, {n: a.chunks for n, a in group.arrays()}
    carrays = {n.name: bcolz.open(str(n), mode="r") for n in (path / "patches.bcolz").iterdir()}
    return {n: a[:] for n, a in carrays.items()}, {n: a.cparams.clevel for n, a in carrays.items()}


def read_h5(path):
    return read_back(path)[0]


# file_format -> (writer_options, what each array shows of them)
WRITER_OPTIONS = {
    "hdf5": ('{"compression": "gzip"}', "gzip"),
    "zarr": ('{"chunks": [2, 1, 3, 3]}', (2, 1, 3, 3)),
    "bcolz": ('{"cparams": {"clevel": 1}}', 1),
}


@pytest.mark.parametrize("file_format", ["hdf5", "zarr", "bcolz"])
def test_local_job_writes_what_create_dataset_writes(make_manager, tmp_path, file_format):
    manager, config, registry = make_manager()
    options, shown = WRITER_OPTIONS[file_format]
    fields = {"class_list": [2, 0], "seed": 9, "batchsize": 4, "register_as": "built"}
    fields |= {"file_format": file_format, "writer_options": options}
    job = manager.submit(request(**fields))
    assert job.state == jobs_pb2.JOB_STATE_QUEUED
    job = wait_for(manager, job.job_id)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job.error
    expected_dir = tmp_path / "expected"
    counts = create_dataset(
        expected_dir, 3, VOLUME, MASK, [2, 0], batchsize=4, file_format=file_format, rng=9
    )
    assert [(c.value, c.written, c.total) for c in job.classes] == [
        (value, count, count) for value, count in counts.items()
    ]
    assert job.fraction_done == 1.0
    assert 0 < job.elapsed_seconds == pytest.approx(job.ended_at - job.started_at)
    got, options_seen = read_back(config.output_root / "out", file_format)
    expected, _ = read_back(expected_dir, file_format)
    assert sorted(got) == sorted(expected) == ["class_0", "class_2"]
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    assert set(options_seen.values()) == {shown}
    assert is_dataset_complete(config.output_root / "out", file_format)
    assert os.listdir(config.output_root / STAGING_DIR) == []
    served = registry.get("built")
    assert served.array_names == ("patch", "label")
    assert served.classes == (2, 0)
    np.testing.assert_array_equal(
        np.asarray(served.array("patch")[:]), np.concatenate([got["class_2"], got["class_0"]])
    )
    np.testing.assert_array_equal(served.array("label"), [2] * counts[2] + [0] * counts[0])


def test_max_patches_per_class(make_manager, tmp_path):
    manager, config, _ = make_manager(max_concurrent_jobs=3)
    ordered = manager.submit(request("ordered", random_order=False, max_patches_per_class=20))
    subset = [
        manager.submit(request(name, seed=4, max_patches_per_class=20)) for name in ("r1", "r2")
    ]
    for job in (ordered, *subset):
        assert wait_for(manager, job.job_id).state == jobs_pb2.JOB_STATE_SUCCEEDED
    create_dataset(tmp_path, 3, VOLUME, MASK, random_order=False)
    everything = read_h5(tmp_path)
    first = read_h5(config.output_root / "ordered")
    again, other = read_h5(config.output_root / "r1"), read_h5(config.output_root / "r2")
    for name, patches in everything.items():
        np.testing.assert_array_equal(first[name], patches[:20])
        np.testing.assert_array_equal(again[name], other[name])  # the seed fixes the subset
        assert len(again[name]) == 20
        rows = {row.tobytes() for row in patches}
        assert all(row.tobytes() in rows for row in again[name])


def test_overwrite_replaces_the_output_only_when_the_job_succeeds(make_manager):
    manager, config, _ = make_manager()
    output = config.output_root / "out"
    for class_list in ([1], [0, 2]):
        job = manager.submit(request(class_list=class_list, overwrite=True))
        assert wait_for(manager, job.job_id).state == jobs_pb2.JOB_STATE_SUCCEEDED
        assert sorted(read_h5(output)) == [f"class_{value}" for value in class_list]
    job = wait_for(manager, manager.submit(request(class_list=[9], overwrite=True)).job_id)
    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert sorted(read_h5(output)) == ["class_0", "class_2"]
    assert is_dataset_complete(output)
    assert os.listdir(config.output_root / STAGING_DIR) == []


def test_failed_build_leaves_no_output(make_manager):
    manager, config, _ = make_manager()
    job = wait_for(manager, manager.submit(request(class_list=[1, 9])).job_id)
    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert job.error.startswith("Expected class_list to hold values present in mask")
    assert not (config.output_root / "out").exists()
    assert os.listdir(config.output_root / STAGING_DIR) == []


def test_killed_process_fails_the_job(make_manager):
    manager, config, _ = make_manager()
    job = wait_running_with_plan(manager, manager.submit(blocked()).job_id)
    (pid,) = forkserver_children()
    os.kill(pid, signal.SIGKILL)
    job = wait_for(manager, job.job_id)
    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert job.error == "the job's process ended without a result (killed by SIGKILL)"
    assert os.listdir(config.output_root / STAGING_DIR) == []


def test_cancel_running_queued_and_ended_jobs(make_manager):
    manager, config, _ = make_manager(max_concurrent_jobs=1)
    running = wait_running_with_plan(manager, manager.submit(blocked()).job_id)
    queued = manager.submit(request("queued"))
    cancelled = manager.cancel(queued.job_id)
    assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED
    assert cancelled.started_at == 0
    start = time.monotonic()
    stopped = manager.cancel(running.job_id)
    assert time.monotonic() - start < 20  # blocked on an unreachable scheduler (30 s timeout)
    assert stopped.state == jobs_pb2.JOB_STATE_CANCELLED
    assert stopped.error == ""
    assert forkserver_children() == set()
    assert manager.cancel(running.job_id) == manager.get(running.job_id)
    assert not (config.output_root / "blocked").exists()
    assert os.listdir(config.output_root / STAGING_DIR) == []
    with pytest.raises(JobNotFoundError, match=r"^job_id: Expected the id of a job"):
        manager.cancel("nope")


def test_queue_limit_and_output_conflicts(make_manager):
    manager, _, _ = make_manager(max_concurrent_jobs=1, max_queued_jobs=1)
    running = wait_running_with_plan(manager, manager.submit(blocked("a")).job_id)
    with pytest.raises(RequestError, match=rf"^output: .*Job {running.job_id} writes 'a'"):
        manager.submit(request("a/nested"))
    manager.submit(request("b"))
    with pytest.raises(LimitExceededError, match=r"^max_queued_jobs: the node queues at most 1"):
        manager.submit(request("c"))
    assert [job.state for job in manager.list().jobs] == [
        jobs_pb2.JOB_STATE_RUNNING,
        jobs_pb2.JOB_STATE_QUEUED,
    ]


def test_watch_events(make_manager):
    manager, _, _ = make_manager(max_watchers=1)
    job = manager.submit(request(random_order=False))
    events = list(manager.watch(job.job_id, threading.Event()))
    assert events[-1].state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert all(e.state not in ENDED for e in events[:-1])
    assert [e.fraction_done for e in events] == sorted(e.fraction_done for e in events)
    assert len(list(manager.watch(job.job_id, threading.Event()))) == 1  # ended: one event
    with pytest.raises(JobNotFoundError, match=r"^job_id:"):
        next(manager.watch("nope", threading.Event()))

    blocker = manager.submit(blocked())
    first = manager.watch(blocker.job_id, threading.Event())
    assert next(first).job_id == blocker.job_id
    with pytest.raises(LimitExceededError, match=r"^max_watchers: "):
        next(manager.watch(blocker.job_id, threading.Event()))
    manager.stop_watchers()
    with pytest.raises(NodeStoppingError):
        list(first)


def test_stop_event_ends_a_watch(make_manager):
    manager, _, _ = make_manager()
    job = manager.submit(blocked())
    stop = threading.Event()
    events = manager.watch(job.job_id, stop)
    next(events)
    stop.set()
    assert list(events) == []


def test_close_interrupts_running_jobs_and_a_restart_keeps_them(make_manager):
    manager, _, _ = make_manager()
    running = wait_running_with_plan(manager, manager.submit(blocked()).job_id)
    manager.close()
    assert forkserver_children() == set()
    again, _, _ = make_manager()
    (job,) = again.list().jobs
    assert job.job_id == running.job_id
    assert (job.state, job.error) == (jobs_pb2.JOB_STATE_FAILED, INTERRUPTED)
    with pytest.raises(NodeStoppingError):
        manager.submit(request())


def test_restart_fails_interrupted_jobs_and_runs_queued_ones(make_manager, tmp_path):
    first, config, _ = make_manager()  # creates the state dir and the database
    first.close()  # a node locks its state dir
    store = JobStore(config.state_dir / "jobs.sqlite3")
    accepted = request("resumed", seed=1, random_order=False)
    store.insert(JobRecord("crashed", "RUNNING", accepted.SerializeToString(), 1.0, 2.0))
    store.insert(JobRecord("waiting", "QUEUED", accepted.SerializeToString(), 3.0))
    store.close()
    debris = config.output_root / STAGING_DIR / "crashed" / "patches.h5"
    debris.parent.mkdir(parents=True)
    debris.touch()
    manager, _, _ = make_manager()
    crashed = manager.get("crashed")
    assert (crashed.state, crashed.error) == (jobs_pb2.JOB_STATE_FAILED, INTERRUPTED)
    assert crashed.ended_at > 0
    assert not debris.parent.exists()
    assert wait_for(manager, "waiting").state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert (config.output_root / "resumed" / "patches.h5").is_file()


def test_a_job_error_names_no_server_path(make_manager, data_root):
    """A job that fails reading its input reports the file relative to the data root."""
    manager, _, _ = make_manager(max_concurrent_jobs=1)
    gone = data_root / "gone.h5"
    gone.write_bytes((data_root / "vol.h5").read_bytes())
    holder = manager.submit(blocked())
    wait_for(manager, holder.job_id, states=(jobs_pb2.JOB_STATE_RUNNING,))
    queued = manager.submit(
        request(
            "lost",
            volume=jobs_pb2.ArrayInput(file=jobs_pb2.FileArray(path="gone.h5", key="image")),
            mask=None,
        )
    )
    gone.unlink()  # checked at submission, gone when the job runs
    manager.cancel(holder.job_id)
    job = wait_for(manager, queued.job_id)
    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert "gone.h5" in job.error, job.error
    assert str(data_root) not in job.error, job.error
    assert str(data_root.resolve()) not in job.error, job.error


def test_a_manager_that_fails_to_start_releases_its_directories(data_root, tmp_path):
    config = parse_config({"node": {"data_root": str(data_root)}}, base_dir=tmp_path)
    config.state_dir.mkdir()
    connection = sqlite3.connect(config.state_dir / "jobs.sqlite3")
    connection.execute("PRAGMA user_version = 99")
    connection.close()
    with pytest.raises(sqlite3.DatabaseError, match="Got version 99"):
        JobManager(config, DatasetRegistry())
    (config.state_dir / "jobs.sqlite3").unlink()
    manager = JobManager(config, DatasetRegistry())  # neither directory is still locked
    manager.close()

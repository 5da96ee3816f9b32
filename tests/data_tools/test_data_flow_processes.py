"""data_flow with worker processes: determinism, sources, shared memory, errors, shutdown.

Matrix: (nb_proc_workers, nb_io_workers) covering every value of {0, 1, 2, 4} x {1, 2, 4}
(and forkserver once) against the inline stream, bit for bit, with a random augmenting
preprocessor over two epochs; sources {h5py opened in the parent, zarr, numpy >= 1 MiB
(shared memory), numpy small (pickled), delayed_view over HDF5, unpicklable}; results
{larger than the pool's blocks, Python objects, unpicklable}; orders and results larger
than a pipe's buffer; ordered=False; errors {rebuildable type, unrebuildable type, SIGKILLed
worker}; shutdown {break, close(), with, garbage collection} x shared_reads {False, True},
all under leak checks.
Process start-up dominates the time, so each test starts as few workers as it can.
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import traceback

import h5py
import numpy as np
import pytest
import zarr
from data_flow_support import (
    Unpicklable,
    as_objects,
    augment,
    divide_by_255,
    fail_if_contains,
    grow,
    raise_unrebuildable,
    unpicklable_result,
)
from leak_check import assert_no_leaks

from data_tools.errors import WorkerError
from data_tools.io.data_flow import data_flow
from data_tools.wrap import delayed_view

N = 23
X = np.random.default_rng(0).random((N, 5, 4))
Y = np.arange(N)
BATCHES = 12  # two epochs of 6 batches


def stream(**kwargs):
    flow = data_flow([X, Y], 4, sample_random=True, preprocessor=augment, seed=21, **kwargs)
    with flow:
        return list(itertools.islice(flow.flow_with_info(), BATCHES))


@pytest.fixture(scope="module")
def reference():
    return stream(nb_io_workers=0)


@pytest.mark.parametrize(
    ("procs", "io", "method"),
    [
        (0, 1, "spawn"),
        (0, 2, "spawn"),
        (0, 4, "spawn"),
        (1, 4, "spawn"),
        (2, 1, "spawn"),
        (4, 2, "spawn"),
        (2, 1, "forkserver"),
    ],
)
def test_batches_are_bit_identical_for_any_worker_count(reference, procs, io, method):
    with assert_no_leaks():
        got = stream(nb_proc_workers=procs, nb_io_workers=io, start_method=method)
    assert [(i.epoch, i.batch_index) for i in got] == [(e, b) for e in (0, 1) for b in range(6)]
    for a, b in zip(got, reference, strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
        for x, y in zip(a.arrays, b.arrays, strict=True):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)


def test_readme_example_divide_by_255_in_two_processes(capsys):
    images = np.full((10, 2, 2), 255.0)
    labels = np.arange(10)
    data_gen = data_flow(
        data=[images, labels],
        batch_size=4,
        sample_random=True,
        preprocessor=divide_by_255,
        nb_proc_workers=2,
        loop_forever=False,
    )
    num_batches = len(data_gen)
    seen = []
    with assert_no_leaks():
        for i, batch in enumerate(data_gen.flow()):
            print(f"Yielded batch {i + 1} of {num_batches}")
            np.testing.assert_array_equal(batch[0], 1.0)
            seen.extend(batch[1].tolist())
    assert sorted(seen) == list(range(10))
    assert capsys.readouterr().out.splitlines()[-1] == "Yielded batch 3 of 3"
    np.testing.assert_array_equal(images, 255.0)


def test_workers_reopen_sources_from_their_description(tmp_path):
    big = np.random.default_rng(1).random((N, 100, 60))  # > 1 MiB: shared memory
    longer = np.arange((N + 2) * 2).reshape(N + 2, 2)
    z = zarr.create_array(store=str(tmp_path / "y.zarr"), shape=(N,), dtype="i8", chunks=(5,))
    z[:] = Y * 3
    with h5py.File(tmp_path / "x.h5", "w") as handle:
        handle.create_dataset("x", data=X, chunks=(3, 5, 4))
        handle["longer"] = longer
    with h5py.File(tmp_path / "x.h5", "r") as handle, assert_no_leaks():
        view = delayed_view(handle["longer"], idx_min=2)  # pickles its source as path + key
        flow = data_flow(
            [handle["x"], z, big, Y, view],
            5,
            nb_proc_workers=2,
            sample_random=True,
            sample_with_replacement=True,
            seed=3,
        )
        with flow:
            for info in itertools.islice(flow.flow_with_info(), 8):
                np.testing.assert_array_equal(info.arrays[0], X[info.indices])
                np.testing.assert_array_equal(info.arrays[1], Y[info.indices] * 3)
                np.testing.assert_array_equal(info.arrays[2], big[info.indices])
                np.testing.assert_array_equal(info.arrays[3], Y[info.indices])
                np.testing.assert_array_equal(info.arrays[4], longer[2:][info.indices])


def test_results_larger_than_blocks_grow_the_pool():
    with assert_no_leaks():
        flow = data_flow([X.astype(np.float32), Y], 3, nb_proc_workers=1, preprocessor=grow)
        with flow:
            infos = flow.flow_with_info()  # kept alive: its blocks are checked below
            for info in itertools.islice(infos, 20):
                big, labels = info.arrays
                expected = np.concatenate([X[info.indices].astype(np.float32)] * 3, axis=1)
                np.testing.assert_array_equal(big, expected.astype(np.float64))
                np.testing.assert_array_equal(labels, Y[info.indices])
            blocks = [
                e for e in os.scandir("/dev/shm") if e.name.startswith(f"data_tools_{os.getpid()}_")
            ]
            assert max(e.stat().st_size for e in blocks) >= big.nbytes + labels.nbytes


@pytest.mark.timeout(60)
def test_python_objects_and_large_orders_and_results():
    # Orders (160 kB of indices) and pickled results both overflow a pipe's buffer.
    labels = np.arange(60_000) * 100_003
    with assert_no_leaks():
        flow = data_flow(
            [labels], 20_000, nb_proc_workers=1, max_in_flight=3, preprocessor=as_objects
        )
        with flow:
            for info in itertools.islice(flow.flow_with_info(), 6):
                (objects,) = info.arrays
                assert objects.dtype == object
                assert objects.tolist() == labels[info.indices].tolist()


def test_unpicklable_sources_and_results_are_type_errors():
    with assert_no_leaks():
        flow = data_flow([X, Unpicklable(Y)], 2, nb_proc_workers=1)
        with pytest.raises(TypeError, match="picklable"):
            next(flow.flow())
        flow = data_flow([X], 2, nb_proc_workers=1, preprocessor=unpicklable_result)
        with pytest.raises(TypeError, match="pickle") as caught:
            next(flow.flow())
        assert "Traceback" in str(caught.value.__cause__)


def test_unordered_with_processes_yields_every_batch_once():
    with assert_no_leaks():
        flow = data_flow([X, Y], 2, nb_proc_workers=2, ordered=False, loop_forever=False)
        infos = list(flow.flow_with_info())
    assert sorted(i.batch_index for i in infos) == list(range(12))
    for info in infos:
        np.testing.assert_array_equal(info.arrays[1], Y[info.indices])


def test_worker_exceptions_surface_with_type_and_traceback():
    with assert_no_leaks():
        preprocessor = functools.partial(fail_if_contains, value=9)
        flow = data_flow([X, Y], 2, nb_proc_workers=2, preprocessor=preprocessor)
        batches = flow.flow()
        assert len(list(itertools.islice(batches, 4))) == 4  # 0..7 come before the 9
        with pytest.raises(ValueError, match="refusing a batch that holds 9") as caught:
            next(batches)
        assert "in fail_if_contains" in str(caught.value.__cause__)
        assert "in fail_if_contains" in "".join(traceback.format_exception(caught.value))
        assert list(batches) == []

        flow = data_flow([X, Y], 2, nb_proc_workers=1, preprocessor=raise_unrebuildable)
        with pytest.raises(WorkerError, match="UnrebuildableError: left and right") as caught:
            next(flow.flow())
        assert "in raise_unrebuildable" in str(caught.value)


def test_a_killed_worker_is_an_error_not_a_hang():
    with assert_no_leaks():
        flow = data_flow([X, Y], 2, nb_proc_workers=2)
        batches = flow.flow()
        next(batches)
        workers = sorted(
            (p for p in multiprocessing.active_children() if p.name.startswith("data_tools")),
            key=lambda p: p.name,
        )
        assert [p.name for p in workers] == ["data_tools-proc-0", "data_tools-proc-1"]
        os.kill(workers[0].pid, signal.SIGKILL)
        with pytest.raises(WorkerError, match=r"data_tools-proc-0 .*killed by SIGKILL"):
            list(itertools.islice(batches, 1000))


@pytest.mark.parametrize("shared_reads", [False, True])
@pytest.mark.parametrize("how", ["break", "close", "with", "gc"])
def test_shutdown_stops_processes_and_frees_shared_memory(how, shared_reads):
    with assert_no_leaks():
        flow = data_flow(
            [X, Y], 2, nb_proc_workers=1, preprocessor=augment, seed=1, shared_reads=shared_reads
        )
        if how == "break":
            for _ in flow.flow():
                break
        elif how == "close":
            batches = flow.flow()
            next(batches)
            flow.close()
            assert list(batches) == []
        elif how == "with":
            with flow:
                next(flow.flow())
        else:
            batches = flow.flow()
            next(batches)
            del batches, flow
            gc.collect()


EXIT_SCRIPT = """
import builtins, json, os, sys
import numpy as np
from data_tools.io import data_flow

if __name__ == "__main__":
    flow = data_flow([np.zeros((10, 300_000))], 2, nb_proc_workers=1)
    batches = flow.flow()
    next(batches)
    prefix = f"data_tools_{os.getpid()}_"
    blocks = [name for name in os.listdir("/dev/shm") if name.startswith(prefix)]
    print(json.dumps({"prefix": prefix, "blocks": len(blocks)}), flush=True)
    # Still open, and referenced from where interpreter teardown looks last.
    builtins.kept_open = batches
    sys.exit(0)
"""


def test_a_flow_left_open_is_closed_at_interpreter_exit(tmp_path):
    script = tmp_path / "exit_open.py"
    script.write_text(EXIT_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "leaked" not in done.stderr  # the resource tracker found nothing to clean up
    report = json.loads(done.stdout)
    assert report["blocks"] >= 2  # the shared input and at least one result block
    assert not [name for name in os.listdir("/dev/shm") if name.startswith(report["prefix"])]


def test_preprocessor_from_an_interactive_main_is_refused_up_front():
    code = (
        "import numpy as np\n"
        "from data_tools.io import data_flow\n"
        "def double(batch):\n"
        "    return batch[0] * 2\n"
        "try:\n"
        "    data_flow([np.zeros(4)], 2, nb_proc_workers=1, preprocessor=double)\n"
        "except TypeError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    assert "Expected preprocessor to be importable by worker processes" in result.stdout, result

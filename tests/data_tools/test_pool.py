"""WorkerPool: warm worker processes shared by flows.

Matrix:

* two flows on one pool, interleaved: each bit-identical to the same flow in-process, and
  no process starts for them (the pool's pids are unchanged);
* a worker killed (SIGKILL) while it runs a flow's batch: the batch runs again on another
  worker, the flow is bit-identical and the dead worker is replaced; a second death of the
  same batch's worker fails the flow with the exit reason, and the pool serves on;
* fairness: a flow whose consumer stopped reading holds no worker, and another flow on a
  one-worker pool gets all its batches; a flow never uses more workers than its cap;
* results written straight into the shared-memory block by a preprocessor taking ``out``
  (the library's SampleAugmentation among them: bit-identical to the flow in-process);
* nothing left (threads, processes, /dev/shm) after flows end and after the pool closes; a
  worker stuck on a batch of a closed flow is killed and replaced;
* the first batch on a warm pool against one on a flow's own new processes (printed).
"""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
from leak_check import assert_no_leaks
from pool_support import (
    Gate,
    fill_out,
    kill_running,
    noisy,
    open_gate,
    read_in_thread,
    running,
    wait_for,
)

from data_tools.data_augmentation import SampleAugmentation, parse_augmentation_spec
from data_tools.errors import WorkerError
from data_tools.io import data_flow
from data_tools.io import pool as pool_module
from data_tools.io.pool import WorkerPool
from data_tools.io.preprocessing import accepts_out

X = np.arange(40 * 3, dtype=np.float64).reshape(40, 3)


@pytest.fixture
def pool():
    with WorkerPool(2) as pool:
        assert pool.wait_ready(60)
        yield pool


def pids(pool):
    return {worker.pid for worker in pool.workers()}


def test_flows_on_one_pool_are_bit_identical_to_in_process(pool):
    before = pids(pool)
    options = {"sample_random": True, "preprocessor": noisy, "loop_forever": False}
    flows = [data_flow([X], 4, nb_proc_workers=2, seed=seed, **options) for seed in (1, 2)]
    streams = [flow.flow_with_info(pool=pool) for flow in flows]
    got = [[], []]
    for pair in itertools.zip_longest(*streams):
        for index, info in enumerate(pair):
            got[index].append(info.arrays[0])
    for seed, batches in zip((1, 2), got, strict=True):
        expected = data_flow([X], 4, nb_io_workers=0, seed=seed, **options).flow()
        for batch, (want,) in zip(batches, expected, strict=True):
            np.testing.assert_array_equal(batch, want)
    assert pids(pool) == before


def gated_flow(tmp_path):
    gate = tmp_path / "gate"
    return gate, data_flow(
        [X], 4, nb_proc_workers=1, preprocessor=Gate(str(gate)), loop_forever=False
    )


def test_a_killed_workers_batch_runs_again_and_the_flow_is_bit_identical(tmp_path):
    with WorkerPool(2, retries=1) as pool:
        gate, flow = gated_flow(tmp_path)
        reader, got = read_in_thread(flow.flow_with_info(pool=pool))
        victim = kill_running(pool)
        again = wait_for(lambda: running(pool, {victim.pid}), what="the batch running again")
        open_gate(gate)
        reader.join(60)
        assert not reader.is_alive()
        assert again.pid != victim.pid
        np.testing.assert_array_equal(np.concatenate([info.arrays[0] for info in got]), X * 2)
        assert victim.pid not in pids(pool)
        wait_for(lambda: pool.num_workers == 2, what="the dead worker's replacement")


def test_a_second_death_fails_the_flow_with_the_exit_reason(tmp_path):
    with WorkerPool(2, retries=1) as pool:
        gate, flow = gated_flow(tmp_path)
        reader, got = read_in_thread(flow.flow_with_info(pool=pool))
        first = kill_running(pool)
        second = kill_running(pool, {first.pid})
        reader.join(60)
        assert not reader.is_alive()
        (error,) = got
        assert isinstance(error, WorkerError)
        assert f"{second.name} (pid {second.pid}) died unexpectedly (killed by SIGKILL)" in str(
            error
        )
        open_gate(gate)
        assert pool.wait_ready(60)  # two replacements, and the pool serves on
        batches = list(data_flow([X], 8, nb_proc_workers=2, loop_forever=False).flow())
        np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), X)


def test_a_stalled_flow_holds_no_worker_and_starves_no_other():
    with WorkerPool(1) as pool:
        assert pool.wait_ready(60)
        stalled = data_flow([X], 4, nb_proc_workers=1, max_in_flight=2, preprocessor=noisy)
        stalled_batches = stalled.flow_with_info(pool=pool)
        first = next(stalled_batches)  # then its consumer stops reading
        other = data_flow([X], 2, nb_proc_workers=1, preprocessor=noisy, seed=3)
        reference = data_flow([X], 2, nb_io_workers=0, preprocessor=noisy, seed=3).flow()
        others = itertools.islice(other.flow_with_info(pool=pool), 100)
        for number, (info, (want,)) in enumerate(zip(others, reference, strict=False)):
            np.testing.assert_array_equal(info.arrays[0], want)
            if number >= 10:  # the stalled flow's batches in flight (2) ran in turn by now
                assert all(w.stream in (None, 1) for w in pool.workers())
        second = next(stalled_batches)  # the stalled flow goes on where it was
        assert (second.epoch, second.batch_index) == (first.epoch, first.batch_index + 1)
        stalled.close()
        other.close()


def test_a_flow_uses_at_most_its_cap_of_workers(pool):
    seen = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.append(sum(w.stream is not None for w in pool.workers()))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        flow = data_flow([X], 2, nb_proc_workers=1, max_in_flight=4, preprocessor=noisy)
        batches = list(itertools.islice(flow.flow_with_info(pool=pool), 60))
    finally:
        done.set()
        watcher.join()
    assert len(batches) == 60
    assert max(seen) == 1


def test_results_are_written_straight_into_the_block_by_a_preprocessor_taking_out(pool):
    flow = data_flow([X], 4, nb_proc_workers=1, preprocessor=fill_out, loop_forever=False)
    infos = list(flow.flow_with_info(pool=pool))
    np.testing.assert_array_equal(np.concatenate([i.arrays[0] for i in infos]), X * 2)
    # The worker learns the results' shapes from its first batch; every later one whose
    # block holds them is written in place: from the third on (the first two blocks were
    # sized from the inputs, before the larger results were seen).
    flags = [int(i.arrays[1].min()) for i in infos]
    assert flags[0] == 0
    assert all(flags[2:])
    inline = data_flow([X], 4, nb_io_workers=0, preprocessor=fill_out, loop_forever=False)
    for info, (x, written) in zip(infos, inline.flow(), strict=True):
        np.testing.assert_array_equal(info.arrays[0], x)
        assert not written.any()


def test_nothing_is_left_after_flows_end_and_after_the_pool_closes():
    with assert_no_leaks():
        pool = WorkerPool(2)
        pool.start()
        assert pool.wait_ready(60)
        with assert_no_leaks():  # the pool's processes and thread predate these flows
            for shared_reads in (False, True):
                flow = data_flow(
                    [np.zeros((40, 40_000))], 4, nb_proc_workers=2, shared_reads=shared_reads
                )
                batches = flow.flow_with_info(pool=pool)
                next(batches)
                flow.close()
            wait_for(lambda: pool.busy_workers == 0, what="the workers to be idle")
        pool.close()
        pool.close()  # idempotent


def test_first_batch_on_a_warm_pool(pool):
    def first_batch(**options):
        start = time.perf_counter()
        flow = data_flow([X], 4, nb_proc_workers=1, preprocessor=noisy)
        next(flow.flow_with_info(**options))
        flow.close()
        return time.perf_counter() - start

    before = pids(pool)
    cold, warm = first_batch(), first_batch(pool=pool)
    print(f"first batch: own new processes {cold:.3f} s, warm pool {warm:.3f} s")
    assert pids(pool) == before  # the warm flow started no process


def test_a_pool_is_started_once_and_needs_a_worker():
    with pytest.raises(ValueError, match="num_workers >= 1"):
        WorkerPool(0)
    pool = WorkerPool(1)
    with pytest.raises(RuntimeError, match="started, open"):
        pool.open_stream([X], None, cap=1, num_slots=1, block_nbytes=0)
    pool.start()
    with pytest.raises(RuntimeError, match="neither started nor closed"):
        pool.start()
    pool.close()


def test_a_worker_stuck_on_a_closed_flows_batch_is_killed_and_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(pool_module, "ABANDONED_BATCH_S", 0.2)
    with WorkerPool(2) as pool:
        _, flow = gated_flow(tmp_path)  # the gate never opens
        reader, got = read_in_thread(flow.flow_with_info(pool=pool))
        stuck = wait_for(lambda: running(pool), what="a worker running the first batch")
        flow.close()
        reader.join(60)
        assert not reader.is_alive()
        assert got == []
        wait_for(lambda: stuck.pid not in pids(pool), what="the stuck worker's end")
        assert pool.wait_ready(60)
        assert pool.num_workers == 2


def test_workers_that_die_as_they_start_fail_the_flows_instead_of_restarting_for_ever():
    with WorkerPool(1, preload=["exit_on_import"]) as pool:
        flow = data_flow([X], 4, nb_proc_workers=1)
        with pytest.raises(WorkerError, match=r"3 workers in a row died as they started"):
            next(flow.flow_with_info(pool=pool))
        with pytest.raises(RuntimeError, match="started, open"):
            next(flow.flow_with_info(pool=pool))


def test_the_library_augmentation_written_into_the_blocks_is_bit_identical(pool):
    images = np.random.default_rng(0).random((24, 1, 12, 10), dtype=np.float32)
    masks = (images > 0.5).astype(np.uint8)
    spec = parse_augmentation_spec(rotation_range=30.0, zoom_range=(0.8, 1.2), crop_size=(8, 8))
    augment = SampleAugmentation(spec, seed=5, x_position=0, y_position=1)
    options = {"preprocessor": augment, "seed": 5, "sample_random": True, "loop_forever": False}
    assert accepts_out(augment)
    got = data_flow([images, masks], 4, nb_proc_workers=1, **options).flow_with_info(pool=pool)
    expected = data_flow([images, masks], 4, nb_io_workers=0, **options).flow()
    for info, want in zip(got, expected, strict=True):
        for array, wanted in zip(info.arrays, want, strict=True):
            assert array.shape == wanted.shape
            np.testing.assert_array_equal(array, wanted)

"""data_flow in one process: the reference API, sampling, resume, shards and lifecycle.

Matrix: workers {inline (0 threads), 1, 2, 4 io threads}; sampling {sequential, shuffled,
with replacement, weighted}; drop_incomplete_batches x loop_forever; resume from
(epoch, batch) incl. the end of an epoch; shards of 3 ranks; ordered and unordered;
preprocessors {none, reference-style, with rng, in place, bad return, raising}; sources
{numpy, h5py, zarr}; shutdown {exhausted, break, close(), with, garbage collection} under
leak checks; bad arguments (the type raised and the argument named); lanes {2, 3, 4} merged
equal one flow from any (epoch, batch) start, with ranks, workers and an rng preprocessor,
one epoch only without loop_forever, lane out of range; a subset of elements {sequential,
shuffled, weighted, 2 ranks, resumed} yields only its elements, as global ids. Worker processes are covered in
test_data_flow_processes.py.
"""

from __future__ import annotations

import gc
import itertools
import threading
import time
import traceback

import h5py
import numpy as np
import pytest
import zarr
from data_flow_support import augment, divide_by_255, tag_position
from leak_check import assert_no_leaks

from data_tools.io.data_flow import BatchInfo, data_flow

N = 10
X = np.arange(N * 3, dtype=np.float32).reshape(N, 3)
Y = np.arange(N, dtype=np.int64) * 10


def take(flow, count):
    return list(itertools.islice(flow, count))


def test_readme_example_shuffled_pairs(capsys):
    # The reference's first example, with its typos fixed (batch_size, calls on the instance).
    data_gen = data_flow(data=[X, Y], batch_size=4, sample_random=True, loop_forever=False)
    num_batches = len(data_gen)
    for i, _batch in enumerate(data_gen.flow()):
        print(f"Yielded batch {i + 1} of {num_batches}")
    assert capsys.readouterr().out.splitlines()[-1] == "Yielded batch 3 of 3"


@pytest.mark.parametrize("io_workers", [0, 1, 2, 4])
def test_one_epoch_in_order_stacked_as_tuples(io_workers):
    flow = data_flow([X, Y], 4, nb_io_workers=io_workers, loop_forever=False)
    assert len(flow) == 3
    batches = list(flow.flow())
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    for start, (x, y) in zip([0, 4, 8], batches, strict=True):
        assert isinstance(x, np.ndarray)
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, X[start : start + 4])
        np.testing.assert_array_equal(y, Y[start : start + 4])


def test_loop_forever_is_the_default_and_drop_incomplete():
    flow = data_flow([X], 4, drop_incomplete_batches=True)
    assert len(flow) == 2
    infos = take(flow.flow_with_info(), 5)
    assert [(i.epoch, i.batch_index) for i in infos] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    assert all(len(i.indices) == 4 for i in infos)


def test_shuffled_epochs_are_permutations_and_depend_on_the_seed():
    flow = data_flow([X, Y], 3, sample_random=True, seed=5)
    infos = take(flow.flow_with_info(), 8)  # two epochs of 4 batches
    for epoch in (0, 1):
        indices = np.concatenate([i.indices for i in infos if i.epoch == epoch])
        np.testing.assert_array_equal(np.sort(indices), np.arange(N))
    for info in infos:
        assert isinstance(info, BatchInfo)
        np.testing.assert_array_equal(info.arrays[0], X[info.indices])
        np.testing.assert_array_equal(info.arrays[1], Y[info.indices])
    first = [i.indices for i in infos]
    again = [
        i.indices
        for i in take(data_flow([X, Y], 3, sample_random=True, seed=5).flow_with_info(), 8)
    ]
    other = [
        i.indices
        for i in take(data_flow([X, Y], 3, sample_random=True, seed=6).flow_with_info(), 8)
    ]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_seed_from_rng_or_at_random():
    assert data_flow([X], 2, rng=np.random.default_rng(1)).seed == (
        data_flow([X], 2, rng=np.random.default_rng(1)).seed
    )
    assert 0 <= data_flow([X], 2, rng=np.random.RandomState(1)).seed < 2**32
    seeds = {data_flow([X], 2).seed for _ in range(4)}
    assert len(seeds) > 1
    assert data_flow([X], 2, seed=17).seed == 17


def test_weights_with_replacement():
    weights = np.zeros(N)
    weights[[2, 7]] = [1.0, 3.0]
    flow = data_flow(
        [X, Y], 5, sample_random=True, sample_with_replacement=True, sample_weights=weights, seed=0
    )
    infos = take(flow.flow_with_info(), 200)
    drawn = np.concatenate([i.indices for i in infos])
    assert set(drawn.tolist()) == {2, 7}
    assert 2.5 < np.sum(drawn == 7) / np.sum(drawn == 2) < 3.5
    np.testing.assert_array_equal(infos[-1].arrays[1], Y[infos[-1].indices])


def test_weights_without_replacement_still_yield_every_element_once():
    flow = data_flow(
        [Y], 4, sample_random=True, sample_weights=np.arange(N) + 1.0, seed=2, loop_forever=False
    )
    np.testing.assert_array_equal(np.sort(np.concatenate([b[0] for b in flow.flow()])), Y)


@pytest.mark.parametrize("io_workers", [0, 2])
def test_resume_equals_the_uninterrupted_stream(io_workers):
    kwargs = {"sample_random": True, "preprocessor": augment, "seed": 11}
    kwargs["nb_io_workers"] = io_workers
    full = take(data_flow([X, Y], 3, **kwargs).flow_with_info(), 12)
    for position in (1, 4, 6, 9):  # 4 batches per epoch: 4 is (1, 0), 6 is (1, 2)
        epoch, batch = divmod(position, 4)
        resumed = take(
            data_flow([X, Y], 3, start_epoch=epoch, start_batch=batch, **kwargs).flow_with_info(), 3
        )
        for got, want in zip(resumed, full[position : position + 3], strict=True):
            assert (got.epoch, got.batch_index) == (want.epoch, want.batch_index)
            np.testing.assert_array_equal(got.indices, want.indices)
            for a, b in zip(got.arrays, want.arrays, strict=True):
                np.testing.assert_array_equal(a, b)
    # The cursor after the last batch of an epoch, (epoch, len), starts the next epoch.
    after = next(data_flow([X, Y], 3, start_epoch=0, start_batch=4, **kwargs).flow_with_info())
    assert (after.epoch, after.batch_index) == (1, 0)
    np.testing.assert_array_equal(after.arrays[0], full[4].arrays[0])
    one_epoch = data_flow([X, Y], 3, start_epoch=2, start_batch=4, loop_forever=False, **kwargs)
    assert list(one_epoch.flow()) == []


def test_ranks_share_each_epoch_exactly_once():
    world_size = 3
    flows = [
        data_flow([Y], 2, sample_random=True, seed=4, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    assert [len(f) for f in flows] == [2, 2, 2]  # parts of 4, 3 and 3 elements
    per_rank = [take(f.flow_with_info(), 4) for f in flows]
    for epoch in (0, 1):
        parts = [
            np.concatenate([i.indices for i in infos if i.epoch == epoch]) for infos in per_rank
        ]
        union = np.concatenate(parts)
        np.testing.assert_array_equal(np.sort(union), np.arange(N))


def test_preprocessors_without_and_with_rng():
    calls = []

    def reference_style(batch):
        calls.append(type(batch))
        return batch[0] * 2  # a single array

    flow = data_flow([X, Y], 5, preprocessor=reference_style, loop_forever=False)
    (first,), _ = list(flow.flow())
    np.testing.assert_array_equal(first, X[:5] * 2)
    assert calls == [list, list]

    def with_rng(batch, rng):
        return batch[0] + rng.random(batch[0].shape), batch[1]

    seed = 9
    info = next(data_flow([X, Y], 5, preprocessor=with_rng, seed=seed).flow_with_info())
    expected = X[:5] + np.random.default_rng([seed, 0, 0]).random((5, 3))
    np.testing.assert_array_equal(info.arrays[0], expected)


@pytest.mark.parametrize("nb_proc_workers", [0, 2])
def test_preprocessor_receives_epoch_and_indices_when_it_asks(nb_proc_workers):
    flow = data_flow(
        [X, Y],
        4,
        sample_random=True,
        seed=3,
        preprocessor=tag_position,
        nb_proc_workers=nb_proc_workers,
    )
    with flow:
        for info, _ in zip(flow.flow_with_info(), range(2 * len(flow)), strict=False):
            np.testing.assert_array_equal(info.arrays[2][:, 0], info.epoch)
            np.testing.assert_array_equal(info.arrays[2][:, 1], info.indices)


def test_preprocessor_in_place_leaves_the_sources_alone(tmp_path):
    source = X.copy()
    with h5py.File(tmp_path / "d.h5", "w") as handle:
        handle["x"] = X
    with h5py.File(tmp_path / "d.h5", "r") as handle:
        for order in (False, True):  # contiguous reads (slices) and shuffled ones
            flow = data_flow(
                [source, handle["x"]], 10, sample_random=order, preprocessor=divide_by_255
            )
            info = next(flow.flow_with_info())
            np.testing.assert_array_equal(info.arrays[0], X[info.indices] / np.float32(255))
            np.testing.assert_array_equal(info.arrays[1], X[info.indices])
        np.testing.assert_array_equal(handle["x"][:], X)
    np.testing.assert_array_equal(source, X)


def test_h5py_and_zarr_sources_read_like_numpy(tmp_path):
    z = zarr.create_array(store=str(tmp_path / "y.zarr"), shape=Y.shape, dtype=Y.dtype, chunks=(3,))
    z[:] = Y
    with h5py.File(tmp_path / "d.h5", "w") as handle:
        handle.create_dataset("x", data=X, chunks=(2, 3))
    with h5py.File(tmp_path / "d.h5", "r") as handle:
        flow = data_flow(
            [handle["x"], z],
            4,
            nb_io_workers=2,
            sample_random=True,
            sample_with_replacement=True,
            seed=1,
        )
        for info in take(flow.flow_with_info(), 6):
            np.testing.assert_array_equal(info.arrays[0], X[info.indices])
            np.testing.assert_array_equal(info.arrays[1], Y[info.indices])


def test_unordered_yields_every_batch_once():
    # Batch 0 is held until the consumer has a batch (an event, not a sleep): an ordered
    # flow could hand out nothing before it, an unordered one goes on with the others.
    received = threading.Event()

    def slow_first(batch):
        if batch[0][0] == 0:
            assert received.wait(30)
        return batch

    flow = data_flow(
        [Y], 2, nb_io_workers=3, ordered=False, preprocessor=slow_first, loop_forever=False
    )
    infos = []
    for info in flow.flow_with_info():
        infos.append(info)
        received.set()
    assert sorted(i.batch_index for i in infos) == list(range(5))
    assert infos[0].batch_index != 0  # the slow batch did not hold the others back
    for info in infos:
        np.testing.assert_array_equal(info.arrays[0], Y[info.indices])


def test_in_flight_batches_are_bounded():
    started = []
    lock = threading.Lock()

    def count(batch):
        with lock:
            started.append(1)
        return batch

    with assert_no_leaks():
        flow = data_flow([Y], 1, nb_io_workers=4, max_in_flight=2, preprocessor=count)
        stream = flow.flow()
        next(stream)
        deadline = time.monotonic() + 60
        while len(started) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # time to overshoot, if anything would
        assert len(started) == 3  # the one yielded and two in flight
        stream.close()


def test_worker_errors_keep_their_type_and_traceback():
    def explode(batch):
        if 60 in batch[1]:
            raise KeyError("no such label")
        return batch

    for workers in (0, 2):
        with assert_no_leaks():
            stream = data_flow([X, Y], 2, nb_io_workers=workers, preprocessor=explode).flow()
            assert len(take(stream, 3)) == 3  # batches before the failing one come out
            with pytest.raises(KeyError, match="no such label") as caught:
                next(stream)
            assert "in explode" in "".join(traceback.format_exception(caught.value))
            assert list(stream) == []  # the flow stopped


def test_bad_preprocessor_output_is_a_type_error():
    flow = data_flow([X], 2, preprocessor=lambda batch: "not arrays")
    with pytest.raises(TypeError, match="preprocessor to return"):
        next(flow.flow())


@pytest.mark.parametrize("how", ["exhausted", "break", "close", "with", "gc"])
def test_shutdown_leaves_nothing(how):
    with assert_no_leaks():
        flow = data_flow([X, Y], 2, nb_io_workers=3, loop_forever=how != "exhausted")
        if how == "exhausted":
            assert len(list(flow.flow())) == 5
        elif how == "break":
            for _ in flow.flow():
                break
        elif how == "close":
            stream = flow.flow()
            next(stream)
            flow.close()
            assert list(stream) == []
        elif how == "with":
            with data_flow([X, Y], 2, nb_io_workers=3) as managed:
                next(managed.flow())
        else:
            stream = flow.flow()
            next(stream)
            del stream, flow
            gc.collect()


def test_close_from_another_thread_ends_iteration():
    flow = data_flow([X, Y], 2, nb_io_workers=2, preprocessor=lambda b: (time.sleep(0.05), b)[1])
    with assert_no_leaks():
        stream = flow.flow()
        next(stream)
        closer = threading.Timer(0.1, flow.close)
        closer.start()
        rest = list(stream)  # ends instead of hanging (the flow loops forever)
        closer.join()
        assert len(rest) < 1000  # even if the closer thread starts late on a loaded machine


def not_callable():
    return None


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"data": X}, TypeError, "data"),
        ({"data": []}, TypeError, "data"),
        ({"data": [X, Y[:5]]}, ValueError, "same length"),
        ({"data": [X[:0]]}, ValueError, "at least one element"),
        ({"data": [X, 3]}, TypeError, r"data\[1\]"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 2.0}, TypeError, "batch_size"),
        ({"nb_io_workers": -1}, ValueError, "nb_io_workers"),
        ({"nb_proc_workers": -1}, ValueError, "nb_proc_workers"),
        ({"loop_forever": "yes"}, TypeError, "loop_forever"),
        ({"sample_random": 1}, TypeError, "sample_random"),
        ({"sample_with_replacement": True}, ValueError, "sample_with_replacement"),
        ({"sample_weights": np.ones(N)}, ValueError, "sample_weights"),
        ({"sample_random": True, "sample_weights": -np.ones(N)}, ValueError, "sample_weights"),
        (
            {"sample_random": True, "sample_weights": np.full(N, np.nan)},
            ValueError,
            "sample_weights",
        ),
        ({"sample_random": True, "sample_weights": np.zeros(N)}, ValueError, "sample_weights"),
        ({"sample_random": True, "sample_weights": np.ones(N - 1)}, ValueError, "sample_weights"),
        ({"sample_random": True, "sample_weights": ["a"] * N}, TypeError, "sample_weights"),
        ({"drop_incomplete_batches": None}, TypeError, "drop_incomplete_batches"),
        ({"preprocessor": 3}, TypeError, "preprocessor"),
        ({"preprocessor": lambda b: b, "nb_proc_workers": 1}, TypeError, "picklable"),
        ({"rng": 3}, TypeError, "rng"),
        ({"rng": np.random.default_rng(), "seed": 1}, ValueError, "seed or rng"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 2**32}, ValueError, "seed"),
        ({"ordered": None}, TypeError, "ordered"),
        ({"max_in_flight": 0}, ValueError, "max_in_flight"),
        ({"rank": 3, "world_size": 3}, ValueError, "rank"),
        ({"world_size": 0}, ValueError, "world_size"),
        ({"world_size": N + 1, "rank": N}, ValueError, "at least one element"),
        ({"batch_size": N + 1, "drop_incomplete_batches": True}, ValueError, "batch_size"),
        ({"start_epoch": -1}, ValueError, "start_epoch"),
        ({"start_batch": 6}, ValueError, "start_batch"),
        ({"start_method": "fork"}, ValueError, "start_method"),
        ({"start_method": "spwan"}, ValueError, "Did you mean 'spawn'"),
        ({"subset": []}, ValueError, "subset"),
        ({"subset": [[1, 2]]}, ValueError, "subset"),
        ({"subset": [0.5]}, ValueError, "subset"),
        ({"subset": [3, 1]}, ValueError, "subset"),
        ({"subset": [1, 1]}, ValueError, "subset"),
        ({"subset": [N]}, ValueError, "subset"),
        ({"subset": [-1, 2]}, ValueError, "subset"),
        (
            {"subset": [1, 2], "sample_random": True, "sample_weights": np.eye(N)[0]},
            ValueError,
            "weight > 0",
        ),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, named):
    arguments = {"data": [X, Y], "batch_size": 2, **kwargs}
    with pytest.raises(error, match=named):
        data_flow(**arguments)


SUBSET = np.array([1, 2, 5, 6, 7, 9])


def test_a_subset_is_drawn_as_if_the_data_held_only_its_elements():
    flow = data_flow([X, Y], 4, subset=SUBSET, loop_forever=False)
    assert len(flow) == 2
    infos = list(flow.flow_with_info())
    np.testing.assert_array_equal(np.concatenate([i.indices for i in infos]), SUBSET)
    np.testing.assert_array_equal(np.concatenate([i.arrays[1] for i in infos]), Y[SUBSET])
    shuffled = data_flow([Y], 4, subset=SUBSET, sample_random=True, seed=1)
    for epoch in range(3):
        got = np.concatenate(
            [i.indices for i in take(shuffled.flow_with_info(), 6)[2 * epoch :][:2]]
        )
        np.testing.assert_array_equal(np.sort(got), SUBSET)
    weights = np.zeros(N)
    weights[[2, 3]] = 1.0  # element 3 is outside the subset: only 2 may be drawn
    weighted = data_flow(
        [Y],
        3,
        subset=SUBSET,
        sample_random=True,
        sample_with_replacement=True,
        sample_weights=weights,
        seed=0,
    )
    assert set(np.concatenate([i.indices for i in take(weighted.flow_with_info(), 10)])) == {2}


def test_a_subset_is_sharded_and_resumed_like_the_whole():
    kwargs = {"subset": SUBSET, "sample_random": True, "seed": 5, "preprocessor": augment}
    parts = [
        np.concatenate(
            [
                i.indices
                for i in data_flow(
                    [X, Y], 2, rank=r, world_size=2, loop_forever=False, **kwargs
                ).flow_with_info()
            ]
        )
        for r in range(2)
    ]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), SUBSET)
    full = take(data_flow([X, Y], 2, **kwargs).flow_with_info(), 7)
    resumed = take(data_flow([X, Y], 2, start_epoch=1, start_batch=1, **kwargs).flow_with_info(), 3)
    for got, want in zip(resumed, full[4:], strict=True):
        assert (got.epoch, got.batch_index) == (want.epoch, want.batch_index)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.arrays[0], want.arrays[0])


def positions(infos):
    return [(i.epoch, i.batch_index) for i in infos]


@pytest.mark.parametrize("lanes", [2, 3, 4])
@pytest.mark.parametrize(("rank", "world_size"), [(0, 1), (1, 3)])
def test_lanes_merged_equal_one_flow_from_anywhere(lanes, rank, world_size):
    kwargs = {"sample_random": True, "preprocessor": augment, "seed": 3, "nb_io_workers": 2}
    kwargs.update(rank=rank, world_size=world_size)
    data = [X, Y]
    per_epoch = len(data_flow(data, 1, **kwargs))  # 10 or 3 batches of 1 per epoch
    with data_flow(data, 1, **kwargs) as flow:
        whole = take(flow.flow_with_info(), 3 * per_epoch)
    for start in (0, 1, per_epoch - 1, per_epoch, per_epoch + 2):
        epoch, batch = divmod(start, per_epoch)
        expected = whole[start : start + 2 * per_epoch]
        parts = []
        for lane in range(lanes):
            wanted = sum(1 for info in expected if info.batch_index % lanes == lane)
            with data_flow(
                data, 1, start_epoch=epoch, start_batch=batch, lane=lane, lanes=lanes, **kwargs
            ) as flow:
                assert len(flow) == per_epoch  # the whole flow's batches per epoch
                infos = take(flow.flow_with_info(), wanted)
            assert all(info.batch_index % lanes == lane for info in infos)
            parts.extend(infos)
        parts.sort(key=lambda info: (info.epoch, info.batch_index))
        assert positions(parts) == positions(expected)
        for got, want in zip(parts, expected, strict=True):
            np.testing.assert_array_equal(got.indices, want.indices)
            for a, b in zip(got.arrays, want.arrays, strict=True):
                assert a.tobytes() == b.tobytes()


def test_a_lane_without_loop_forever_yields_the_rest_of_its_epoch():
    # 4 batches of 3: lane 1 of 2 holds batches 1 and 3.
    flow = data_flow([Y], 3, sample_random=True, seed=8, lane=1, lanes=2, loop_forever=False)
    whole = list(data_flow([Y], 3, sample_random=True, seed=8, loop_forever=False).flow())
    infos = list(flow.flow_with_info())
    assert positions(infos) == [(0, 1), (0, 3)]
    np.testing.assert_array_equal(infos[1].arrays[0], whole[3][0])
    resumed = data_flow([Y], 3, lane=1, lanes=2, loop_forever=False, start_batch=2)
    assert positions(resumed.flow_with_info()) == [(0, 3)]
    assert list(data_flow([Y], 3, lane=0, lanes=2, loop_forever=False, start_batch=3).flow()) == []


@pytest.mark.parametrize("loop_forever", [False, True])
def test_a_lane_beyond_the_batches_of_an_epoch_is_empty(loop_forever):
    # 2 batches of 5 per epoch: lane 2 of 3 never has one, and must end rather than spin.
    flow = data_flow([Y[:10]], 5, lane=2, lanes=3, loop_forever=loop_forever)
    assert list(flow.flow()) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"lane": 2, "lanes": 2}, ValueError, r"lane to be an integer in \[0, lanes=2\)\. Got 2"),
        ({"lane": 1}, ValueError, r"lane .*lanes=1"),
        ({"lane": -1, "lanes": 2}, ValueError, "lane"),
        ({"lanes": 0}, ValueError, "lanes"),
        ({"lane": 1.0, "lanes": 2}, TypeError, "lane"),
        ({"lanes": "2"}, TypeError, "lanes"),
    ],
)
def test_bad_lanes_name_the_argument(kwargs, error, named):
    with pytest.raises(error, match=named):
        data_flow([X, Y], 2, **kwargs)


# ---------------------------------------------------------------- BatchInfo: timings, ready
# Matrix: read_seconds / preprocess_seconds x {inline, io threads, process, process with
# read-ahead}; ready with io threads, processes and inline.

WORKERS = {"inline": (0, 0), "threads": (2, 0), "process": (0, 1), "process-read-ahead": (1, 1)}


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("slow", ["read", "preprocess"])
def test_batch_info_times_the_read_and_the_preprocessor_where_they_run(workers, slow):
    # Each batch's slow step takes >= DELAY where it runs (consumer, io thread, process,
    # read-ahead thread); the other step, a pass-through, takes far less.
    from metrics_support import DELAY, SlowSource, slow_preprocessor

    io_workers, proc_workers = WORKERS[workers]
    source, preprocessor = (SlowSource(X), None) if slow == "read" else (X, slow_preprocessor)
    flow = data_flow(
        [source, Y],
        4,
        nb_io_workers=io_workers,
        nb_proc_workers=proc_workers,
        preprocessor=preprocessor,
        loop_forever=False,
    )
    infos = list(flow.flow_with_info())
    assert len(infos) == 3
    np.testing.assert_array_equal(infos[2].arrays[0], X[8:])
    for info in infos:
        slow_seconds, fast_seconds = (
            (info.read_seconds, info.preprocess_seconds)
            if slow == "read"
            else (info.preprocess_seconds, info.read_seconds)
        )
        assert slow_seconds >= DELAY
        assert 0 <= fast_seconds < DELAY


@pytest.mark.parametrize("proc_workers", [0, 2], ids=["threads", "processes"])
def test_ready_counts_the_finished_batches_waiting_behind_each_one(proc_workers):
    # A slow consumer: once the workers are up, all 4 batches in flight are done each time
    # it asks; behind the one handed out wait 3, or 4 once its replacement is done too. The
    # first batches may come before slow-starting workers catch up, so the test waits for
    # each count to settle (bounded) instead of trusting one sleep on a loaded machine.
    flow = data_flow(
        [X], 1, nb_io_workers=2, nb_proc_workers=proc_workers, max_in_flight=4, loop_forever=False
    )
    ready = []
    for info in flow.flow_with_info():
        ready.append(info.ready)
        time.sleep(0.2 if len(ready) > 2 else 1.0)
    assert len(ready) == N
    assert all(0 <= value <= 4 for value in ready), ready
    assert any(value >= 3 for value in ready[2 : N - 4]), ready
    assert ready[-1] == 0
    tail = ready[N - 4 :]
    assert tail == sorted(tail, reverse=True), ready  # the queue drains at the end


def test_ready_is_zero_without_workers():
    flow = data_flow([X], 2, nb_io_workers=0, loop_forever=False)
    assert [info.ready for info in flow.flow_with_info()] == [0] * 5


# ---------------------------------------------------------------- shared reads
# shared_reads=True with worker processes: this process reads, the processes preprocess.
# Matrix: nb_proc_workers {1, 2} x nb_io_workers {0, 1, 2} bit-identical to
# shared_reads=False (replacement, an rng preprocessor writing its input in place); resume
# from a cursor; rows and results larger than their blocks, rows of Python objects; a source
# that refuses to pickle and fails one batch (its error type reaches the consumer); a killed
# worker; closed while reading; timings measured where each step runs; no effect without
# processes. The other shutdown cases are in test_data_flow_processes.py (shared_reads=True).
# Support objects live in tests/shared_reads_support.py (spawned workers import them).

SHARED_X = np.random.default_rng(4).random((37, 3, 5))
SHARED_Y = np.arange(37, dtype=np.int64)


def shared_stream(data=None, count=12, **kwargs):
    """Batches of a shuffled flow with replacement over ``data`` (default SHARED_X, SHARED_Y)."""
    from shared_reads_support import noise_in_place

    options = {
        "sample_random": True,
        "sample_with_replacement": True,
        "seed": 8,
        "preprocessor": noise_in_place,
    }
    flow = data_flow(data or [SHARED_X, SHARED_Y], 8, **{**options, **kwargs})
    with flow:
        return list(itertools.islice(flow.flow_with_info(), count))


def assert_same_batches(got, expected):
    assert [(i.epoch, i.batch_index) for i in got] == [(i.epoch, i.batch_index) for i in expected]
    for mine, theirs in zip(got, expected, strict=True):
        np.testing.assert_array_equal(mine.indices, theirs.indices)
        assert len(mine.arrays) == len(theirs.arrays)
        for a, b in zip(mine.arrays, theirs.arrays, strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def separate_reads():
    """The stream with worker processes reading their own batches (shared_reads=False)."""
    return shared_stream(nb_proc_workers=2)


@pytest.mark.parametrize("procs", [1, 2])
@pytest.mark.parametrize("io", [0, 1, 2])
def test_shared_reads_are_bit_identical_to_separate_reads(separate_reads, procs, io):
    original = SHARED_X.copy()
    with assert_no_leaks():
        got = shared_stream(nb_proc_workers=procs, nb_io_workers=io, shared_reads=True)
    assert_same_batches(got, separate_reads)
    assert any(len(set(info.indices.tolist())) < len(info.indices) for info in got)
    np.testing.assert_array_equal(SHARED_X, original)  # the in-place noise hit copies only


def test_shared_reads_resume_from_a_cursor(separate_reads):
    start = separate_reads[7]  # (1, 2): 5 batches per epoch
    resumed = shared_stream(
        count=2,
        nb_proc_workers=1,
        shared_reads=True,
        start_epoch=start.epoch,
        start_batch=start.batch_index,
    )
    assert_same_batches(resumed, separate_reads[7:9])


def test_shared_reads_change_nothing_without_processes(separate_reads):
    assert_same_batches(shared_stream(nb_io_workers=2, shared_reads=True), separate_reads)
    with pytest.raises(TypeError, match="shared_reads"):
        data_flow([X], 2, shared_reads="yes")


@pytest.mark.timeout(60)
def test_shared_reads_carry_rows_and_results_larger_than_their_blocks():
    from shared_reads_support import NoDtype, vary_size

    # No dtype: the block estimate leaves out the first array, so its rows travel pickled
    # until the pool grows; vary_size's results outgrow the blocks now and then.
    data = [NoDtype(SHARED_X), SHARED_Y]
    with assert_no_leaks():
        got = shared_stream(data, 20, preprocessor=vary_size, nb_proc_workers=1, shared_reads=True)
    assert_same_batches(got, shared_stream(data, 20, preprocessor=vary_size, nb_io_workers=0))
    assert len({info.arrays[0].shape[1] for info in got}) > 1
    # Python objects never fit a block: the rows and results travel pickled.
    objects = [SHARED_X, SHARED_Y.astype(object)]
    with assert_no_leaks():
        got = shared_stream(objects, 6, nb_proc_workers=1, shared_reads=True)
    assert_same_batches(got, shared_stream(objects, 6, nb_io_workers=0))


def test_shared_reads_never_send_sources_and_raise_their_read_errors():
    from shared_reads_support import CorruptChunkError, ParentOnlySource, noise_in_place

    source = ParentOnlySource(SHARED_X, bad_row=20)
    with pytest.raises(TypeError, match="picklable"):
        next(data_flow([source, SHARED_Y], 5, nb_proc_workers=1).flow())
    expected = data_flow([SHARED_X, SHARED_Y], 5, preprocessor=noise_in_place, seed=8)
    expected_batches = take(expected.flow_with_info(), 4)
    with assert_no_leaks():
        flow = data_flow(
            [source, SHARED_Y],
            5,
            nb_proc_workers=1,
            preprocessor=noise_in_place,
            seed=8,
            shared_reads=True,
        )
        batches = flow.flow_with_info()
        assert_same_batches(take(batches, 4), expected_batches)  # rows 0 to 19
        with pytest.raises(CorruptChunkError, match="cannot decode row 20") as caught:
            next(batches)
        assert "in __getitem__" in "".join(traceback.format_exception(caught.value))
        assert list(batches) == []


def test_shared_reads_a_killed_worker_is_an_error_not_a_hang():
    import multiprocessing
    import os
    import signal

    from data_tools.errors import WorkerError

    with assert_no_leaks():
        flow = data_flow([SHARED_X, SHARED_Y], 2, nb_proc_workers=2, shared_reads=True)
        batches = flow.flow()
        next(batches)
        children = multiprocessing.active_children()
        (worker,) = (p for p in children if p.name == "data_tools-proc-0")
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(WorkerError, match=r"data_tools-proc-0 .*killed by SIGKILL"):
            list(itertools.islice(batches, 1000))


def test_shared_reads_closed_while_reading_leave_nothing_behind():
    from metrics_support import SlowSource

    with assert_no_leaks():
        flow = data_flow(
            [SlowSource(SHARED_X)], 2, nb_io_workers=2, nb_proc_workers=1, shared_reads=True
        )
        batches = flow.flow()
        next(batches)  # both io threads are now reading the next batches
        flow.close()
        assert list(batches) == []


@pytest.mark.parametrize("slow", ["read", "preprocess"])
def test_shared_reads_time_the_read_here_and_the_preprocessor_in_the_worker(slow):
    from metrics_support import DELAY, SlowSource, slow_preprocessor

    source, preprocessor = (SlowSource(X), None) if slow == "read" else (X, slow_preprocessor)
    flow = data_flow(
        [source, Y],
        4,
        nb_proc_workers=1,
        preprocessor=preprocessor,
        loop_forever=False,
        shared_reads=True,
    )
    infos = list(flow.flow_with_info())
    np.testing.assert_array_equal(np.concatenate([i.arrays[0] for i in infos]), X)
    for info in infos:
        slow_seconds, fast_seconds = (
            (info.read_seconds, info.preprocess_seconds)
            if slow == "read"
            else (info.preprocess_seconds, info.read_seconds)
        )
        assert slow_seconds >= DELAY
        assert 0 <= fast_seconds < DELAY

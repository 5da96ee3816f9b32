"""Chunk-windowed shuffle end to end (StreamRequest.shuffle_window) through the real client.

Matrix: a windowed stream (toy: 40 samples, image chunks of 8, windows of 16) yields every
sample once per epoch, its rows are the dataset's, each pair of batches (one window) holds
two whole storage chunks, and its order is the library's (FlowSpec, data_flow over the same
file) bit for bit; epochs differ; two partitioned ranks split every epoch; a cursor taken
mid-epoch resumes exactly the uninterrupted stream's tail; a cursor of another window or of
the exact permutation is refused (resume.fingerprint); two lanes merge into the one-node
stream; bad values {negative, above the samples of an epoch, with replacement, with weights,
without sample_random} are INVALID_ARGUMENT naming shuffle_window; the node keeps serving.
"""

from __future__ import annotations

import itertools
import re

import grpc
import h5py
import numpy as np
import pytest
from node_support import NUM_SAMPLES, stream_error

from data_client import DataNodeClient, InvalidArgumentError
from data_tools.io import FlowSpec, data_flow
from data_wire.v1 import data_node_pb2

CHUNK = 8  # the image array's chunks (node_support.make_data)
WINDOW = 16
OPTIONS = {"sample_random": True, "seed": 3, "epochs": 3, "shuffle_window": WINDOW}


def batches_of(stream):
    return [
        (stream.epoch, stream.batch_index, stream.indices.copy(), [a.copy() for a in arrays])
        for arrays in stream
    ]


def test_a_windowed_stream_reads_whole_chunks_in_the_librarys_order(client, node_dir):
    root, data = node_dir
    got = batches_of(client.stream("toy", 8, **OPTIONS))
    assert [(e, b) for e, b, _, _ in got] == [(e, b) for e in range(3) for b in range(5)]
    spec = FlowSpec(
        NUM_SAMPLES,
        8,
        3,
        sample_random=True,
        shuffle_window=WINDOW,
        read_blocks=np.arange(0, NUM_SAMPLES, CHUNK),
    )
    with h5py.File(root / "data" / "toy.h5", "r") as f:
        flow = data_flow(
            [f["image"], f["mask"]],
            8,
            nb_io_workers=0,
            sample_random=True,
            seed=3,
            shuffle_window=WINDOW,
        )
        with flow:
            local = [info.indices for info in itertools.islice(flow.flow_with_info(), 15)]
    orders = []
    for epoch in range(3):
        order = np.concatenate([i for e, _, i, _ in got if e == epoch])
        np.testing.assert_array_equal(np.sort(order), np.arange(NUM_SAMPLES))
        np.testing.assert_array_equal(order, spec.epoch_order(epoch))
        for start in range(0, 32, WINDOW):  # a whole window: two whole chunks
            chunks = order[start : start + WINDOW] // CHUNK
            assert np.all(np.bincount(chunks) % CHUNK == 0)
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])
    for (_, _, indices, arrays), want in zip(got, local, strict=True):
        np.testing.assert_array_equal(indices, want)
        np.testing.assert_array_equal(arrays[0], data["image"][indices])
        np.testing.assert_array_equal(arrays[1], data["mask"][indices])


def test_partitioned_ranks_split_each_windowed_epoch(client):
    parts = [
        batches_of(client.stream("toy", 4, rank=rank, world_size=2, **OPTIONS)) for rank in (0, 1)
    ]
    for epoch in range(3):
        halves = [np.concatenate([i for e, _, i, _ in part if e == epoch]) for part in parts]
        np.testing.assert_array_equal(np.sort(np.concatenate(halves)), np.arange(NUM_SAMPLES))


def test_a_cursor_mid_epoch_resumes_the_uninterrupted_stream(client):
    whole = batches_of(client.stream("toy", 8, **OPTIONS))
    stream = client.stream("toy", 8, **OPTIONS)
    for _ in range(7):  # into the second epoch
        next(stream)
    cursor = stream.cursor_bytes()
    stream.close()
    rest = batches_of(client.stream("toy", 8, resume=cursor, **OPTIONS))
    assert len(rest) == len(whole) - 7
    for (epoch, batch, indices, arrays), want in zip(rest, whole[7:], strict=True):
        assert (epoch, batch) == want[:2]
        np.testing.assert_array_equal(indices, want[2])
        for array, expected in zip(arrays, want[3], strict=True):
            np.testing.assert_array_equal(array, expected)


def test_a_cursor_of_another_window_is_refused(client):
    stream = client.stream("toy", 8, **OPTIONS)
    next(stream)
    cursor = stream.cursor
    stream.close()
    other = {**OPTIONS, "shuffle_window": 24}
    with pytest.raises(InvalidArgumentError, match=r"resume\.fingerprint"):
        next(iter(client.stream("toy", 8, resume=cursor, **other)))
    exact = {key: value for key, value in OPTIONS.items() if key != "shuffle_window"}
    with pytest.raises(InvalidArgumentError, match=r"resume\.fingerprint"):
        next(iter(client.stream("toy", 8, resume=cursor, **exact)))


WEIGHTS = data_node_pb2.SampleWeights(array="weights")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"shuffle_window": -1}, r"shuffle_window .* Got -1"),
        ({"shuffle_window": NUM_SAMPLES + 1}, r"shuffle_window .* \[1, 40\].* Got 41"),
        ({"shuffle_window": 4, "sample_random": False}, r"shuffle_window=None when sample_random"),
        (
            {"shuffle_window": 4, "sample_with_replacement": True},
            r"shuffle_window=None with sample_with_replacement",
        ),
        ({"shuffle_window": 4, "sample_weights": WEIGHTS}, r"shuffle_window=None with sample_w"),
    ],
)
def test_bad_windows_are_refused_naming_the_field(node, client, fields, message):
    request = data_node_pb2.StreamRequest(dataset="toy", batch_size=4, epochs=1, sample_random=True)
    for name, value in fields.items():
        if name == "sample_weights":
            request.sample_weights.CopyFrom(value)
        else:
            setattr(request, name, value)
    code, details = stream_error(node[1], request)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, details), details
    # The node keeps serving.
    assert len(list(client.stream("toy", 8, **OPTIONS))) == 15


def test_lanes_merge_to_the_windowed_stream_of_one_node(client, node):
    one = batches_of(client.stream("toy", 8, **OPTIONS))
    # One node under two names: each lane is a request of its own.
    with DataNodeClient([f"127.0.0.1:{node[1]}", f"localhost:{node[1]}"]) as lanes:
        merged = batches_of(lanes.stream("toy", 8, **OPTIONS))
    assert [b[:2] for b in merged] == [b[:2] for b in one]
    for (_, _, indices, arrays), want in zip(merged, one, strict=True):
        np.testing.assert_array_equal(indices, want[2])
        np.testing.assert_array_equal(arrays[0], want[3][0])

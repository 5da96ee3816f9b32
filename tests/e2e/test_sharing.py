"""Sharing modes end to end: 4 concurrent trainers on a real node, checked by sample index.

Matrix: partitioned (4 ranks at once, one seed, shuffled and augmented, 2 epochs): each
epoch is the ranks' disjoint union, every rank's batches equal the in-process data_flow
shard bit for bit; a rank joining after the others finished, and a rank reconnecting from
a cursor (mid-epoch, at an epoch boundary, in epoch 1; raw with the seed only in the
cursor), continue exactly; a cursor at the end is OUT_OF_RANGE naming ``resume`` (raw and
through the client, never a silent empty stream) and goes on when more epochs are asked
for. Independent (4 trainers at once, seeds 1, 2, 3 and one drawn by the node): whole
epochs each, orders differ between seeds, one seed gives one stream. Lanes: K in {2, 3}
lane streams of one request (independent, partitioned, augmented) merged by (epoch,
batch_index) equal the lane-less stream (arrays, indices, cursors), and cursors cross
between lane and lane-less streams both ways.
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from node_support import NUM_SAMPLES, wait_for_idle

from data_client import DataNodeClient
from data_client._decode import decode_batch
from data_client.errors import OutOfRangeError
from data_tools.data_augmentation import SampleAugmentation, parse_augmentation_spec
from data_tools.io import data_flow
from data_wire.v1 import data_node_pb2

WORLD = 4
SEED = 13
BATCH = 3  # 10 samples per rank: batches of 3, 3, 3, 1
EPOCHS = 2
AUGMENT = {"x_array": "image", "y_array": "mask", "rotation_range": 25.0, "horizontal_flip": True}
PARTITIONED = {"sample_random": True, "seed": SEED, "epochs": EPOCHS, "augmentation": AUGMENT}


def collect(stream, count=None):
    """Read ``count`` batches (default: all) of a client stream with what describes each."""
    return [
        {
            "arrays": tuple(np.array(a) for a in arrays),
            "indices": stream.indices.copy(),
            "position": (stream.epoch, stream.batch_index),
            "cursor": stream.cursor_bytes(),
        }
        for arrays in itertools.islice(stream, count)
    ]


def read_rank(port, rank, **options):
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        stream = client.stream("toy", BATCH, rank=rank, world_size=WORLD, **options)
        return collect(stream)


def concurrently(function, arguments):
    """``function(argument)`` for each argument, all in threads started at the same moment."""
    start = threading.Barrier(len(arguments))

    def run(argument):
        start.wait(timeout=10)
        return function(argument)

    with ThreadPoolExecutor(len(arguments)) as pool:
        return list(pool.map(run, arguments))


def local_shard(arrays, rank, epochs=EPOCHS):
    """The in-process data_flow of one rank, augmented as the node does it."""
    options = {k: v for k, v in AUGMENT.items() if not k.endswith("_array")}
    flow = data_flow(
        [arrays["image"], arrays["mask"], arrays["weights"]],
        BATCH,
        sample_random=True,
        seed=SEED,
        rank=rank,
        world_size=WORLD,
        preprocessor=SampleAugmentation(parse_augmentation_spec(**options), SEED, 0, 1),
    )
    with flow:
        return list(itertools.islice(flow.flow_with_info(), epochs * len(flow)))


def assert_same_batches(got, want):
    assert [b["position"] for b in got] == [b["position"] for b in want]
    assert [b["cursor"] for b in got] == [b["cursor"] for b in want]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a["indices"], b["indices"])
        for x, y in zip(a["arrays"], b["arrays"], strict=True):
            assert x.dtype == y.dtype
            assert x.tobytes() == y.tobytes()


def epoch_indices(batches, epoch):
    return np.concatenate([b["indices"] for b in batches if b["position"][0] == epoch])


@pytest.fixture(scope="module")
def partitioned(node):
    """The 4 ranks of one job, read at the same time by 4 clients."""
    _, port = node
    return concurrently(
        lambda rank: read_rank(port, rank, sharing="partitioned", **PARTITIONED), range(WORLD)
    )


def raw_stream(port, request):
    """Every decoded batch of a StreamBatches call made without the client."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_stream(
            "/data_wire.v1.DataNode/StreamBatches",
            request_serializer=data_node_pb2.StreamRequest.SerializeToString,
            response_deserializer=decode_batch,
        )
        return [
            {
                "arrays": tuple(np.array(a) for a in batch.arrays),
                "indices": batch.indices.copy(),
                "position": (batch.epoch, batch.batch_index),
                "cursor": batch.cursor.SerializeToString(),
            }
            for batch in call(request, timeout=30)
        ]


# ---------------------------------------------------------------- partitioned


def test_partitioned_ranks_split_every_epoch_exactly_once(partitioned):
    assert [len(batches) for batches in partitioned] == [EPOCHS * 4] * WORLD
    for epoch in range(EPOCHS):
        parts = [epoch_indices(batches, epoch) for batches in partitioned]
        assert [len(part) for part in parts] == [NUM_SAMPLES // WORLD] * WORLD
        for a, b in itertools.combinations(parts, 2):
            assert not set(a.tolist()) & set(b.tolist())
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(NUM_SAMPLES))
    # Shuffled: the epochs are cut from different orders.
    assert not np.array_equal(epoch_indices(partitioned[0], 0), epoch_indices(partitioned[0], 1))


def test_partitioned_ranks_equal_data_flow_in_process(partitioned, node_dir):
    _, arrays = node_dir
    for rank, batches in enumerate(partitioned):
        infos = local_shard(arrays, rank)
        assert [(i.epoch, i.batch_index) for i in infos] == [b["position"] for b in batches]
        for info, batch in zip(infos, batches, strict=True):
            np.testing.assert_array_equal(info.indices, batch["indices"])
            for x, y in zip(info.arrays, batch["arrays"], strict=True):
                assert x.tobytes() == y.tobytes()
    # The augmentation ran: the image is not the stored one.
    first = partitioned[0][0]
    assert not np.array_equal(first["arrays"][0], arrays["image"][first["indices"]])


def test_a_rank_joining_late_gets_the_same_part_from_epoch_zero(node, partitioned):
    _, port = node
    late = read_rank(port, 2, sharing="partitioned", **PARTITIONED)
    assert late[0]["position"] == (0, 0)
    assert_same_batches(late, partitioned[2])
    # The default sharing with world_size > 1 is partitioned: the same part again.
    assert_same_batches(read_rank(port, 2, **PARTITIONED), partitioned[2])


@pytest.mark.parametrize("taken", [2, 4, 5])  # mid-epoch, at the epoch boundary, in epoch 1
def test_a_rank_reconnecting_from_its_cursor_loses_and_repeats_nothing(node, partitioned, taken):
    _, port = node
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        stream = client.stream(
            "toy", BATCH, rank=1, world_size=WORLD, sharing="partitioned", **PARTITIONED
        )
        before = collect(stream, taken)
        cursor = stream.cursor_bytes()
        stream.close()
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        options = {**PARTITIONED, "seed": None}  # the cursor carries the seed
        after = collect(
            client.stream(
                "toy",
                BATCH,
                rank=1,
                world_size=WORLD,
                resume=cursor,
                sharing="partitioned",
                **options,
            )
        )
    assert_same_batches(before + after, partitioned[1])
    for epoch in range(EPOCHS):
        indices = epoch_indices(before + after, epoch)
        assert len(set(indices.tolist())) == len(indices) == NUM_SAMPLES // WORLD


def partitioned_request(rank, **fields):
    request = data_node_pb2.StreamRequest(
        dataset="toy",
        batch_size=BATCH,
        epochs=EPOCHS,
        sample_random=True,
        seed=SEED,
        shard=data_node_pb2.Shard(rank=rank, world_size=WORLD),
        sharing=data_node_pb2.SHARING_PARTITIONED,
        **fields,
    )
    request.augmentation.x_array = "image"
    request.augmentation.y_array = "mask"
    request.augmentation.rotation_range = AUGMENT["rotation_range"]
    request.augmentation.horizontal_flip = True
    return request


def test_a_partitioned_resume_takes_the_seed_from_its_cursor(node, partitioned):
    _, port = node
    request = partitioned_request(1)
    request.ClearField("seed")
    request.resume.ParseFromString(partitioned[1][2]["cursor"])
    assert_same_batches(raw_stream(port, request), partitioned[1][3:])


def test_a_cursor_at_the_end_is_out_of_range_never_an_empty_stream(node, node_dir, partitioned):
    _, port = node
    last = partitioned[3][-1]["cursor"]
    request = partitioned_request(3)
    request.resume.ParseFromString(last)
    assert (request.resume.epoch, request.resume.batch_index) == (EPOCHS, 0)
    # The raw request: the node's answer.
    with pytest.raises(grpc.RpcError) as caught:
        raw_stream(port, request)
    assert caught.value.code() is grpc.StatusCode.OUT_OF_RANGE
    assert caught.value.details().startswith("resume: ")
    # The client's stream started from that cursor says so too.
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        stream = client.stream(
            "toy",
            BATCH,
            rank=3,
            world_size=WORLD,
            resume=last,
            sharing="partitioned",
            **PARTITIONED,
        )
        with pytest.raises(OutOfRangeError, match=r"resume: .*end"):
            next(stream)
        assert stream.closed
        # Asking for one more epoch goes on from there: epoch 2 of the same job.
        more = collect(
            client.stream(
                "toy",
                BATCH,
                rank=3,
                world_size=WORLD,
                resume=last,
                sharing="partitioned",
                **{**PARTITIONED, "epochs": EPOCHS + 1},
            )
        )
    _, arrays = node_dir
    infos = local_shard(arrays, 3, epochs=EPOCHS + 1)[-len(more) :]
    assert [b["position"] for b in more] == [(EPOCHS, b) for b in range(4)]
    for info, batch in zip(infos, more, strict=True):
        np.testing.assert_array_equal(info.indices, batch["indices"])
        assert info.arrays[0].tobytes() == batch["arrays"][0].tobytes()


# ---------------------------------------------------------------- independent


def read_independent(port, seed):
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        stream = client.stream("toy", 8, sample_random=True, seed=seed, epochs=EPOCHS)
        batches = collect(stream)
        return batches, stream.cursor.seed


def test_independent_trainers_each_get_whole_epochs_in_their_own_order(node):
    _, port = node
    seeds = [1, 2, 3, None]
    runs = concurrently(lambda seed: read_independent(port, seed), seeds)
    orders = []
    for seed, (batches, cursor_seed) in zip(seeds, runs, strict=True):
        if seed is not None:
            assert cursor_seed == seed
        for epoch in range(EPOCHS):
            np.testing.assert_array_equal(
                np.sort(epoch_indices(batches, epoch)), np.arange(NUM_SAMPLES)
            )
        orders.append(np.concatenate([b["indices"] for b in batches]))
    for a, b in itertools.combinations(orders, 2):
        assert not np.array_equal(a, b)
    # The seed the node drew is in the cursor, and it gives the same stream again; so does
    # a given seed, explicitly "independent" or by default.
    drawn_batches, drawn = runs[3]
    assert 0 <= drawn < 2**32
    again, _ = read_independent(port, drawn)
    assert_same_batches(again, drawn_batches)
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        explicit = collect(
            client.stream(
                "toy", 8, sample_random=True, seed=1, epochs=EPOCHS, sharing="independent"
            )
        )
    assert_same_batches(explicit, runs[0][0])


# ---------------------------------------------------------------- lanes


def lane_request(lane=None, resume=None, shard=None):
    request = data_node_pb2.StreamRequest(
        dataset="toy",
        batch_size=BATCH,
        epochs=EPOCHS,
        sample_random=True,
        seed=SEED,
        sharing=(
            data_node_pb2.SHARING_INDEPENDENT
            if shard is None
            else data_node_pb2.SHARING_PARTITIONED
        ),
    )
    if shard is not None:
        request.shard.CopyFrom(shard)
    request.augmentation.x_array = "image"
    request.augmentation.y_array = "mask"
    request.augmentation.rotation_range = 25.0
    if lane is not None:
        request.lane.CopyFrom(data_node_pb2.Lane(index=lane[0], count=lane[1]))
    if resume is not None:
        request.resume.ParseFromString(resume)
    return request


def merged(lanes):
    return sorted(itertools.chain.from_iterable(lanes), key=lambda b: b["position"])


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("shard", [None, data_node_pb2.Shard(rank=1, world_size=3)])
def test_lane_streams_merged_equal_the_lane_less_stream(node, count, shard):
    _, port = node
    whole = raw_stream(port, lane_request(shard=shard))
    per_epoch = len(whole) // EPOCHS
    lanes = concurrently(
        lambda k: raw_stream(port, lane_request((k, count), shard=shard)), range(count)
    )
    for k, batches in enumerate(lanes):
        assert batches, f"lane {k} is empty"
        assert all(b["position"][1] % count == k for b in batches)
        assert len(batches) == EPOCHS * len(range(k, per_epoch, count))
    assert_same_batches(merged(lanes), whole)


@pytest.mark.parametrize("loop_forever", [False, True])
def test_a_lane_with_no_batch_is_an_empty_stream_that_ends_ok(node, loop_forever):
    server, port = node
    request = lane_request((2, 3))
    request.batch_size = 32  # two batches per epoch: lane 2 of 3 never has one
    request.loop_forever = loop_forever
    assert raw_stream(port, request) == []
    wait_for_idle(server)


def test_cursors_cross_between_lane_and_lane_less_streams(node):
    _, port = node
    whole = raw_stream(port, lane_request())
    assert len(whole) == EPOCHS * 14  # 14 batches of 3 per epoch
    # A lane-less cursor (after batch 4 of epoch 0) resumes lane 1 of 3: batches 7, 10, ...
    rest = raw_stream(port, lane_request((1, 3), resume=whole[4]["cursor"]))
    expected = [b for b in whole[5:] if b["position"][1] % 3 == 1]
    assert rest[0]["position"] == (0, 7)
    assert_same_batches(rest, expected)
    # A lane's cursor (after batch 5, lane 2 of 3) resumes the lane-less stream at batch 6.
    lane = raw_stream(port, lane_request((2, 3)))
    assert lane[1]["position"] == (0, 5)
    assert_same_batches(raw_stream(port, lane_request(resume=lane[1]["cursor"])), whole[6:])
    # And another lane split: lane 0 of 2 from there.
    from_lane = raw_stream(port, lane_request((0, 2), resume=lane[1]["cursor"]))
    assert_same_batches(from_lane, [b for b in whole[6:] if b["position"][1] % 2 == 0])

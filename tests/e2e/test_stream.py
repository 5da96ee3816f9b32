"""StreamBatches end to end: a real node on a loopback port, the real client.

Matrix: ListDatasets / DescribeDataset; one ordered epoch equals the stored arrays;
shuffled epochs (seed fixes order, seeds differ); the node's stream equals the same
data_flow + augmentation in-process, and is bit-identical for nb_proc_workers 0 and 2;
resume from every cursor of a two-epoch augmented stream; shards are disjoint and cover the
epoch; weights from an array; preprocessors with and without rng; codecs; class labels;
health and reflection services; a request leaving nb_io_workers 0 gets min(usable cores,
max_nb_io_workers) reader threads.
"""

from __future__ import annotations

import itertools
import threading

import grpc
import h5py
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from node_support import NUM_SAMPLES, noisy

from data_client.errors import OutOfRangeError
from data_node.config import LimitsConfig
from data_node.resources import usable_cores
from data_tools.data_augmentation import SampleAugmentation, parse_augmentation_spec
from data_tools.io import PreprocessorChain, data_flow

AUGMENT = {
    "x_array": "image",
    "y_array": "mask",
    "rotation_range": 20.0,
    "zoom_range": 0.1,
    "horizontal_flip": True,
    "intensity_shift_range": 0.1,
}


def collect(stream):
    batches, indices, cursors = [], [], []
    for batch in stream:
        batches.append(tuple(np.array(a) for a in batch))
        indices.append(stream.indices.copy())
        cursors.append(stream.cursor_bytes())
    return batches, indices, cursors


def test_list_and_describe(client, node_dir):
    _, arrays = node_dir
    names = [d.name for d in client.datasets()]
    assert names == ["classes", "toy"]
    toy = client.describe("toy")
    assert toy.length == NUM_SAMPLES
    assert [(a.name, a.dtype.str, a.shape) for a in toy.arrays] == [
        ("image", "<f4", arrays["image"].shape),
        ("mask", "|u1", arrays["mask"].shape),
        ("weights", "<f8", (NUM_SAMPLES,)),
    ]
    classes = client.describe("classes")
    assert classes.length == NUM_SAMPLES + 10
    assert classes.classes == (0, 1)
    assert [a.name for a in classes.arrays] == ["image", "label"]


def test_one_ordered_epoch_equals_the_stored_arrays(client, node_dir):
    _, arrays = node_dir
    batches, indices, _ = collect(client.stream("toy", 16))
    assert [len(i) for i in indices] == [16, 16, 8]
    np.testing.assert_array_equal(np.concatenate(indices), np.arange(NUM_SAMPLES))
    image = np.concatenate([b[0] for b in batches])
    mask = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(image, arrays["image"])
    np.testing.assert_array_equal(mask, arrays["mask"])


def test_shuffled_epochs_follow_the_seed(client):
    _, first, _ = collect(client.stream("toy", 8, sample_random=True, seed=1, epochs=2))
    _, again, _ = collect(client.stream("toy", 8, sample_random=True, seed=1, epochs=2))
    _, other, _ = collect(client.stream("toy", 8, sample_random=True, seed=2, epochs=2))
    for run in (first, other):
        for epoch in (run[:5], run[5:]):
            assert sorted(np.concatenate(epoch)) == list(range(NUM_SAMPLES))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(np.concatenate(first), np.concatenate(other))
    assert not np.array_equal(np.concatenate(first[:5]), np.concatenate(first[5:]))


def test_augmented_stream_equals_data_flow_in_process(client, node_dir):
    _, arrays = node_dir
    remote, remote_indices, _ = collect(
        client.stream("toy", 8, sample_random=True, seed=5, augmentation=AUGMENT, nb_proc_workers=2)
    )
    options = {k: v for k, v in AUGMENT.items() if not k.endswith("_array")}
    transform = SampleAugmentation(parse_augmentation_spec(**options), 5, 0, 1)
    data = [arrays["image"], arrays["mask"], arrays["weights"]]
    local = data_flow(
        data, 8, sample_random=True, seed=5, preprocessor=transform, loop_forever=False
    )
    with local:
        infos = list(local.flow_with_info())
    assert len(infos) == len(remote)
    for info, batch, indices in zip(infos, remote, remote_indices, strict=True):
        np.testing.assert_array_equal(info.indices, indices)
        for expected, got in zip(info.arrays, batch, strict=True):
            np.testing.assert_array_equal(expected, got)
    # The augmentation did something, and kept the mask a mask.
    assert not np.array_equal(remote[0][0], arrays["image"][remote_indices[0]])
    assert set(np.unique(np.concatenate([b[1] for b in remote]))) <= {0, 1}


def test_a_trainer_gets_what_data_flow_in_process_gets_the_readme_way(client, node_dir):
    """README "The same stream in-process": the dataset's files, the library's per-sample map
    chained with the registered preprocessor, the request's sampling and shard."""
    root, _ = node_dir
    augment = {
        "x_array": "image",
        "y_array": "mask",
        "rotation_range": 30.0,
        "shear_range": 5.0,
        "zoom_range": [0.9, 1.2],
        "vertical_flip": True,
        "spline_warp": True,
        "warp_sigma": 1.0,
        "fill_mode": "constant",
        "cval_x": 0.5,
        "crop_size": [12, 10],
        "order_x": 3,
    }
    request = {
        "sample_random": True,
        "seed": 23,
        "epochs": 2,
        "rank": 1,
        "world_size": 2,
        "nb_proc_workers": 2,
    }
    remote, remote_indices, _ = collect(
        client.stream(
            "toy", 6, augmentation=augment, preprocessor="noisy", sharing="partitioned", **request
        )
    )
    options = {k: v for k, v in augment.items() if not k.endswith("_array")}
    spec = parse_augmentation_spec(**options)
    chain = PreprocessorChain((SampleAugmentation(spec, 23, x_position=0, y_position=1), noisy))
    with h5py.File(root / "data" / "toy.h5", "r") as f:
        data = [f["image"], f["mask"], f["weights"]]
        flow = data_flow(
            data, 6, sample_random=True, seed=23, rank=1, world_size=2, preprocessor=chain
        )
        with flow:
            infos = list(itertools.islice(flow.flow_with_info(), 2 * len(flow)))
    assert len(infos) == len(remote) == 8
    for info, batch, indices in zip(infos, remote, remote_indices, strict=True):
        np.testing.assert_array_equal(info.indices, indices)
        for expected, got in zip(info.arrays, batch, strict=True):
            assert (expected.dtype, expected.shape) == (got.dtype, got.shape)
            assert expected.tobytes() == got.tobytes()
    assert remote[0][0].shape == (6, 1, 12, 10)


def test_stream_is_bit_identical_for_any_worker_count(client):
    runs = [
        collect(
            client.stream("toy", 8, sample_random=True, seed=9, augmentation=AUGMENT, **workers)
        )[0]
        for workers in ({}, {"nb_proc_workers": 2}, {"nb_io_workers": 3})
    ]
    for run in runs[1:]:
        for a, b in zip(runs[0], run, strict=True):
            for x, y in zip(a, b, strict=True):
                assert x.tobytes() == y.tobytes()


def test_resume_from_any_cursor_continues_exactly(client):
    options = {"sample_random": True, "seed": 11, "epochs": 2, "augmentation": AUGMENT}
    full, full_indices, cursors = collect(client.stream("toy", 16, **options))
    assert len(full) == 6
    for k in (0, 2, 3, 4):
        rest, rest_indices, _ = collect(client.stream("toy", 16, resume=cursors[k], **options))
        assert len(rest) == len(full) - k - 1
        for a, b in zip(full[k + 1 :], rest, strict=True):
            for x, y in zip(a, b, strict=True):
                assert x.tobytes() == y.tobytes()
        for a, b in zip(full_indices[k + 1 :], rest_indices, strict=True):
            np.testing.assert_array_equal(a, b)


def test_resume_from_the_last_cursor_is_out_of_range_not_an_empty_stream(client):
    options = {"sample_random": True, "seed": 11, "epochs": 2}
    _, _, cursors = collect(client.stream("toy", 16, **options))
    with pytest.raises(OutOfRangeError, match=r"resume: .*end of the stream's 2 epoch"):
        next(client.stream("toy", 16, resume=cursors[-1], **options))
    more, _, _ = collect(client.stream("toy", 16, resume=cursors[-1], **{**options, "epochs": 3}))
    assert len(more) == 3


def test_resume_without_seed_takes_the_cursors_seed(client):
    stream = client.stream("toy", 8, sample_random=True)
    next(stream)
    cursor = stream.cursor
    stream.close()
    _, rest, _ = collect(client.stream("toy", 8, sample_random=True, resume=cursor))
    _, whole, _ = collect(client.stream("toy", 8, sample_random=True, seed=cursor.seed))
    assert all(np.array_equal(a, b) for a, b in zip(whole[1:], rest, strict=True))


def test_shards_are_disjoint_and_cover_each_epoch(client):
    parts = [
        np.concatenate(
            collect(client.stream("toy", 6, sample_random=True, seed=4, rank=r, world_size=3))[1]
        )
        for r in range(3)
    ]
    together = np.concatenate(parts)
    assert sorted(together) == list(range(NUM_SAMPLES))


def test_weights_from_an_array_never_pick_weight_zero(client):
    _, indices, _ = collect(
        client.stream(
            "toy",
            10,
            sample_random=True,
            seed=3,
            sample_with_replacement=True,
            sample_weights="weights",
        )
    )
    drawn = np.concatenate(indices)
    assert len(drawn) == NUM_SAMPLES
    assert 0 not in drawn  # weights[0] == 0


def test_registered_preprocessors(client, node_dir):
    _, arrays = node_dir
    batches, _, _ = collect(client.stream("toy", 20, preprocessor="scale"))
    np.testing.assert_allclose(batches[0][0], arrays["image"][:20] / 10.0)
    first, _, _ = collect(client.stream("toy", 20, seed=2, preprocessor="noisy"))
    again, _, _ = collect(client.stream("toy", 20, seed=2, preprocessor="noisy"))
    np.testing.assert_array_equal(first[0][0], again[0][0])
    assert not np.allclose(first[0][0], arrays["image"][:20])


def test_registered_preprocessors_get_epoch_and_indices_when_they_ask(client):
    stream = client.stream("toy", 16, sample_random=True, seed=8, epochs=2, preprocessor="position")
    for batch in stream:
        np.testing.assert_array_equal(batch[2][:, 0], stream.epoch)
        np.testing.assert_array_equal(batch[2][:, 1], stream.indices)


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_compressed_codecs_roundtrip(client, node_dir, codec):
    _, arrays = node_dir
    batches, _, _ = collect(client.stream("toy", 20, codec=codec))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), arrays["image"])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), arrays["mask"])


def test_class_labels_follow_the_sources(client):
    batches, indices, _ = collect(client.stream("classes", 25))
    labels = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(labels, (np.concatenate(indices) >= NUM_SAMPLES).astype(int))


def test_health_and_reflection(node):
    _, port = node
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        response = check(health_pb2.HealthCheckRequest(service="data_wire.v1.DataNode"))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2

        reflect = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        (answer,) = reflect(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = {s.name for s in answer.list_services_response.service}
        assert "data_wire.v1.DataNode" in services
        assert "grpc.health.v1.Health" in services


def test_reads_left_without_a_thread_count_run_on_the_usable_cores(client):
    before = set(threading.enumerate())
    with client.stream("toy", 4, loop_forever=True) as stream:
        next(stream)  # the stream's reader threads have started; it is then not read
        readers = [
            thread
            for thread in set(threading.enumerate()) - before
            if thread.name.startswith("data_tools-io-")
        ]
    assert len(readers) == min(usable_cores(), LimitsConfig().max_nb_io_workers)


def test_a_stream_builds_one_flow_plan_and_no_throwaway_flow(node, client, monkeypatch):
    """The node checks a request by building its FlowSpec, never a data_flow it discards."""
    from data_tools.io import FlowSpec

    built = {"data_flow": 0, "from_spec": 0, "FlowSpec": 0}

    def counted(name, method):
        def call(*args, **kwargs):
            built[name] += 1
            return method(*args, **kwargs)

        return call

    monkeypatch.setattr(data_flow, "__init__", counted("data_flow", data_flow.__init__))
    monkeypatch.setattr(
        data_flow, "from_spec", classmethod(counted("from_spec", data_flow.from_spec.__func__))
    )
    monkeypatch.setattr(FlowSpec, "__post_init__", counted("FlowSpec", FlowSpec.__post_init__))
    batches = list(client.stream("toy", 8, sample_random=True, seed=3, epochs=2))
    assert len(batches) == 2 * NUM_SAMPLES // 8
    assert built == {"data_flow": 0, "from_spec": 1, "FlowSpec": 1}

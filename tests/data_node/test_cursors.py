"""The cursor fingerprint covers a request's meaning, not its bytes.

Matrix: pairs of requests that yield the same batches (a field unset or set to its default,
zoom_range z or the pair (1 - z, 1 + z), -0.0 or 0.0, inline weights or the array holding
them, fields the output cannot depend on, a shard of one, sharing, lane, codec, workers,
epochs) fingerprint alike; requests that differ in any field that shapes the batches do not.
"""

from __future__ import annotations

import numpy as np
import pytest

from data_node.catalog.datasets import Dataset
from data_node.config import LimitsConfig
from data_node.streaming.streams import parse_stream_request
from data_wire.v1 import data_node_pb2, tensor_pb2

LENGTH = 12
DATASET = Dataset(
    "toy",
    (
        ("image", np.zeros((LENGTH, 1, 8, 8), np.float32)),
        ("mask", np.zeros((LENGTH, 1, 8, 8), np.uint8)),
        ("weights", np.linspace(1.0, 2.0, LENGTH)),
    ),
)
PREPROCESSORS = {"scale": "node_support:scale_image"}


def digest(**fields):
    fields = {"dataset": "toy", "batch_size": 4, "seed": 1, "epochs": 1, **fields}
    request = data_node_pb2.StreamRequest(**fields)
    return parse_stream_request(request, DATASET, LimitsConfig(), PREPROCESSORS).fingerprint


def augment(**fields):
    return {"augmentation": data_node_pb2.Augmentation(x_array="image", **fields)}


WEIGHTS = np.linspace(1.0, 2.0, LENGTH).tolist()
INLINE = data_node_pb2.SampleWeights(values=data_node_pb2.DoubleList(values=WEIGHTS))

EQUIVALENT = [
    ({}, {"shard": data_node_pb2.Shard(rank=0, world_size=1)}),
    ({}, {"sharing": data_node_pb2.SHARING_PARTITIONED, "lane": data_node_pb2.Lane(count=3)}),
    ({}, {"codec": tensor_pb2.CODEC_ZSTD, "nb_io_workers": 2, "nb_proc_workers": 1}),
    ({"epochs": 1}, {"epochs": 7, "loop_forever": True}),
    (augment(zoom_range=[0.1]), augment(zoom_range=[0.9, 1.1])),
    (augment(), augment(zoom_range=[0.0])),
    (augment(), augment(warp_grid_size=3, warp_sigma=0.1, order_x=1, order_y=0)),
    (augment(), augment(fill_mode="nearest", rotation_range=-0.0)),
    (augment(fill_mode="reflect"), augment(fill_mode="reflect", cval_x=5.0, cval_y=2.0)),
    (augment(order_x=3), augment(order_x=3, order_y=3, cval_y=1.0)),  # no y_array
    (augment(), augment(spline_warp=True, warp_sigma=0.0, warp_grid_size=9)),
    (augment(), augment(warp_sigma=4.0, warp_grid_size=9)),  # no spline_warp
    (
        {"sample_random": True, "sample_weights": INLINE},
        {"sample_random": True, "sample_weights": data_node_pb2.SampleWeights(array="weights")},
    ),
]


@pytest.mark.parametrize(("one", "other"), EQUIVALENT)
def test_equivalent_requests_fingerprint_alike(one, other):
    assert digest(**one) == digest(**other)


DIFFERENT = [
    ({}, {"batch_size": 3}),
    ({}, {"sample_random": True}),
    ({}, {"drop_incomplete_batches": True}),
    ({}, {"preprocessor": "scale"}),
    ({}, augment()),
    (
        {"shard": data_node_pb2.Shard(rank=0, world_size=2)},
        {"shard": data_node_pb2.Shard(rank=1, world_size=2)},
    ),
    (augment(zoom_range=[0.1]), augment(zoom_range=[0.9, 1.2])),
    (augment(fill_mode="constant"), augment(fill_mode="constant", cval_x=5.0)),
    (augment(spline_warp=True), augment(spline_warp=True, warp_grid_size=4)),
    (augment(), augment(y_array="mask")),
    (augment(rotation_range=10.0), augment(rotation_range=10.000000000000002)),
    (
        {"sample_random": True, "sample_weights": INLINE},
        {
            "sample_random": True,
            "sample_weights": data_node_pb2.SampleWeights(
                values=data_node_pb2.DoubleList(values=WEIGHTS[::-1])
            ),
        },
    ),
]


@pytest.mark.parametrize(("one", "other"), DIFFERENT)
def test_requests_for_other_batches_fingerprint_apart(one, other):
    if "shard" in one:
        one = {**one, "sharing": data_node_pb2.SHARING_PARTITIONED}
        other = {**other, "sharing": data_node_pb2.SHARING_PARTITIONED}
    assert digest(**one) != digest(**other)

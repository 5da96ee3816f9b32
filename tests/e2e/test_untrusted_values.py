"""Untrusted numbers never reach native code unchecked, and a request's transform never runs
in the node's process.

Matrix: every numeric StreamRequest field at extreme values (tiny, subnormal, huge, NaN,
infinite, at the edge of int64) outside its documented bounds gets INVALID_ARGUMENT naming
the field and the bound, at parse time; augmentations at the very edge of every bound
stream fine; with nb_proc_workers=0 an augmented or preprocessed stream still runs its
transform in a worker process (the preprocessor reports its pid); a transform that crashes
its process in native code (SIGSEGV) ends its stream INTERNAL naming the signal while a
concurrent stream goes on and the node process serves on; a ValueError once the stream
began (a preprocessor's) is INTERNAL, never INVALID_ARGUMENT.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import numpy as np
import pytest
from node_support import (
    NUM_SAMPLES,
    make_data,
    start_node_process,
    stream_error,
    write_config,
)

from data_client import DataNodeClient
from data_client.errors import InternalError
from data_wire.v1 import data_node_pb2, tensor_pb2

Augmentation = data_node_pb2.Augmentation
TINY = 5e-324  # the smallest subnormal double
HUGE = 1.7976931348623157e308
INT64_MAX = 2**63 - 1


def augmented(**fields):
    return {"augmentation": Augmentation(x_array="image", **fields)}


def weights(values):
    return {
        "sample_random": True,
        "sample_weights": data_node_pb2.SampleWeights(
            values=data_node_pb2.DoubleList(values=values)
        ),
    }


def cursor(**fields):
    return {"resume": tensor_pb2.Cursor(dataset="toy", **fields)}


OUT_OF_BOUNDS = [
    (augmented(zoom_range=[TINY, TINY]), r"^augmentation\.zoom_range: .*0\.0625 <= lo <= hi <= 16"),
    (augmented(zoom_range=[1e-300, 1.0]), r"^augmentation\.zoom_range: .*Got \(1e-300, 1\.0\)"),
    (augmented(zoom_range=[1.0, HUGE]), r"^augmentation\.zoom_range: "),
    (
        augmented(zoom_range=[0.99]),
        r"^augmentation\.zoom_range: Expected one value z in \[0, 0\.9375\]",
    ),
    (augmented(zoom_range=[float("nan")]), r"^augmentation\.zoom_range: .*Got nan"),
    (augmented(zoom_range=[0.5] * 1000), r"^augmentation\.zoom_range: .*Got 1000"),
    (augmented(rotation_range=HUGE), r"^augmentation\.rotation_range: .*\[0, 360\] \(degrees\)"),
    (augmented(rotation_range=float("inf")), r"^augmentation\.rotation_range: .*Got inf"),
    (augmented(width_shift_range=1e10), r"^augmentation\.width_shift_range: .*\[0, 1\]"),
    (augmented(height_shift_range=-TINY), r"^augmentation\.height_shift_range: "),
    (augmented(shear_range=89.999999), r"^augmentation\.shear_range: .*\[0, 80\]"),
    (augmented(intensity_shift_range=1e300), r"^augmentation\.intensity_shift_range: "),
    (augmented(cval_x=-float("inf")), r"^augmentation\.cval_x: .*Got -inf"),
    (augmented(cval_y=float("nan")), r"^augmentation\.cval_y: .*Got nan"),
    (augmented(spline_warp=True, warp_sigma=1e9), r"^augmentation\.warp_sigma: .*\[0, 1000\]"),
    (
        augmented(spline_warp=True, warp_grid_size=100_000),
        r"^augmentation\.warp_grid_size: .*\[3, 64\]",
    ),
    (augmented(warp_grid_size=2**31 - 1), r"^augmentation\.warp_grid_size: "),
    (augmented(warp_grid_size=2), r"^augmentation\.warp_grid_size: "),
    (augmented(crop_size=[INT64_MAX, INT64_MAX]), r"^augmentation\.crop_size: .*1 <= h <= 16"),
    (augmented(crop_size=[0, 4]), r"^augmentation\.crop_size: "),
    (augmented(crop_size=[4] * 1000), r"^augmentation\.crop_size: .*\.\.\. instead"),
    (augmented(order_x=2), r"^augmentation\.order_x: Expected one of \[0, 1, 3\]"),
    (augmented(order_y=-(2**31)), r"^augmentation\.order_y: "),
    (
        {"augmentation": Augmentation(x_array="weights")},
        r"^augmentation\.x_array: Expected an array of numeric images",
    ),
    (
        {"augmentation": Augmentation(x_array="x" * 100_000)},
        r"^augmentation\.x_array: Expected at most 4096 characters\. Got 100000 instead\.$",
    ),
    (
        {"augmentation": Augmentation(x_array="x" * 4000)},
        r"^augmentation\.x_array: Expected one of .*'\.\.\. \(4000 characters\) instead\.$",
    ),
    (
        augmented(fill_mode="nearest" * 10_000),
        r"^augmentation\.fill_mode: Expected at most 4096 characters\. Got 70000 instead\.$",
    ),
    (
        augmented(fill_mode="nearest" * 500),
        r"^augmentation\.fill_mode: .*\(3500 characters\) instead\.$",
    ),
    (
        weights([HUGE] * NUM_SAMPLES),
        r"^sample_weights\.values: Expected finite weights in \[0, 1e\+100\]",
    ),
    (weights([float("inf")] + [1.0] * (NUM_SAMPLES - 1)), r"^sample_weights\.values: "),
    (weights([-TINY] + [1.0] * (NUM_SAMPLES - 1)), r"^sample_weights\.values: "),
    (weights([TINY] * 10**5), r"^sample_weights\.values: Expected one weight per sample"),
    ({"epochs": INT64_MAX}, r"^epochs: Expected an integer in \[1, 4294967296\]"),
    (
        {
            "sharing": data_node_pb2.SHARING_PARTITIONED,
            "seed": 1,
            "shard": data_node_pb2.Shard(world_size=2**31 - 1),
        },
        r"^shard\.world_size: Expected an integer in \[1, 1048576\]",
    ),
    ({"batch_size": INT64_MAX}, r"^batch_size: "),
    (
        cursor(epoch=INT64_MAX),
        r"^resume\.epoch: Expected an integer in \[0, 4294967295\]\. Got 9223372036854775807",
    ),
    (cursor(epoch=-1), r"^resume\.epoch: "),
    (cursor(seed=2**64 - 1), r"^resume\.seed: Expected an integer in \[0, 4294967295\]"),
    (cursor(batch_index=-(2**63)), r"^resume\.batch_index: Expected an integer >= 0"),
]


@pytest.mark.parametrize(("fields", "message"), OUT_OF_BOUNDS)
def test_values_out_of_bounds_are_refused_naming_the_field_and_bound(node, client, fields, message):
    request = data_node_pb2.StreamRequest(
        **{"dataset": "toy", "batch_size": 4, "epochs": 1, **fields}
    )
    code, details = stream_error(node[1], request)
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert re.search(message, details), details
    with client.stream("toy", 4) as stream:
        assert next(stream)[0].shape == (4, 1, 16, 16)


def test_a_cursor_at_the_edge_of_int64_is_refused_at_parse_time(node, client):
    """A forged batch_index beyond the epoch is refused before any batch, naming the field."""
    stream = client.stream("toy", 8, sample_random=True, seed=1)
    next(stream)
    forged = tensor_pb2.Cursor()
    forged.CopyFrom(stream.cursor)
    stream.close()
    forged.batch_index = INT64_MAX
    request = data_node_pb2.StreamRequest(
        dataset="toy", batch_size=8, sample_random=True, seed=1, epochs=1, resume=forged
    )
    code, details = stream_error(node[1], request)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert re.match(r"resume\.batch_index: Expected an integer in \[0, 5\)", details), details


EDGES = {
    "x_array": "image",
    "y_array": "mask",
    "rotation_range": 360.0,
    "width_shift_range": 1.0,
    "height_shift_range": TINY,
    "shear_range": 80.0,
    "zoom_range": (1 / 16, 16.0),
    "intensity_shift_range": float(2**53),
    "fill_mode": "constant",
    "cval_x": -float(2**53),
    "cval_y": float(2**53),
    "spline_warp": True,
    "warp_sigma": 1000.0,
    "warp_grid_size": 64,
    "crop_size": (16, 1),
    "order_x": 3,
    "order_y": 3,
}


@pytest.mark.parametrize(
    "augment",
    [EDGES, {**EDGES, "zoom_range": 0.9375, "warp_sigma": TINY, "rotation_range": TINY}],
    ids=["upper-edges", "tiny-values"],
)
def test_augmentations_at_the_edges_of_the_bounds_stream(client, augment):
    with client.stream("toy", 8, seed=3, augmentation=augment) as stream:
        batches = list(stream)
    assert len(batches) == NUM_SAMPLES // 8
    image, mask, _ = batches[0]
    assert image.shape == mask.shape == (8, 1, 16, 1)
    assert np.isfinite(image).all()


@pytest.fixture(scope="module")
def node_process(tmp_path_factory):
    """A node process serving toy, with the preprocessors runner_pid and segfault too."""
    root = tmp_path_factory.mktemp("untrusted")
    make_data(root)
    config = write_config(root, max_nb_proc_workers=2)
    text = config.read_text().replace(
        "[preprocessors]\n",
        '[preprocessors]\npid = "node_support:runner_pid"\ncrash = "node_support:segfault"\n'
        'refuse = "node_support:refuse"\n',
    )
    config.write_text(text)
    process, port = start_node_process(config, root / "node.log")
    yield process, port
    process.terminate()
    assert process.wait(timeout=30) == 0


@pytest.mark.parametrize(
    "options",
    [
        {"preprocessor": "pid"},
        {"preprocessor": "pid", "augmentation": {"x_array": "image", "rotation_range": 10.0}},
    ],
    ids=["preprocessor", "augmentation"],
)
def test_a_transform_never_runs_in_the_node_process(node_process, options):
    process, port = node_process
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        batches = list(client.stream("toy", 8, nb_proc_workers=0, **options))
    pids = {int(pid) for *_, runners in batches for pid in runners}
    assert len(batches) == NUM_SAMPLES // 8
    assert process.pid not in pids
    # The node's warm pool ran every batch (0 leaves the count to the pool: one or more of
    # its workers, all children of the node).
    parents = {
        int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1]) for pid in pids
    }
    assert parents == {process.pid}


def test_a_native_crash_takes_one_worker_not_the_node(node_process):
    process, port = node_process
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        other = client.stream("toy", 4, loop_forever=True, nb_proc_workers=1, seed=5)
        first = next(other)
        crashing = client.stream("toy", 4, preprocessor="crash", max_reconnects=0)
        with pytest.raises(InternalError, match=r"died unexpectedly \(killed by SIGSEGV\)"):
            next(crashing)
        for _ in range(NUM_SAMPLES // 4):  # the other stream goes on, past an epoch
            next(other)
        other.close()
        assert process.poll() is None
        with client.stream("toy", 4, seed=5) as again:
            np.testing.assert_array_equal(next(again)[0], first[0])


def test_a_value_error_mid_stream_is_internal_not_the_clients_fault(node_process):
    _, port = node_process
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        stream = client.stream("toy", 4, preprocessor="refuse", max_reconnects=0)
        with pytest.raises(InternalError, match=r"ValueError while streaming: this preprocessor"):
            next(stream)
        assert next(iter(client.stream("toy", 4)))[0].shape == (4, 1, 16, 16)

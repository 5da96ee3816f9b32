"""Streams are bit-identical across refactors: batch digests recorded before a change.

``golden_digests.json`` holds, for each request below, the SHA-256 of every batch's arrays
and indices, recorded on the code before the read path's architecture changed. Recording
again (``DATA_TOOLS_RECORD_GOLDEN=1 pytest tests/golden``) is only right when a stream is
meant to change, and the commit must say why.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from node_support import make_data, write_config

from data_client import DataNodeClient
from data_node.config import load
from data_node.server import build_server
from data_tools.io import data_flow

GOLDEN = Path(__file__).with_name("golden_digests.json")
RECORD = os.environ.get("DATA_TOOLS_RECORD_GOLDEN") == "1"

AUGMENT = {
    "rotation_range": 30.0,
    "width_shift_range": 0.1,
    "height_shift_range": 0.1,
    "zoom_range": 0.2,
    "horizontal_flip": True,
    "fill_mode": "nearest",
    "x_array": "image",
    "y_array": "mask",
}

STREAMS: dict[str, dict[str, Any]] = {
    "ordered": {"dataset": "toy", "batch_size": 8},
    "shuffled_two_epochs": {
        "dataset": "toy",
        "batch_size": 6,
        "sample_random": True,
        "seed": 11,
        "epochs": 2,
    },
    "augmented_in_workers": {
        "dataset": "toy",
        "batch_size": 8,
        "sample_random": True,
        "seed": 5,
        "augmentation": AUGMENT,
        "nb_proc_workers": 2,
    },
    "weighted_with_replacement": {
        "dataset": "toy",
        "batch_size": 7,
        "sample_random": True,
        "seed": 3,
        "sample_with_replacement": True,
        "sample_weights": list(np.linspace(0.0, 1.0, 40)),
    },
    "rank_of_three_dropping": {
        "dataset": "toy",
        "batch_size": 4,
        "sample_random": True,
        "seed": 9,
        "rank": 1,
        "world_size": 3,
        "drop_incomplete_batches": True,
    },
    "preprocessor_rng": {
        "dataset": "toy",
        "batch_size": 8,
        "sample_random": True,
        "seed": 2,
        "preprocessor": "noisy",
    },
    "two_files": {"dataset": "classes", "batch_size": 9, "sample_random": True, "seed": 4},
    "started_mid_run": {
        "dataset": "toy",
        "batch_size": 8,
        "sample_random": True,
        "seed": 1,
        "epochs": 3,
        "start_epoch": 1,
    },
}

FLOWS: dict[str, dict[str, Any]] = {
    "flow_ordered": {"batch_size": 8, "loop_forever": False},
    "flow_shuffled": {"batch_size": 6, "sample_random": True, "seed": 11, "loop_forever": False},
    "flow_weighted": {
        "batch_size": 7,
        "sample_random": True,
        "sample_weights": np.linspace(0.0, 1.0, 40),
        "seed": 3,
        "loop_forever": False,
    },
    "flow_lane_and_rank": {
        "batch_size": 4,
        "sample_random": True,
        "seed": 9,
        "rank": 1,
        "world_size": 2,
        "lane": 1,
        "lanes": 2,
        "loop_forever": False,
    },
}


def digest(arrays: Any, indices: Any) -> str:
    sha = hashlib.sha256()
    for array in [*arrays, np.asarray(indices, dtype=np.int64)]:
        array = np.ascontiguousarray(array)
        sha.update(f"{array.dtype.str}{array.shape}".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()


@pytest.fixture(scope="module")
def golden() -> dict[str, list[str]]:
    recorded: dict[str, list[str]] = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    yield recorded
    if RECORD:
        GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")


def check(golden: dict[str, list[str]], name: str, digests: list[str]) -> None:
    assert digests, f"{name} yielded no batch"
    if RECORD:
        golden[name] = digests
    else:
        assert name in golden, f"no recorded digests for {name}"
        assert digests == golden[name], f"{name}: the stream changed"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    make_data(root)
    write_config(root, max_batch_size=32, max_open_streams=16, max_nb_proc_workers=2)
    server, port = build_server(load(root / "node.toml"), "127.0.0.1:0")
    server.start()
    yield port, root
    server.stop(None)


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_a_node_stream_is_unchanged(node, golden, name):
    port, _ = node
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        stream = client.stream(**STREAMS[name])
        digests = [digest(batch, stream.indices) for batch in stream]
    check(golden, name, digests)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_an_in_process_flow_is_unchanged(node, golden, name):
    _, root = node
    import h5py

    with h5py.File(root / "data" / "toy.h5", "r") as f:
        data = [f["image"], f["mask"], f["weights"]]
        flow = data_flow(data, **FLOWS[name])
        digests = [digest(info.arrays, info.indices) for info in flow.flow_with_info()]
    check(golden, name, digests)

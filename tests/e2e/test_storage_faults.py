"""Storage faults get the right status and never a silent wrong answer or a server path.

Matrix: a chunk deleted from a zarr array and a chunk file deleted from a bcolz carray, both
written complete by the data_tools writers, each read with the chunk cache on and off and
with and without worker processes: the stream ends DATA_LOSS naming the chunk relative to
the data root (never fill values, never INVALID_ARGUMENT), and the node serves on. No message
a client reads names an absolute server path: a deleted HDF5 file, a build job whose input
is missing (the job manager's error records go through the same redactor:
tests/data_node/test_redact.py).
"""

from __future__ import annotations

import re

import grpc
import h5py
import numpy as np
import pytest
from node_support import make_data, write_config

from data_client import DataNodeClient
from data_client.errors import DataNodeError
from data_client.jobs import FileArray
from data_node.config import load
from data_node.server import build_server
from data_tools.io.writers import bcolz_array_writer, zarr_array_writer

LENGTH, CHUNK = 40, 8
DATA = np.arange(LENGTH * 16, dtype=np.float32).reshape(LENGTH, 1, 4, 4) + 1


@pytest.fixture(params=[0, 16 << 20], ids=["uncached", "cached"])
def storage_node(request, tmp_path):
    """A node serving toy plus "z" (zarr) and "b" (bcolz) written complete; its root."""
    make_data(tmp_path)
    data = tmp_path / "data"
    with zarr_array_writer((1, 4, 4), np.float32, CHUNK, data / "z.zarr", "x") as writer:
        writer.buffered_write(DATA)
    kwargs = {"chunklen": CHUNK}
    with bcolz_array_writer((1, 4, 4), np.float32, CHUNK, data / "b.bcolz", kwargs=kwargs) as w:
        w.buffered_write(DATA)
    with h5py.File(data / "lost.h5", "w") as file:
        file["x"] = DATA
    config = write_config(tmp_path, max_nb_proc_workers=2)
    with config.open("a") as file:
        file.write(
            '[datasets.z.arrays]\nx = { path = "z.zarr", key = "x" }\n'
            '[datasets.b.arrays]\nx = { path = "b.bcolz" }\n'
            '[datasets.lost.arrays]\nx = { path = "lost.h5", key = "x" }\n'
            f"[cache]\nmax_bytes = {request.param}\n"
        )
    server, port = build_server(load(config), "127.0.0.1:0")
    server.start()
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        yield client, tmp_path
    server.stop(None)


def assert_no_server_path(details, root):
    assert str(root) not in details, details
    assert str(root.resolve()) not in details, details


def read_checking_values(stream):
    """Read every batch, failing on any row that differs from DATA (fill values, say)."""
    for batch in stream:
        np.testing.assert_array_equal(batch[0], DATA[stream.indices])


def assert_serving(client):
    image, *_ = next(iter(client.stream("toy", 4)))
    assert image.shape == (4, 1, 16, 16)


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize(
    ("dataset", "chunk", "named"),
    [
        ("z", "z.zarr/x/c/3/0/0/0", r"zarr chunk 'z\.zarr/x/c/3/0/0/0' is missing"),
        ("b", "b.bcolz/data/__3.blp", r"bcolz chunk file 'b\.bcolz/data/__3\.blp' is missing"),
    ],
    ids=["zarr", "bcolz"],
)
def test_a_lost_chunk_is_data_loss_named_relative_to_the_data_root(
    storage_node, dataset, chunk, named, workers
):
    client, root = storage_node
    (root / "data" / chunk).unlink()  # after the node opened the array
    with pytest.raises(DataNodeError) as caught:
        read_checking_values(client.stream(dataset, CHUNK, nb_proc_workers=workers))
    error = caught.value
    assert error.code is grpc.StatusCode.DATA_LOSS, error
    assert re.search(named, error.details), error.details
    assert_no_server_path(error.details, root)
    assert_serving(client)


def test_no_error_message_names_a_server_path(storage_node):
    client, root = storage_node
    next(iter(client.stream("lost", 4)))  # the node has the file open
    (root / "data" / "lost.h5").unlink()
    with pytest.raises(DataNodeError) as caught:
        next(iter(client.stream("lost", 4, max_reconnects=0)))
    assert "lost.h5" in caught.value.details
    assert_no_server_path(caught.value.details, root)

    with pytest.raises(DataNodeError) as caught:
        client.submit_build("out", 2, FileArray("missing.h5", "image"))
    assert "missing.h5" in caught.value.details
    assert_no_server_path(caught.value.details, root)

    assert_serving(client)

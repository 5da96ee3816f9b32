"""A real data node on a loopback port, and a client connected to it."""

from __future__ import annotations

import pytest
from node_support import make_data, write_config

from data_client import DataNodeClient
from data_node.config import load
from data_node.server import build_server


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("node")
    arrays = make_data(root)
    write_config(root, max_batch_size=32, max_open_streams=16, max_nb_proc_workers=2)
    return root, arrays


@pytest.fixture(scope="module")
def node(node_dir):
    root, _ = node_dir
    server, port = build_server(load(root / "node.toml"), "127.0.0.1:0")
    server.start()
    yield server, port
    server.stop(None)


@pytest.fixture
def client(node):
    _, port = node
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        yield client

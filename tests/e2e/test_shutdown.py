"""Streams end cleanly: nothing the node started for a stream outlives it.

Matrix: the client closes a stream mid-epoch (with worker processes and io threads); the
client's channel goes away without closing the stream; the node stops while a stream is
open and its consumer idle; a stream's epochs end. Each time: no data_tools thread, no
child process, no /dev/shm block is left, and the node's stream count returns to 0.
"""

from __future__ import annotations

import threading

import grpc
import pytest
from leak_check import assert_no_leaks
from node_support import make_data, wait_for_idle, write_config

from data_client import DataNodeClient
from data_client.errors import UnavailableError
from data_node.config import load
from data_node.server import build_server

WORKERS = {"nb_proc_workers": 2, "nb_io_workers": 2}


def test_closing_a_stream_frees_its_workers(node, client):
    server, _ = node
    with assert_no_leaks():
        stream = client.stream("toy", 4, sample_random=True, loop_forever=True, **WORKERS)
        next(stream)
        assert server.servicer.open_streams == 1
        stream.close()
        wait_for_idle(server)


def test_a_vanished_client_frees_its_workers(node):
    server, port = node
    with assert_no_leaks():
        client = DataNodeClient(f"127.0.0.1:{port}")
        stream = client.stream("toy", 4, loop_forever=True, **WORKERS)
        next(stream)
        client._channel.close()  # the connection drops; the stream was never closed
        wait_for_idle(server)
        stream.close()


def test_a_finished_stream_frees_its_workers(node, client):
    server, _ = node
    with assert_no_leaks():
        assert len(list(client.stream("toy", 8, epochs=2, **WORKERS))) == 10
        wait_for_idle(server)


def drain(stream):
    for _ in stream:
        pass


@pytest.mark.parametrize("grace", [None, 0.5])
def test_stopping_the_node_ends_open_streams(tmp_path, grace):
    make_data(tmp_path)
    write_config(tmp_path)
    with assert_no_leaks():
        server, port = build_server(load(tmp_path / "node.toml"), "127.0.0.1:0")
        server.start()
        with DataNodeClient(f"127.0.0.1:{port}") as client:
            stream = client.stream("toy", 4, loop_forever=True, max_reconnects=0, **WORKERS)
            next(stream)  # the consumer now idles while the node has batches in flight
            stopper = threading.Thread(target=server.stop, args=(grace,))
            stopper.start()
            stopper.join(timeout=10)
            assert not stopper.is_alive()
            assert server.servicer.open_streams == 0
            with pytest.raises(UnavailableError) as caught:
                drain(stream)
            assert caught.value.code is grpc.StatusCode.UNAVAILABLE

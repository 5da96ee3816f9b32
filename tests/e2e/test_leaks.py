"""100 streams opened and ended at random points: the node returns to its baseline.

Matrix: 100 seeded random streams from 4 client threads at once, over the HDF5 and the
HDF5+zarr datasets: random batch size, shuffle, augmentation or a preprocessor, 0-2 io
threads and, for one stream in six, 1 or 2 worker processes. Each ends one way: cancelled
after a random number of batches (0: opened and never read), its connection dropped, its
deadline passed while the client idles, or read to its end.

Then, within SETTLE seconds, the node (it runs in this process) serves no stream, its child
processes (the warm pool's workers, and nothing else) and /dev/shm entries of its own equal
the baseline exactly, its thread count
(/proc/self/task) and open file descriptors (/proc/self/fd) are at most the baseline's, and
its RSS (/proc/self/statm) is at most RSS_SLACK above it. The baseline is taken after a warm-up of the same mix (imports,
caches, the RPC thread pool grown to the concurrency the run uses).
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from leak_check import Snapshot
from node_support import make_data, write_config

from data_node.config import load
from data_node.server import build_server
from data_wire.v1 import data_node_pb2

STREAMS = 100
CLIENTS = 4
SETTLE = 30.0  # a poll: returns as soon as the node is back to its baseline
RSS_SLACK = 32 << 20  # measured: +3 to +4 MiB
EXPECTED = {
    "cancel": grpc.StatusCode.CANCELLED,
    "drop": grpc.StatusCode.CANCELLED,
    "deadline": grpc.StatusCode.DEADLINE_EXCEEDED,
    "finish": grpc.StatusCode.OK,
}
ENDINGS = tuple(EXPECTED)
PATH = "/data_wire.v1.DataNode/StreamBatches"
POOLS = ("data_node-rpc_", "asyncio_")


def idle_pool_threads() -> list[threading.Thread]:
    """Threads of the node's thread pools waiting for work.

    The RPC executor (data_node-rpc_N) and zarr's I/O executor (asyncio_N) start threads on
    demand, up to their fixed max_workers, and keep them for the next calls.
    """
    frames = sys._current_frames()
    return [
        thread
        for thread in threading.enumerate()
        if thread.name.startswith(POOLS)
        and (frame := frames.get(thread.ident)) is not None
        and (frame.f_code.co_name, Path(frame.f_code.co_filename).name) == ("_worker", "thread.py")
    ]


@dataclass(frozen=True)
class Usage:
    """What the node holds: threads, child processes, shm entries, fds, RSS (bytes)."""

    threads: int
    children: frozenset[int]
    shm: frozenset[str]
    fds: int
    rss: int

    @classmethod
    def now(cls) -> Usage:
        snapshot = Snapshot.take()
        prefix = f"data_tools_{os.getpid()}_"
        rss_pages = int(Path("/proc/self/statm").read_text().split()[1])
        return cls(
            threads=len(os.listdir("/proc/self/task")) - len(idle_pool_threads()),
            children=snapshot.children,
            shm=frozenset(name for name in snapshot.shm if name.startswith(prefix)),
            fds=len(os.listdir("/proc/self/fd")),
            rss=rss_pages * os.sysconf("SC_PAGE_SIZE"),
        )

    def back_to(self, baseline: Usage) -> bool:
        # Counts may end below the baseline (it can hold a client socket still closing at
        # the warm-up's end); never above it.
        counts = ("threads", "fds")
        fewer = all(getattr(self, name) <= getattr(baseline, name) for name in counts)
        same = self.children == baseline.children and self.shm == baseline.shm
        return fewer and same and self.rss <= baseline.rss + RSS_SLACK


@pytest.fixture(scope="module")
def leak_node(tmp_path_factory):
    root = tmp_path_factory.mktemp("leaks")
    make_data(root)
    config = write_config(root, max_open_streams=16, max_nb_proc_workers=2)
    server, port = build_server(load(config), "127.0.0.1:0")
    server.start()
    yield server, port
    server.stop(None)


def random_request(rng: random.Random, ending: str) -> data_node_pb2.StreamRequest:
    request = data_node_pb2.StreamRequest(
        dataset=rng.choice(["toy", "classes"]),
        batch_size=rng.randint(1, 12),
        sample_random=rng.random() < 0.5,
        seed=rng.randrange(1000),
        nb_io_workers=rng.randint(0, 2),
        nb_proc_workers=rng.randint(1, 2) if rng.random() < 1 / 6 else 0,
        loop_forever=ending != "finish",
        epochs=1,
    )
    if rng.random() < 0.3:
        request.augmentation.x_array = "image"
        request.augmentation.rotation_range = 20.0
    elif rng.random() < 0.3:
        request.preprocessor = rng.choice(["scale", "noisy"])
    return request


def run_stream(port: int, rng: random.Random) -> tuple[str, bool]:
    """Open one random stream, read a random number of batches, end it a random way.

    Returns:
        How it ended, and whether it had worker processes.
    """
    ending = rng.choice(ENDINGS)
    request = random_request(rng, ending)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_stream(
            PATH,
            request_serializer=data_node_pb2.StreamRequest.SerializeToString,
            response_deserializer=bytes,
        )(request, timeout=rng.uniform(0.3, 0.8) if ending == "deadline" else 30)
        if ending == "finish":
            assert sum(1 for _ in call) > 0
        else:
            with contextlib.suppress(grpc.RpcError):  # a deadline may pass as the client reads
                for _ in range(rng.randint(0, 6)):  # 0: the node starts it, no read follows
                    next(call)
        if ending == "cancel":
            call.cancel()
        while ending == "deadline" and call.is_active():
            time.sleep(0.02)
    # "drop": leaving the with block closed the channel under the open call.
    assert call.code() is EXPECTED[ending], (ending, call.code(), call.details())
    return ending, request.nb_proc_workers > 0


def run_clients(port: int, count: int, seed: int) -> list[tuple[str, bool]]:
    """``count`` random streams from CLIENTS threads at once; what run_stream returned.

    Re-raises the first error of a client.
    """
    errors: list[BaseException] = []
    streams: list[tuple[str, bool]] = []

    def client(index: int) -> None:
        rng = random.Random(seed * CLIENTS + index)
        try:
            streams.extend(run_stream(port, rng) for _ in range(count // CLIENTS))
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            errors.append(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return streams


def settle(server, baseline: Usage | None = None) -> Usage:
    """Wait for the node to serve no stream and, given a baseline, to return to it."""
    deadline = time.monotonic() + SETTLE
    while True:
        usage = Usage.now()
        pool = frozenset(worker.pid for worker in server.workers.workers())
        idle = server.servicer.open_streams == 0 and usage.children == pool and not usage.shm
        if idle and (baseline is None or usage.back_to(baseline)):
            return usage
        if time.monotonic() > deadline:
            raise AssertionError(f"after {SETTLE} s: {usage}\nbaseline: {baseline}")
        time.sleep(0.05)


def test_random_streams_leave_the_node_as_they_found_it(leak_node):
    server, port = leak_node
    run_clients(port, 16, seed=0)  # warm-up
    baseline = settle(server)
    streams = run_clients(port, STREAMS, seed=1)
    settle(server, baseline)
    assert len(streams) == STREAMS
    assert {ending for ending, _ in streams} == set(ENDINGS)
    assert sum(processes for _, processes in streams) >= 10

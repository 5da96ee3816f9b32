"""Fuzz a data node process with generated requests; print the statuses and the node's RSS.

The requests are those of tests/e2e/test_fuzz.py (its hypothesis strategies, imported):
StreamRequests with every field drawn from extreme and random values (floats tiny,
subnormal, huge, at and past the node's bounds; huge strings; long repeated fields), sent
plain or gzip-compressed, a third as generated, a third renamed to a served dataset, a
third as one generated field in an otherwise valid request (each stream is read for at most
two batches, then cancelled), DescribeDataset names, and random bytes sent to every method
as a raw request; after each, a ListDatasets must answer OK. The node is a separate process
(``python -m data_node serve``) over the test datasets of tests/node_support.py, written to
a temp dir.

Prints the count of answers per status code, the statuses no bad request deserves (any
besides OK, INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, OUT_OF_RANGE; the script exits
1 if there is one, or if the node died), and the node's RSS, threads, open fds and child
processes before (after one valid stream) and after (once a valid stream works again).

Usage: python benchmarks/fuzz_node.py [--requests 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "e2e")]

import test_fuzz  # the test suite's strategies
from node_support import make_data, write_config

from data_client import DataNodeClient
from data_wire.v1 import data_node_pb2

if TYPE_CHECKING:
    from collections.abc import Callable

MiB = 1 << 20
# multiprocessing's own helper processes, which live as long as the node.
HELPERS = (b"multiprocessing.resource_tracker", b"multiprocessing.forkserver")
# Shares of the requests: generated StreamRequests, DescribeDataset names, random bytes.
SHARES = {"stream": 0.8, "describe": 0.1, "bytes": 0.1}
SERVED = ("toy", "classes")
# How a generated StreamRequest is sent: as generated; renamed to a served dataset (so it
# reaches the checks beyond the name); or as one generated field in a valid request (so
# many are valid, and streams start with the generated workers, augmentation, cursor...).
MODES = ("generated", "served", "one field")


@dataclass(frozen=True)
class Usage:
    """A process's RSS (bytes), threads, open fds and live child processes (but HELPERS)."""

    rss: int
    threads: int
    fds: int
    children: int

    @classmethod
    def of(cls, pid: int) -> Usage:
        proc = Path(f"/proc/{pid}")
        rss = int((proc / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        children = 0
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    command = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                helper = any(name in command for name in HELPERS)
                children += fields[1] == str(pid) and fields[0] != "Z" and not helper
        return cls(rss, len(os.listdir(proc / "task")), len(os.listdir(proc / "fd")), children)

    def __str__(self) -> str:
        return (
            f"RSS {self.rss / MiB:7.1f} MiB, {self.threads} threads, {self.fds} fds, "
            f"{self.children} child processes"
        )


def start_node(config: Path, log: Path, prefix: tuple[str, ...] = ()) -> tuple[Any, int]:
    """Start ``data_node serve`` (after ``prefix``, if any) logging to ``log``; its port."""
    # The node imports its test preprocessors (node_support) by name.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    command = [*prefix, sys.executable, "-m", "data_node", "serve", "--config", str(config)]
    with log.open("w") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 60
    while " on port " not in (text := log.read_text()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the node did not start:\n{text}")
        time.sleep(0.05)
    return process, int(text.split(" on port ", 1)[1].split()[0])


def stop_node(process: Any) -> int:
    """SIGTERM the node and return its exit status."""
    process.terminate()
    try:
        return int(process.wait(timeout=30))
    except subprocess.TimeoutExpired:
        process.kill()
        return int(process.wait())


@st.composite
def stream_requests(draw: st.DrawFn) -> tuple[str, data_node_pb2.StreamRequest]:
    """A mode of MODES and a StreamRequest of test_fuzz's strategy sent that way."""
    request = draw(test_fuzz.stream_requests())
    mode = draw(st.sampled_from(MODES))
    if mode == "served":
        request.dataset = draw(st.sampled_from(SERVED))
    elif mode == "one field":
        valid = data_node_pb2.StreamRequest(
            dataset=draw(st.sampled_from(SERVED)), batch_size=4, epochs=1
        )
        fields = [field for field, _ in request.ListFields() if field.name != "dataset"]
        if fields:
            field = draw(st.sampled_from(fields))
            value = getattr(request, field.name)
            if field.message_type is None:
                setattr(valid, field.name, value)
            else:
                getattr(valid, field.name).CopyFrom(value)
        request = valid
    return mode, request


def answer(call: Callable[[], None]) -> tuple[grpc.StatusCode, str]:
    """The status of ``call`` and the subject of its details (the text before ':')."""
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), (error.details() or "").split(":", 1)[0][:40]
    return grpc.StatusCode.OK, ""


@dataclass
class Tally:
    """Answers per (request kind, status), subjects per status, and the unexpected ones."""

    counts: collections.Counter[tuple[str, str]]
    subjects: collections.Counter[tuple[str, str]]
    unexpected: list[str]

    def record(self, kind: str, outcome: tuple[grpc.StatusCode, str], what: object) -> None:
        code, subject = outcome
        self.counts[kind, code.name] += 1
        if code is not grpc.StatusCode.OK:
            self.subjects[code.name, subject] += 1
        if code is not grpc.StatusCode.OK and code not in test_fuzz.EXPECTED:
            self.unexpected.append(f"{kind} {code.name} {subject}: {what!r:.300}")


def fuzz(channel: grpc.Channel, requests: int, seed_value: int) -> Tally:
    """Send ``requests`` generated requests; tally the answers."""
    tally = Tally(collections.Counter(), collections.Counter(), [])
    record = tally.record

    def fuzz_settings(share: str) -> settings:
        return settings(
            max_examples=round(requests * SHARES[share]),
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )

    def alive() -> None:
        """The node answers at once after every request (else the tally says so)."""
        outcome = answer(lambda: test_fuzz.raw(channel, "ListDatasets", False)(b"", timeout=30))
        record("ListDatasets (after each)", outcome, "")

    @seed(seed_value)
    @fuzz_settings("stream")
    @given(fuzzed=stream_requests(), compression=test_fuzz.COMPRESSIONS)
    def streams(fuzzed: tuple[str, data_node_pb2.StreamRequest], compression: Any) -> None:
        mode, request = fuzzed

        def first_batches() -> None:
            call = test_fuzz.raw(channel, "StreamBatches", True)(
                request.SerializeToString(), timeout=20, compression=compression
            )
            try:
                for _, _ in zip(call, range(2), strict=False):
                    pass
            finally:
                call.cancel()

        record(f"StreamBatches ({mode})", answer(first_batches), request)
        alive()

    @seed(seed_value)
    @fuzz_settings("describe")
    @given(name=test_fuzz.names)
    def describes(name: str) -> None:
        payload = data_node_pb2.DescribeDatasetRequest(dataset=name).SerializeToString()
        call = test_fuzz.raw(channel, "DescribeDataset", False)
        record("DescribeDataset", answer(lambda: call(payload, timeout=10)), name)
        alive()

    @seed(seed_value)
    @fuzz_settings("bytes")
    @given(method=st.sampled_from(test_fuzz.METHODS), payload=st.binary(max_size=200))
    def raw_bytes(method: str, payload: bytes) -> None:
        stream = method == "StreamBatches"
        call = test_fuzz.raw(channel, method, stream)

        def send() -> None:
            if stream:
                list(call(payload, timeout=10))
            else:
                call(payload, timeout=10)

        record(f"{method} (bytes)", answer(send), payload)
        alive()

    for run in (streams, describes, raw_bytes):
        run()
    return tally


def report(tally: Tally, elapsed: float, seed_value: int) -> None:
    total = sum(tally.counts.values())
    print(f"\n{total} requests in {elapsed:.1f} s ({total / elapsed:.0f}/s), seed {seed_value}")
    print(f"{'request':<28} {'status':<20} {'count':>7}")
    for (kind, code), count in sorted(tally.counts.items()):
        print(f"{kind:<28} {code:<20} {count:>7}")
    by_code = collections.Counter[str]()
    for (_, code), count in tally.counts.items():
        by_code[code] += count
    print("per status: " + ", ".join(f"{code} {n}" for code, n in by_code.most_common()))
    for code in sorted({code for code, _ in tally.subjects}):
        common = [(s, n) for (c, s), n in tally.subjects.most_common() if c == code][:6]
        print(f"  {code} most often about: " + ", ".join(f"{s!r} {n}" for s, n in common))
    print(f"unexpected statuses: {len(tally.unexpected)}")
    for line in tally.unexpected[:20]:
        print("  " + line)


def valid_stream_works(port: int) -> bool:
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        batch = next(
            iter(client.stream("toy", 4, sample_random=True, augmentation={"x_array": "image"}))
        )
        return batch[0].shape == (4, 1, 16, 16)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000, help="requests (10000)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (0)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fuzz_node-") as directory:
        root = Path(directory)
        make_data(root)
        config = write_config(root, max_batch_size=32, max_open_streams=3, max_nb_proc_workers=2)
        node, port = start_node(config, root / "node.log")
        try:
            assert valid_stream_works(port)
            before = Usage.of(node.pid)
            start = time.monotonic()
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                tally = fuzz(channel, args.requests, args.seed)
            elapsed = time.monotonic() - start
            alive = node.poll() is None and valid_stream_works(port)
            time.sleep(1.0)  # let the last cancelled streams stop their workers
            after = Usage.of(node.pid)
        finally:
            status = stop_node(node)
    report(tally, elapsed, args.seed)
    print(f"node before: {before}")
    print(
        f"node after:  {after}  (RSS {(after.rss - before.rss) / MiB:+.1f} MiB, "
        f"ratio {after.rss / before.rss:.3f})"
    )
    print(f"node alive and serving after the storm: {alive}; exit status on SIGTERM: {status}")
    return 0 if alive and status == 0 and not tally.unexpected else 1


if __name__ == "__main__":
    sys.exit(main())

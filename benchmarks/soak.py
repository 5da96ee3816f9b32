"""Soak a data node: clients stream with random cancels and reconnects for a bounded time.

A node process (``python -m data_node serve``) serves an HDF5 dataset of 2,048 float32
1x64x64 images and uint8 masks written to a temp dir. Each of ``--clients`` threads runs
sessions until the time is up. A session streams one shuffled epoch (its own seed, a random
batch size, augmentation in half of them) and, at random points, cancels its stream and
reconnects resuming from the last cursor with new worker counts (0-2 worker processes,
0-2 io threads), now and then over a new connection; at its end it checks that it received
every sample of the epoch exactly once. One session in five is abandoned midway instead.

Every ``--every`` seconds it prints the node's RSS, threads, open fds and child processes
(multiprocessing's helpers aside) with the batches served so far; at the end, the totals,
the errors by status code (the goal: none), the RSS growth under load (the mean of the
last quarter of the run over the mean of the first quarter after the warm-up, the first
30 s or quarter of a shorter run, RSS sampled every second; the goal: under 10 %), and the
node's usage idle before and after the clients. Exits 1 if a
call failed, a session lost or repeated a sample, or RSS grew by 10 % or more.

Usage: python benchmarks/soak.py [--seconds 300] [--clients 4] [--seed 0] [--every 10]
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from fuzz_node import MiB, Usage, start_node, stop_node

from data_client import DataNodeClient, DataNodeError

NUM_SAMPLES = 2048
SHAPE = (1, 64, 64)
CONFIG = """
[node]
listen = "127.0.0.1:0"
data_root = "data"

[datasets.soak.arrays]
image = { path = "soak.h5", key = "image" }
mask = { path = "soak.h5", key = "mask" }
"""
AUGMENT = {"x_array": "image", "y_array": "mask", "rotation_range": 15.0, "horizontal_flip": True}
ABANDON = 0.2  # share of sessions abandoned midway
RECONNECT = 0.05  # chance, after each batch, of cancelling and resuming
NEW_CONNECTION = 0.3  # share of reconnects over a new connection
GROWTH_GOAL = 0.10
# Seconds of the warm-up: the node's RSS climbs for about that long (allocator arenas,
# caches, the RPC pool's threads) before it levels off.
WARM_UP = 30.0
SAMPLE = 1.0  # seconds between RSS samples


@dataclass
class Totals:
    """What the clients did; guarded by ``lock``."""

    batches: int = 0
    samples: int = 0
    reconnects: int = 0
    sessions: int = 0
    verified: int = 0
    abandoned: int = 0
    lost_or_repeated: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    messages: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, count in counts.items():
                setattr(self, name, getattr(self, name) + count)


def make_dataset(root: Path) -> Path:
    """Write the dataset and the node's config under ``root``; return the config's path."""
    (root / "data").mkdir()
    rng = np.random.default_rng(0)
    image = rng.random((NUM_SAMPLES, *SHAPE), dtype=np.float32)
    with h5py.File(root / "data" / "soak.h5", "w") as file:
        file.create_dataset("image", data=image, chunks=(32, *SHAPE))
        file.create_dataset("mask", data=(image > 0.5).astype(np.uint8), chunks=(32, *SHAPE))
    (root / "node.toml").write_text(CONFIG)
    return root / "node.toml"


def session(address: str, rng: random.Random, totals: Totals, until: float) -> None:
    """One epoch read in pieces; checks every sample came exactly once (if not abandoned)."""
    options: dict[str, Any] = {
        "sample_random": True,
        "seed": rng.randrange(2**32),
        "augmentation": AUGMENT if rng.random() < 0.5 else None,
    }
    batch_size = rng.randint(8, 64)
    abandon_at = rng.randint(1, NUM_SAMPLES // batch_size) if rng.random() < ABANDON else None
    indices: list[np.ndarray] = []
    client = DataNodeClient(address)
    cursor = None
    try:
        while time.monotonic() < until:
            workers = {
                "nb_proc_workers": rng.choice([0, 0, 1, 2]),
                "nb_io_workers": rng.randint(0, 2),
            }
            stream = client.stream("soak", batch_size, resume=cursor, **options, **workers)
            with stream:
                for _ in stream:
                    indices.append(stream.indices.copy())
                    totals.add(batches=1, samples=len(stream.indices))
                    if len(indices) == abandon_at:
                        totals.add(abandoned=1)
                        return
                    if rng.random() < RECONNECT:
                        break
                else:
                    break  # the epoch is done
            cursor = stream.cursor
            totals.add(reconnects=1)
            if rng.random() < NEW_CONNECTION:
                client.close()
                client = DataNodeClient(address)
        else:
            return  # time is up: the session is cut short, not checked
    finally:
        client.close()
    received = np.sort(np.concatenate(indices))
    exact = np.array_equal(received, np.arange(NUM_SAMPLES))
    totals.add(sessions=1, verified=int(exact), lost_or_repeated=int(not exact))


def client_loop(address: str, seed: int, totals: Totals, until: float) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        try:
            session(address, rng, totals, until)
        except DataNodeError as error:
            with totals.lock:
                totals.errors[error.code.name] += 1
                totals.messages.append(str(error)[:300])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="run time (300)")
    parser.add_argument("--clients", type=int, default=4, help="client threads (4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clients' choices (0)")
    parser.add_argument(
        "--every", type=float, default=10.0, help="seconds between printed lines (10)"
    )
    args = parser.parse_args()
    totals = Totals()
    with tempfile.TemporaryDirectory(prefix="soak-") as directory:
        root = Path(directory)
        node, port = start_node(make_dataset(root), root / "node.log")
        try:
            initial = Usage.of(node.pid)
            start = time.monotonic()
            until = start + args.seconds
            warm_up = start + min(WARM_UP, args.seconds / 4)
            clients = [
                threading.Thread(
                    target=client_loop,
                    args=(f"127.0.0.1:{port}", args.seed * 100 + i, totals, until),
                )
                for i in range(args.clients)
            ]
            for thread in clients:
                thread.start()
            print(
                f"{'t (s)':>6} {'RSS MiB':>8} {'threads':>7} {'fds':>4} {'procs':>5} "
                f"{'batches':>8} {'errors':>6}"
            )
            samples: list[tuple[float, Usage]] = []
            printed = start
            while any(thread.is_alive() for thread in clients):
                time.sleep(SAMPLE)
                now, usage = time.monotonic(), Usage.of(node.pid)
                samples.append((now - start, usage))
                if now - printed >= args.every or now >= until:
                    printed = now
                    print(
                        f"{now - start:6.0f} {usage.rss / MiB:8.1f} {usage.threads:7d} "
                        f"{usage.fds:4d} {usage.children:5d} {totals.batches:8d} "
                        f"{sum(totals.errors.values()):6d}",
                        flush=True,
                    )
            for thread in clients:
                thread.join()
            time.sleep(2.0)  # the last cancelled streams stop their workers
            final = Usage.of(node.pid)
            alive = node.poll() is None
        finally:
            status = stop_node(node)
    elapsed = args.seconds
    loaded = [usage.rss for t, usage in samples if start + t >= warm_up]
    quarter = max(1, len(loaded) // 4)
    first, last = float(np.mean(loaded[:quarter])), float(np.mean(loaded[-quarter:]))
    growth = last / first - 1
    print(f"\n{args.clients} clients for {elapsed:.0f} s (seed {args.seed})")
    print(
        f"batches served: {totals.batches} ({totals.batches / elapsed:.0f}/s), samples "
        f"{totals.samples} ({totals.samples / elapsed:.0f}/s)"
    )
    print(
        f"sessions: {totals.sessions} complete ({totals.verified} with every sample once, "
        f"{totals.lost_or_repeated} not), {totals.abandoned} abandoned; "
        f"{totals.reconnects} cancels + resumes"
    )
    print("errors by code: " + (", ".join(f"{c} {n}" for c, n in totals.errors.items()) or "none"))
    for message in totals.messages[:10]:
        print("  " + message)
    print(
        f"node RSS under load (sampled every {SAMPLE:.0f} s), mean of the first and last "
        f"quarter after the {warm_up - start:.0f} s warm-up: {first / MiB:.1f} -> "
        f"{last / MiB:.1f} MiB: growth {growth:+.1%} (goal < {GROWTH_GOAL:.0%}); peak "
        f"{max(loaded) / MiB:.1f} MiB"
    )
    print(f"node idle before the clients: {initial}")
    print(f"node idle after the clients:  {final}")
    print(f"node alive: {alive}; exit status on SIGTERM: {status}")
    failed = totals.errors or totals.lost_or_repeated or growth >= GROWTH_GOAL
    return 1 if failed or not alive or status != 0 else 0


if __name__ == "__main__":
    sys.exit(main())

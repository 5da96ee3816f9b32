"""Test support for sharing and fairness: a node config whose preprocessors count batches.

The node runs in the test process (``build_server``); the registered preprocessors below
run in its streams' worker processes (a request's transform never runs in the node's
process), so they count in files, one per name, under the directory that
:func:`write_sharing_config` sets in ``SHARING_COUNTS`` (inherited by the workers).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import h5py
import numpy as np
from node_support import make_data

BIG_SAMPLES = 64
BIG_SHAPE = (1, 128, 128)  # 64 KiB of float32 per sample
COUNTS = "SHARING_COUNTS"


def _count(name, batch):
    # One byte appended per batch: appends of a few bytes never interleave.
    with open(Path(os.environ[COUNTS]) / name, "ab") as file:
        file.write(b"1")
    return batch


def count_stalled(batch):
    """A registered preprocessor counting the batches it prepares under "stalled"."""
    return _count("stalled", batch)


def count_fast(batch):
    """A registered preprocessor counting the batches it prepares under "fast"."""
    return _count("fast", batch)


def count_slow(batch):
    """A registered preprocessor counting the batches it prepares under "slow"."""
    return _count("slow", batch)


def prepared(name):
    """Batches prepared so far by the preprocessor counting under ``name``."""
    path = Path(os.environ[COUNTS]) / name
    return path.stat().st_size if path.exists() else 0


def reset_counts():
    """Forget every count."""
    for path in Path(os.environ[COUNTS]).iterdir():
        path.unlink()


def write_sharing_config(root: Path, **limits: int) -> Path:
    """Write node_support's data, a "big" dataset and ``root/node.toml`` serving both."""
    make_data(root)
    (root / "counts").mkdir(exist_ok=True)
    os.environ[COUNTS] = str(root / "counts")
    rng = np.random.default_rng(3)
    with h5py.File(root / "data" / "big.h5", "w") as f:
        f["image"] = rng.random((BIG_SAMPLES, *BIG_SHAPE), dtype=np.float32)
    limit_lines = "\n".join(f"{key} = {value}" for key, value in limits.items())
    path = root / "node.toml"
    path.write_text(
        textwrap.dedent(
            """
            [node]
            listen = "127.0.0.1:0"
            data_root = "data"

            [limits]
            {limits}

            [workers]
            processes = 2

            [preprocessors]
            count_stalled = "sharing_support:count_stalled"
            count_fast = "sharing_support:count_fast"
            count_slow = "sharing_support:count_slow"

            [datasets.toy.arrays]
            image = {{ path = "toy.h5", key = "image" }}
            mask = {{ path = "toy.h5", key = "mask" }}

            [datasets.big.arrays]
            image = {{ path = "big.h5", key = "image" }}
            """
        ).format(limits=limit_lines)
    )
    return path

"""Test support for the node: datasets written to a temp dir, a config, preprocessors.

Preprocessors live here (an importable module) because worker processes import them by name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import h5py
import numpy as np
import zarr

from data_wire.v1 import data_node_pb2

NUM_SAMPLES = 40
IMAGE_SHAPE = (1, 16, 16)


def scale_image(batch):
    """A registered preprocessor: image / 10, everything else unchanged."""
    image, *rest = batch
    return (image / 10.0, *rest)


def noisy(batch, rng):
    """A registered preprocessor that draws from the rng data_flow passes."""
    image, *rest = batch
    return (image + rng.standard_normal(image.shape).astype(image.dtype), *rest)


def with_position(batch, *, epoch, indices):
    """A registered preprocessor: the third array becomes each row's (epoch, global index)."""
    image, mask, _ = batch
    return image, mask, np.stack([np.full(len(indices), epoch), indices], axis=1)


def runner_pid(batch):
    """A registered preprocessor: the third array becomes the pid of the process running it."""
    image, mask, weights = batch
    return image, mask, np.full(len(weights), os.getpid(), dtype=np.int64)


def segfault(batch):
    """A registered preprocessor that crashes its process in native code (SIGSEGV)."""
    import ctypes

    ctypes.string_at(0)
    return batch


def refuse(batch):
    """A registered preprocessor that raises ValueError: the node's fault, not the request's."""
    raise ValueError("this preprocessor refuses every batch")


def hang(batch):
    """A registered preprocessor that never finishes its batch (its process must be stopped)."""
    time.sleep(3600)
    return batch


def make_data(root: Path, seed: int = 7) -> dict[str, np.ndarray]:
    """Write the test datasets under ``root/data``; return the arrays written."""
    rng = np.random.default_rng(seed)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    image = rng.random((NUM_SAMPLES, *IMAGE_SHAPE), dtype=np.float32)
    mask = (image > 0.5).astype(np.uint8)
    weights = np.linspace(0.0, 1.0, NUM_SAMPLES)
    with h5py.File(data / "toy.h5", "w") as f:
        f.create_dataset("image", data=image, chunks=(8, *IMAGE_SHAPE))
        f["mask"] = mask
        f["weights"] = weights
    group = zarr.open_group(str(data / "extra.zarr"), mode="w")
    group.create_array("image", data=image[:10] + 1)
    return {"image": image, "mask": mask, "weights": weights}


def write_config(root: Path, **limits: int) -> Path:
    """Write ``root/node.toml`` serving the datasets of :func:`make_data`."""
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
            scale = "node_support:scale_image"
            noisy = "node_support:noisy"
            position = "node_support:with_position"

            [datasets.toy.arrays]
            image = {{ path = "toy.h5", key = "image" }}
            mask = {{ path = "toy.h5", key = "mask" }}
            weights = {{ path = "toy.h5", key = "weights" }}

            [datasets.classes]
            class_list = [0, 1]
            [datasets.classes.arrays]
            image = [{{ path = "toy.h5", key = "image" }}, {{ path = "extra.zarr", key = "image" }}]
            """
        ).format(limits=limit_lines)
    )
    return path


def stream_error(port, request, metadata=None):
    """Send a raw StreamBatches ``request``; return the (code, details) it fails with.

    Fails if the stream ends without an error.
    """
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_stream(
            "/data_wire.v1.DataNode/StreamBatches",
            request_serializer=data_node_pb2.StreamRequest.SerializeToString,
            response_deserializer=bytes,
        )
        try:
            list(call(request, timeout=60, metadata=metadata))
        except grpc.RpcError as error:
            return error.code(), error.details()
    raise AssertionError(f"the stream of {request} ended without an error")


def wait_for_idle(server, timeout=30.0):
    """Wait until the node serves no stream: a client's cancel reaches it asynchronously."""
    deadline = time.monotonic() + timeout
    while server.servicer.open_streams:
        assert time.monotonic() < deadline, f"{server.servicer.open_streams} streams still open"
        time.sleep(0.02)


def node_command(config):
    """The command line serving ``config``."""
    return [sys.executable, "-m", "data_node", "serve", "--config", str(config)]


def node_environment(**variables):
    """The environment of a node process: this one's, its sys.path, and ``variables``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **variables}


def start_node_process(args, log, **variables):
    """Start a node process (``args``) with its stderr in ``log``; return it and its port.

    ``args`` is a command line, or a config path for ``python -m data_node serve --config``;
    ``variables`` are added to its environment. The port is read from the node's
    "serving ... on port N" log line.
    """
    if isinstance(args, str | Path):
        args = node_command(args)
    env = node_environment(**variables)
    with log.open("w") as stderr:
        process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 30
    while " on port " not in (text := log.read_text()):
        assert process.poll() is None, text
        assert time.monotonic() < deadline, "the node did not start"
        time.sleep(0.05)
    return process, int(text.split(" on port ", 1)[1].split()[0])


UNREACHABLE = "tcp://127.0.0.1:1"


def start_blocked_job(client, output, *inputs, **fields):
    """Submit a build that stays RUNNING and return its handle once it has read its inputs.

    It is a Dask job (patchsize 3, zarr) whose scheduler is unreachable: its process waits
    for a connection without using CPU or disk. ``inputs`` are the volume and, optionally,
    the mask and class_list.
    """
    job = client.submit_build(
        output,
        3,
        *inputs,
        file_format="zarr",
        executor="dask",
        scheduler_address=UNREACHABLE,
        **fields,
    )
    for info in job.watch(timeout=30):
        if info.classes:
            return job
    raise AssertionError(f"job {job.job_id} ended before it planned: {info.error}")


def wait_for_empty_trash(config, timeout=10.0):
    """Wait until the node has deleted everything in its output root's ``.trash``."""
    deadline = time.monotonic() + timeout
    while list((config.output_root / ".trash").iterdir()):
        assert time.monotonic() < deadline, "the trash was not emptied"
        time.sleep(0.02)

"""Job outputs are never changed under their readers, never nest, never escape the root.

Matrix: a job overwriting the output of a served dataset (re-registering it) while a stream
reads it, HDF5 and zarr outputs, with the chunk cache on and off: the open stream sends only old rows (checked
against the old file, by index), then ends with FAILED_PRECONDITION; a new stream reads the
new output exactly. Overwriting a served output without registering the result under that
dataset's name: INVALID_ARGUMENT naming register_as and the dataset. Outputs inside or around
another job's output: INVALID_ARGUMENT naming the job and its output. An output whose parent
directory is swapped for a symlink (to a directory outside the output root) after the job
was accepted: the job FAILS naming the symlink, and nothing is written outside.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import zarr
from node_support import start_blocked_job

from data_client import DataNodeClient
from data_client.errors import FailedPreconditionError, InvalidArgumentError
from data_client.jobs import FileArray, JobState
from data_node.config import load
from data_node.server import build_server

VOLUME = np.random.default_rng(31).random((4, 12, 10), dtype=np.float32)
MASK = (VOLUME * 3).astype(np.uint8)
IMAGE = FileArray("vol.h5", "image")
LABELS = FileArray("vol.h5", "mask")


def write_node(root, cache_bytes=1 << 24):
    (root / "data").mkdir()
    with h5py.File(root / "data" / "vol.h5", "w") as file:
        file["image"] = VOLUME
        file["mask"] = MASK
    (root / "outside").mkdir()
    (root / "node.toml").write_text(
        '[node]\nlisten = "127.0.0.1:0"\ndata_root = "data"\n'
        f"[cache]\nmax_bytes = {cache_bytes}\n[jobs]\nmax_concurrent_jobs = 1\n"
    )
    return load(root / "node.toml")


def node_client(config):
    server, port = build_server(config, "127.0.0.1:0")
    server.start()
    return server, DataNodeClient(f"127.0.0.1:{port}")


def build(client, output, class_list, **fields):
    info = client.submit_build(
        output, 3, IMAGE, LABELS, class_list, random_order=False, batchsize=2, **fields
    ).wait(progress=False)
    assert info.state is JobState.SUCCEEDED, info.error
    return info


def patches_of(path, class_list, file_format="hdf5"):
    if file_format == "zarr":
        group = zarr.open_group(str(path / "patches.zarr"), mode="r")
        return np.concatenate([group[f"class_{value}"][...] for value in class_list])
    with h5py.File(path / "patches.h5", "r") as file:
        return np.concatenate([file[f"class_{value}"][()] for value in class_list])


@pytest.fixture(scope="module")
def job_node(tmp_path_factory):
    config = write_node(tmp_path_factory.mktemp("outputs"))
    server, client = node_client(config)
    with client:
        yield config, client
    server.stop(None)


@pytest.mark.parametrize("file_format", ["hdf5", "zarr"])
@pytest.mark.parametrize("cache_bytes", [0, 1 << 24], ids=["cache-off", "cache-on"])
def test_overwriting_a_served_output_ends_its_open_streams(tmp_path, cache_bytes, file_format):
    config = write_node(tmp_path, cache_bytes)
    server, client = node_client(config)
    try:
        with client:
            build(client, "served", [1], register_as="ds", file_format=file_format)
            old = patches_of(config.output_root / "served", [1], file_format)
            stream = client.stream("ds", 2, loop_forever=True)
            batches = iter(stream)
            (patches, _) = next(batches)
            np.testing.assert_array_equal(patches, old[stream.indices])
            build(
                client, "served", [0, 2], register_as="ds", overwrite=True, file_format=file_format
            )
            new = patches_of(config.output_root / "served", [0, 2], file_format)

            def read_to_the_end():
                for sent, (patches, _) in enumerate(batches):  # read before the replacement
                    np.testing.assert_array_equal(patches, old[stream.indices])
                    assert sent < 10_000, "the stream was not ended"

            with pytest.raises(FailedPreconditionError, match="'ds' was replaced"):
                read_to_the_end()
            described = client.describe("ds")
            assert (described.length, described.classes) == (len(new), (0, 2))
            (patches, labels) = next(iter(client.stream("ds", len(new))))
            np.testing.assert_array_equal(patches, new)
            assert set(labels) == {0, 2}
    finally:
        server.stop(None)


def test_a_served_output_is_overwritten_only_to_serve_it_again(job_node):
    _, client = job_node
    first = build(client, "kept", [1], register_as="kept")
    for register_as in (None, "renamed"):
        with pytest.raises(InvalidArgumentError, match=r"register_as: Expected 'kept': the "):
            client.submit_build("kept", 3, IMAGE, register_as=register_as, overwrite=True)
    assert client.describe("kept").classes == (1,)
    assert client.job(first.job_id).status().replaced_by == ""


@pytest.mark.parametrize(
    ("first", "second"),
    [("outer", "outer/inner"), ("deep/down", "deep")],
    ids=["inside", "around"],
)
def test_outputs_do_not_nest(job_node, first, second):
    config, client = job_node
    done = build(client, first, [1])
    pattern = rf"output: Expected a name neither inside nor around .* Job {done.job_id} wrote"
    with pytest.raises(InvalidArgumentError, match=pattern):
        client.submit_build(second, 3, IMAGE, overwrite=True)
    assert (config.output_root / first / "patches.h5").is_file()


def test_a_parent_swapped_for_a_symlink_after_submission_is_not_followed(job_node, tmp_path):
    config, client = job_node
    outside = tmp_path / "outside"
    outside.mkdir()
    (config.output_root / "parent").mkdir()
    blocker = start_blocked_job(client, "blocker", IMAGE)
    job = client.submit_build("parent/out", 3, IMAGE, LABELS, [1])  # queued behind it
    (config.output_root / "parent").rmdir()
    (config.output_root / "parent").symlink_to(outside)
    blocker.cancel()
    info = job.wait(progress=False)
    assert info.state is JobState.FAILED
    assert "output: could not publish the result" in info.error
    assert "is a symlink or not a directory" in info.error
    assert list(outside.iterdir()) == []
    assert list((config.output_root / ".jobs").iterdir()) == []

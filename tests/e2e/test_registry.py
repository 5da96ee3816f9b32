"""RegisterDataset / RemoveDataset end to end: a real node, the real client, restarts.

Matrix: register -> listed at once (registered, origin on the wire), described, streamed
equal to its files; options of config datasets (several sources, class_list, maxlen, zarr);
persisted across a restart (the state dir's file, no temporary left), removed -> gone now and
after a restart; name clashes {config-file name -> ALREADY_EXISTS, registered name ->
ALREADY_EXISTS, replace -> the new data}; the config file wins after a restart; a
registration whose files are gone at start is kept, not served, and removable; bad requests
{name, no arrays, duplicate array, missing file, HDF5 without key, outside the data root,
unequal lengths, class_list of the wrong length, maxlen 0} name the field and the node keeps
serving; removing a config-file dataset -> FAILED_PRECONDITION; removing (or replacing) a
dataset with an open stream ends it with FAILED_PRECONDITION after only true batches; roles:
a read token may not register or remove, a build token may; ``data-client register`` and
``remove``.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from leak_check import assert_no_leaks
from node_support import NUM_SAMPLES, make_data, write_config

from data_client import (
    AlreadyExistsError,
    DataNodeClient,
    FailedPreconditionError,
    FileArray,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from data_client.cli import main as client_main
from data_node.config import load
from data_node.server import build_server
from data_wire.v1 import data_node_pb2

IMAGE = FileArray("toy.h5", "image")
MASK = FileArray("toy.h5", "mask")


@pytest.fixture
def root(tmp_path):
    arrays = make_data(tmp_path)
    write_config(tmp_path)
    return tmp_path, arrays


def start(root):
    server, port = build_server(load(root / "node.toml"), "127.0.0.1:0")
    server.start()
    return server, DataNodeClient(f"127.0.0.1:{port}")


def names(client):
    return {info.name: info.registered for info in client.datasets()}


def first_batch(client, name, batch_size=NUM_SAMPLES):
    with client.stream(name, batch_size) as stream:
        return tuple(np.array(a) for a in next(iter(stream)))


def test_registered_datasets_are_served_at_once_and_after_a_restart(root):
    root, arrays = root
    server, client = start(root)
    with client:
        info = client.register_dataset("fresh", {"image": IMAGE, "mask": MASK})
        assert (info.name, info.length, info.registered) == ("fresh", NUM_SAMPLES, True)
        assert [a.name for a in info.arrays] == ["image", "mask"]
        assert names(client) == {"classes": False, "fresh": True, "toy": False}
        image, mask = first_batch(client, "fresh")
        np.testing.assert_array_equal(image, arrays["image"])
        np.testing.assert_array_equal(mask, arrays["mask"])
        client.register_dataset(
            "combined",
            {"image": [IMAGE, FileArray("extra.zarr", "image")]},
            class_list=[3, 4],
            maxlen=5,
        )
        combined = client.describe("combined")
        assert (combined.length, combined.classes) == (10, (3, 4))
        image, label = first_batch(client, "combined")
        np.testing.assert_array_equal(image[:5], arrays["image"][:5])
        np.testing.assert_array_equal(image[5:], arrays["image"][:5] + 1)
        np.testing.assert_array_equal(label, [3] * 5 + [4] * 5)
    server.stop(None)
    state = root / "state"
    stored = json.loads((state / "datasets.json").read_text())
    assert [entry["name"] for entry in stored["datasets"]] == ["fresh", "combined"]
    assert sorted(p.name for p in state.iterdir() if "datasets" in p.name) == ["datasets.json"]
    server, client = start(root)
    with client:
        assert names(client) == {"classes": False, "combined": True, "fresh": True, "toy": False}
        np.testing.assert_array_equal(first_batch(client, "fresh")[0], arrays["image"])
        assert client.describe("combined").classes == (3, 4)
        removed = client.remove_dataset("fresh")
        assert removed is not None
        assert (removed.name, removed.length) == ("fresh", NUM_SAMPLES)
        assert "fresh" not in names(client)
        with pytest.raises(NotFoundError, match="dataset"):
            client.describe("fresh")
        with pytest.raises(
            NotFoundError, match=r"^NOT_FOUND: dataset: Expected one of the registered"
        ):
            client.remove_dataset("fresh")
    server.stop(None)
    server, client = start(root)
    with client:
        assert names(client) == {"classes": False, "combined": True, "toy": False}
    server.stop(None)


def test_name_clashes_and_replace(root):
    root, arrays = root
    server, client = start(root)
    with client:
        with pytest.raises(
            AlreadyExistsError, match="dataset: Expected a name other than the config"
        ):
            client.register_dataset("toy", {"image": IMAGE})
        client.register_dataset("mine", {"image": IMAGE})
        with pytest.raises(AlreadyExistsError, match="registered already"):
            client.register_dataset("mine", {"mask": MASK})
        info = client.register_dataset("mine", {"mask": MASK}, replace=True)
        assert [a.name for a in info.arrays] == ["mask"]
        np.testing.assert_array_equal(first_batch(client, "mine")[0], arrays["mask"])
        with pytest.raises(FailedPreconditionError, match="comes from the node's config file"):
            client.remove_dataset("toy")
        assert client.describe("toy").length == NUM_SAMPLES
    server.stop(None)
    # The config file takes the name over: its dataset is served, the registration dropped.
    config = root / "node.toml"
    config.write_text(
        config.read_text()
        + '\n[datasets.mine.arrays]\nimage = { path = "toy.h5", key = "image" }\n'
    )
    server, client = start(root)
    with client:
        assert names(client)["mine"] is False
        np.testing.assert_array_equal(first_batch(client, "mine")[0], arrays["image"])
    server.stop(None)
    stored = json.loads((root / "state" / "datasets.json").read_text())
    assert stored["datasets"] == []


def test_a_registration_whose_files_are_gone_is_kept_and_removable(root, caplog):
    root, _ = root
    with h5py.File(root / "data" / "other.h5", "w") as f:
        f["image"] = np.zeros((3, 2), np.float32)
    server, client = start(root)
    with client:
        client.register_dataset("other", {"image": FileArray("other.h5", "image")})
    server.stop(None)
    (root / "data" / "other.h5").rename(root / "data" / "moved.h5")
    server, client = start(root)
    with client:
        assert "other" not in names(client)
        assert "registered dataset 'other' not served" in caplog.text
    server.stop(None)
    (root / "data" / "moved.h5").rename(root / "data" / "other.h5")
    server, client = start(root)
    with client:
        assert names(client)["other"] is True
    server.stop(None)
    (root / "data" / "other.h5").unlink()
    server, client = start(root)
    with client:
        assert client.remove_dataset("other") is None
    server.stop(None)
    assert json.loads((root / "state" / "datasets.json").read_text())["datasets"] == []


@pytest.mark.parametrize(
    ("arrays", "options", "error", "message"),
    [
        (
            {"image": IMAGE},
            {"dataset": "no/slash"},
            InvalidArgumentError,
            r"^INVALID_ARGUMENT: dataset: ",
        ),
        (
            {"image": "missing.h5"},
            {},
            InvalidArgumentError,
            r"arrays\.image\[0\]\.path: Expected an",
        ),
        (
            {"image": "toy.h5"},
            {},
            InvalidArgumentError,
            r"arrays\.image\[0\]\.key: Expected the HDF5",
        ),
        (
            {"image": "../node.toml"},
            {},
            PermissionDeniedError,
            r"arrays\.image\[0\]\.path: Expected a",
        ),
        (
            {"image": IMAGE, "short": FileArray("extra.zarr", "image")},
            {},
            InvalidArgumentError,
            r"arrays: Expected every array to have the lengths",
        ),
        (
            {"image": IMAGE},
            {"class_list": [0, 1]},
            InvalidArgumentError,
            r"^INVALID_ARGUMENT: class_list",
        ),
        ({"image": IMAGE, "label": MASK}, {"class_list": [0]}, InvalidArgumentError, "class_list"),
    ],
)
def test_bad_registrations_name_the_field(client, arrays, options, error, message):
    options = {"dataset": "bad", **options}
    with pytest.raises(error, match=message):
        client.register_dataset(options.pop("dataset"), arrays, **options)
    assert "bad" not in names(client)
    assert client.describe("toy").length == NUM_SAMPLES


def test_requests_the_client_cannot_send_are_refused_by_the_node(node):
    _, port = node
    with DataNodeClient(f"127.0.0.1:{port}") as client:
        node_call = client._nodes[0].calls[
            "RegisterDataset"
        ]  # raw requests past the client's checks
        cases = [
            (data_node_pb2.RegisterDatasetRequest(dataset="x"), "arrays: Expected 1 to 64"),
            (
                data_node_pb2.RegisterDatasetRequest(
                    dataset="x",
                    arrays=[
                        data_node_pb2.RegisteredArray(name="a", sources=[{"path": "toy.h5"}]),
                        data_node_pb2.RegisteredArray(name="a", sources=[{"path": "toy.h5"}]),
                    ],
                ),
                r"arrays\[1\]\.name: Expected a name of 1 to 128 characters no other",
            ),
            (
                data_node_pb2.RegisterDatasetRequest(
                    dataset="x", arrays=[data_node_pb2.RegisteredArray(name="a")]
                ),
                r"arrays\[0\]\.sources: Expected 1 to 4096",
            ),
            (
                data_node_pb2.RegisterDatasetRequest(
                    dataset="x",
                    maxlen=0,
                    arrays=[
                        data_node_pb2.RegisteredArray(
                            name="a", sources=[{"path": "toy.h5", "key": "image"}]
                        )
                    ],
                ),
                r"maxlen: Expected an integer >= 1",
            ),
        ]
        for request, message in cases:
            with pytest.raises(Exception, match=message) as raised:
                node_call(request, timeout=10)
            assert raised.value.code().name == "INVALID_ARGUMENT"
        for name, message in (
            ("", "dataset: Expected the name of a registered"),
            ("x" * 4097, "dataset: Expected at most 4096 characters"),
        ):
            with pytest.raises(Exception, match=message) as raised:
                client._nodes[0].calls["RemoveDataset"](
                    data_node_pb2.RemoveDatasetRequest(dataset=name)
                )
            assert raised.value.code().name == "INVALID_ARGUMENT"


def test_removing_a_streamed_dataset_ends_its_streams_with_failed_precondition(root):
    root, arrays = root
    with assert_no_leaks(timeout=10):
        server, client = start(root)
        with client:
            for change in ("remove", "replace"):
                client.register_dataset("going", {"image": IMAGE, "mask": MASK}, replace=True)
                stream = client.stream("going", 4, loop_forever=True, nb_proc_workers=1)
                received = [tuple(np.array(a) for a in next(stream))]
                if change == "remove":
                    client.remove_dataset("going")
                else:
                    client.register_dataset("going", {"image": IMAGE}, replace=True)
                with pytest.raises(
                    FailedPreconditionError, match="'going' was removed or replaced"
                ):
                    # The batches gRPC had buffered, then the end.
                    received.extend(tuple(np.array(a) for a in batch) for batch in stream)
                for image, mask in received:  # never zeros: each batch is the stored data
                    assert any(
                        np.array_equal(image, arrays["image"][i : i + 4]) for i in range(0, 40, 4)
                    )
                    assert mask.shape == image.shape
            assert client.describe("toy").length == NUM_SAMPLES
        server.stop(None)


def test_roles_on_the_registry_rpcs(tmp_path):
    make_data(tmp_path)
    config = write_config(tmp_path)
    (tmp_path / "tokens.txt").write_text("reader-token read\nbuilder-token build\n")
    config.write_text(config.read_text() + '\n[auth]\ntokens_file = "tokens.txt"\n')
    server, port = build_server(load(config), "127.0.0.1:0")
    server.start()
    try:
        with DataNodeClient(f"127.0.0.1:{port}", token="reader-token") as reader:
            with pytest.raises(
                PermissionDeniedError, match="RegisterDataset: Expected a token with role 'build'"
            ):
                reader.register_dataset("x", {"image": IMAGE})
            with pytest.raises(
                PermissionDeniedError, match="RemoveDataset: Expected a token with role 'build'"
            ):
                reader.remove_dataset("x")
            assert "x" not in names(reader)
        with DataNodeClient(f"127.0.0.1:{port}", token="builder-token") as builder:
            assert builder.register_dataset("x", {"image": IMAGE}).registered
            with DataNodeClient(f"127.0.0.1:{port}", token="reader-token") as reader:
                assert names(reader)["x"] is True
            assert builder.remove_dataset("x") is not None
    finally:
        server.stop(None)


def test_the_command_line_registers_and_removes(root, capsys):
    root, _ = root
    server, client = start(root)
    with client:
        address = client.addresses[0]
        argv = ["register", "cli_set", "--address", address, "--array", "image=toy.h5:image"]
        assert (
            client_main([*argv, "--array", "image=extra.zarr:image", "--class-list", "0", "1"]) == 0
        )
        assert "registered cli_set: 50 samples; image float32 (1, 16, 16), label" in (
            capsys.readouterr().out
        )
        assert client.describe("cli_set").classes == (0, 1)
        assert client_main([*argv]) == 1  # registered already, without --replace
        assert (
            "ALREADY_EXISTS: dataset: Expected a name not registered yet" in capsys.readouterr().err
        )
        assert client_main(["register", "x", "--address", address, "--array", "image"]) == 2
        assert "--array: Expected NAME=PATH[:KEY]. Got 'image' instead." in capsys.readouterr().err
        assert client_main(["remove", "cli_set", "--address", address]) == 0
        assert capsys.readouterr().out.startswith("removed cli_set: 50 samples")
        assert "cli_set" not in names(client)
    server.stop(None)

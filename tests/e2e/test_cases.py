"""Case selection of streams end to end (StreamRequest.cases), on a registered case dataset.

Matrix: selections {"0-3,7", a range, a pair, a list} yield exactly the samples of those
cases once per epoch, shuffled or not, as global indices; each sample is augmented exactly
as in the whole dataset's stream (same seed); partitioned shards of a selection are
disjoint and cover it; a cursor resumes the selection bit for bit, also spelled differently
("0-1,2-3,7"), and is refused for another selection (resume.fingerprint); weights apply to
the selected samples; bad selections {dataset without a case array, a range outside the
cases, first > last, a gap holding no sample, too many ranges, a float case array} name
"cases" and the node keeps serving; the client refuses malformed selections before calling;
``data-client stream --cases`` streams the selection; two nodes (lanes) serve a selection
from a later epoch (start_epoch) exactly as one node does.
"""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from data_client import DataNodeClient, FileArray, InvalidArgumentError
from data_client.cli import main as client_main
from data_node.config import load
from data_node.server import build_server
from data_wire.v1 import data_node_pb2

SLICES = [3, 5, 4, 6, 3, 2, 5, 4, 3, 5]  # slices of cases 0..9
CASE = np.repeat(np.arange(len(SLICES)), SLICES).astype(np.int64)
N = len(CASE)
AUGMENT = {"x_array": "image", "y_array": "mask", "rotation_range": 30.0, "horizontal_flip": True}


@pytest.fixture(scope="module")
def cases(node_dir, node):
    """Register dataset "cases": image, mask, case, slice (and "floaty", a float case)."""
    root, _ = node_dir
    rng = np.random.default_rng(3)
    image = rng.random((N, 1, 12, 12), dtype=np.float32)
    with h5py.File(root / "data" / "cases.h5", "w") as f:
        f["image"] = image
        f["mask"] = (image[:, 0] > 0.5).astype(np.uint8)
        f["case"] = CASE
        f["slice"] = np.concatenate([np.arange(n) for n in SLICES])
        f["float_case"] = CASE.astype(np.float32)
    with DataNodeClient(f"127.0.0.1:{node[1]}") as client:
        arrays = {key: FileArray("cases.h5", key) for key in ("image", "mask", "case", "slice")}
        client.register_dataset("cases", arrays, replace=True)
        client.register_dataset(
            "floaty",
            {"image": FileArray("cases.h5", "image"), "case": FileArray("cases.h5", "float_case")},
            replace=True,
        )
    return image


def selected(*case_numbers):
    return np.flatnonzero(np.isin(CASE, case_numbers))


def epochs_of(stream):
    by_epoch: dict[int, list[np.ndarray]] = {}
    for _ in stream:
        by_epoch.setdefault(stream.epoch, []).append(stream.indices.copy())
    return {epoch: np.concatenate(parts) for epoch, parts in by_epoch.items()}


@pytest.mark.parametrize(
    "selection", ["0-3,7", [range(4), 7], [(0, 3), (7, 7)], [0, 1, 2, 3, 7], "7,0-3,1-2"]
)
def test_a_selection_yields_its_cases_once_per_epoch(client, cases, selection):
    want = selected(0, 1, 2, 3, 7)
    ordered = epochs_of(client.stream("cases", 4, cases=selection))
    np.testing.assert_array_equal(ordered[0], want)
    shuffled = epochs_of(
        client.stream("cases", 4, sample_random=True, seed=1, epochs=2, cases=selection)
    )
    for indices in shuffled.values():
        np.testing.assert_array_equal(np.sort(indices), want)
    assert not np.array_equal(shuffled[0], want)


def test_samples_are_augmented_as_in_the_whole_dataset(client, cases):
    whole = {}
    with client.stream("cases", 8, seed=5, augmentation=AUGMENT) as stream:
        for image, mask, *_ in stream:
            for row, index in enumerate(stream.indices):
                whole[int(index)] = (np.array(image[row]), np.array(mask[row]))
    with client.stream("cases", 8, seed=5, augmentation=AUGMENT, cases="8-9") as stream:
        count = 0
        for image, mask, case, _ in stream:
            assert set(case.tolist()) <= {8, 9}
            for row, index in enumerate(stream.indices):
                np.testing.assert_array_equal(image[row], whole[int(index)][0])
                np.testing.assert_array_equal(mask[row], whole[int(index)][1])
                count += 1
    assert count == SLICES[8] + SLICES[9]


def test_shards_of_a_selection_are_disjoint_and_cover_it(client, cases):
    parts = [
        epochs_of(
            client.stream("cases", 3, sample_random=True, seed=2, rank=r, world_size=3, cases="2-6")
        )[0]
        for r in range(3)
    ]
    union = np.concatenate(parts)
    assert len(union) == len(set(union.tolist()))
    np.testing.assert_array_equal(np.sort(union), selected(2, 3, 4, 5, 6))


def test_a_cursor_resumes_its_selection_only(client, cases):
    kwargs = {"sample_random": True, "seed": 9, "epochs": 2, "augmentation": AUGMENT}
    full, cursors = [], []
    with client.stream("cases", 4, cases="0-3,7", **kwargs) as stream:
        for image, *_ in stream:
            full.append((stream.indices.copy(), np.array(image)))
            cursors.append(stream.cursor_bytes())
    for position in (0, len(full) // 2, len(full) - 2):
        # The same selection, spelled otherwise, continues the stream bit for bit.
        with client.stream(
            "cases", 4, cases="7,0-1,2-3", resume=cursors[position], **kwargs
        ) as resumed:
            rest = [(resumed.indices.copy(), np.array(image)) for image, *_ in resumed]
        assert len(rest) == len(full) - position - 1
        for (got_indices, got_image), (indices, image) in zip(
            rest, full[position + 1 :], strict=True
        ):
            np.testing.assert_array_equal(got_indices, indices)
            np.testing.assert_array_equal(got_image, image)
    with pytest.raises(InvalidArgumentError, match=r"resume\.fingerprint"):
        next(iter(client.stream("cases", 4, cases="0-3", resume=cursors[0], **kwargs)))
    with pytest.raises(InvalidArgumentError, match=r"resume\.fingerprint"):
        next(iter(client.stream("cases", 4, resume=cursors[0], **kwargs)))


def test_weights_apply_to_the_selected_samples(client, cases):
    weights = np.zeros(N)
    weights[selected(1)] = 1.0
    weights[selected(5)] = 1.0  # outside the selection: never drawn
    stream = client.stream(
        "cases",
        5,
        sample_random=True,
        seed=0,
        sample_with_replacement=True,
        sample_weights=weights,
        cases="0-2",
        epochs=3,
    )
    drawn = np.concatenate(list(epochs_of(stream).values()))
    assert set(drawn.tolist()) == set(selected(1).tolist())


@pytest.mark.parametrize(
    ("dataset", "selection", "message"),
    [
        (
            "toy",
            "0",
            r"^INVALID_ARGUMENT: cases: Expected a dataset with a 'case' array .* 'toy' has arrays \['image', 'mask', 'weights'\]",
        ),
        (
            "cases",
            "8-10",
            r"^INVALID_ARGUMENT: cases\[0\]: Expected a range first-last with 0 <= first <= last <= 9 .* Got 8-10",
        ),
        ("cases", "1,12", r"^INVALID_ARGUMENT: cases\[1\]: Expected .* Got 12-12"),
        (
            "floaty",
            "1",
            r"^INVALID_ARGUMENT: cases: Expected a 1-D 'case' array of integers. Got dtype float32",
        ),
    ],
)
def test_bad_selections_name_the_field(client, cases, dataset, selection, message):
    with pytest.raises(InvalidArgumentError, match=message):
        next(iter(client.stream(dataset, 4, cases=selection)))
    assert len(next(iter(client.stream("cases", 4, cases="1")))[0]) == 4


def test_requests_the_client_cannot_send_are_refused_by_the_node(client, cases):
    raw = client._nodes[0].calls["StreamBatches"]  # past the client's checks
    requests = [
        ([data_node_pb2.CaseRange(first=3, last=1)], r"cases\[0\]: Expected a range"),
        ([data_node_pb2.CaseRange(first=-1, last=1)], r"cases\[0\]: Expected a range"),
        ([data_node_pb2.CaseRange(first=0, last=0)] * 4097, "cases: Expected at most 4096 ranges"),
    ]
    for ranges, message in requests:
        request = data_node_pb2.StreamRequest(dataset="cases", batch_size=2, epochs=1, cases=ranges)
        with pytest.raises(Exception, match=message) as raised:
            next(raw(request, metadata=()))
        assert raised.value.code().name == "INVALID_ARGUMENT"


def test_a_selection_without_samples_is_refused(node_dir, node, client):
    root, _ = node_dir
    with h5py.File(root / "data" / "gappy.h5", "w") as f:
        f["image"] = np.zeros((4, 2), np.float32)
        f["case"] = np.array([0, 0, 5, 5])
    client.register_dataset(
        "gappy", {key: FileArray("gappy.h5", key) for key in ("image", "case")}, replace=True
    )
    with pytest.raises(
        InvalidArgumentError, match=r"cases: Expected a selection holding samples. Got 1-3"
    ):
        next(iter(client.stream("gappy", 2, cases="1-2,3")))
    assert next(iter(client.stream("gappy", 2, cases="5")))[1].tolist() == [5, 5]


@pytest.mark.parametrize(
    ("selection", "error", "message"),
    [
        ("", ValueError, "Expected cases to hold"),
        ("1-x", ValueError, "Expected cases to hold"),
        ("-3", ValueError, "Expected cases to hold"),
        ("5-2", ValueError, "0 <= first <= last. Got 5-2"),
        (range(0), ValueError, "step 1 and hold a case"),
        (range(0, 10, 2), ValueError, "step 1"),
        ([], ValueError, "Expected cases to hold"),
        (1.5, TypeError, "Expected cases to hold"),
        ([True], TypeError, "Expected cases to hold"),
    ],
)
def test_the_client_checks_selections(client, selection, error, message):
    with pytest.raises(error, match=message):
        client.stream("cases", 2, cases=selection)


def test_the_cli_streams_a_selection(node, cases, tmp_path, capsys):
    out = tmp_path / "indices.txt"
    argv = [
        "stream",
        "--address",
        f"127.0.0.1:{node[1]}",
        "--dataset",
        "cases",
        "--batch-size",
        "4",
    ]
    assert client_main([*argv, "--cases", "0-3,7", "--indices-out", str(out)]) == 0
    np.testing.assert_array_equal(np.loadtxt(out, dtype=np.int64)[:, 1], selected(0, 1, 2, 3, 7))
    assert f"samples={len(selected(0, 1, 2, 3, 7))}" in capsys.readouterr().out
    assert client_main([*argv, "--cases", "3-1"]) == 2
    assert "0 <= first <= last" in capsys.readouterr().err


def test_two_nodes_serve_a_selection_from_a_later_epoch_as_one_does(node_dir, node, client, cases):
    root, _ = node_dir
    # A second node (each node locks its own state dir and output root) serves the same
    # registrations: a copy of the first node's.
    state = root / "state-2"
    state.mkdir()
    shutil.copy(load(root / "node.toml").state_dir / "datasets.json", state)
    environ = {
        "DATA_NODE_NODE__STATE_DIR": str(state),
        "DATA_NODE_NODE__OUTPUT_ROOT": str(root / "outputs-2"),
    }
    second, port = build_server(load(root / "node.toml", environ), "127.0.0.1:0")
    second.start()
    try:
        request = {
            "sample_random": True,
            "seed": 6,
            "epochs": 3,
            "start_epoch": 1,
            "cases": "0-3,7",
        }
        request["augmentation"] = AUGMENT
        one = [
            (stream_position(s), np.array(b[0]))
            for s, b in iterate(client.stream("cases", 3, **request))
        ]
        with DataNodeClient([f"127.0.0.1:{node[1]}", f"127.0.0.1:{port}"]) as both:
            two = [
                (stream_position(s), np.array(b[0]))
                for s, b in iterate(both.stream("cases", 3, **request))
            ]
        assert one[0][0][:2] == (1, 0)  # the first batch of epoch 1
        assert len(one) == len(two) == 2 * -(-len(selected(0, 1, 2, 3, 7)) // 3)
        for (position, image), (want_position, want_image) in zip(two, one, strict=True):
            assert position == want_position
            np.testing.assert_array_equal(image, want_image)
    finally:
        second.stop(None)


def iterate(stream):
    with stream:
        for batch in stream:
            yield stream, batch


def stream_position(stream):
    return stream.epoch, stream.batch_index, tuple(stream.indices.tolist())

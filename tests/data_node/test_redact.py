"""PathRedactor: what a client reads names no server path and carries no traceback.

Matrix: paths under each root (quoted, bare, the root alone, through a symlink) become
relative; other absolute paths become <server path>; RPC names, URLs, fractions and relative
paths stay; a worker's traceback is cut off.
"""

from __future__ import annotations

import pytest

from data_node.redact import HIDDEN_PATH, PathRedactor


@pytest.fixture
def redact(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "outputs").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    return PathRedactor([tmp_path / "link", tmp_path / "outputs"])


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "chunkfile {root}/data/b.bcolz/data/__3.blp not found",
            "chunkfile b.bcolz/data/__3.blp not found",
        ),
        ("HDF5 file '{root}/data/toy.h5' changed", "HDF5 file 'toy.h5' changed"),
        ("in {root}/link/x.h5: bad", "in x.h5: bad"),
        ("root is {root}/data.", f"root is {HIDDEN_PATH}"),
        ("root is '{root}/data'", "root is '.'"),
        ("wrote {root}/outputs/cut/patches.h5", "wrote cut/patches.h5"),
        (
            "library /usr/lib/python3/site-packages/h5py/x.py failed",
            f"library {HIDDEN_PATH} failed",
        ),
        (
            "no /data_wire.v1.DataNode/SubmitBuildJob for role read",
            "no /data_wire.v1.DataNode/SubmitBuildJob for role read",
        ),
        (
            "scheduler tcp://127.0.0.1:1/x and rows 4/8, a/b/c",
            "scheduler tcp://127.0.0.1:1/x and rows 4/8, a/b/c",
        ),
        (
            'A worker process raised ValueError: x\n\nWorker traceback:\n  File "/srv/a.py", line 3',
            "A worker process raised ValueError: x (traceback in the node's log)",
        ),
    ],
)
def test_messages_for_clients(redact, tmp_path, message, expected):
    assert redact(message.format(root=tmp_path)) == expected

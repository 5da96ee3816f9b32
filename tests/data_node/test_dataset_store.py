"""The registered datasets' file and the registry over it, without a server.

Matrix: entries round-trip (paths stored relative to their root, the innermost of nested
roots; resolved again under roots that moved); a failed write (os.replace raising, as a
crash before the rename) leaves the old file whole, no temporary file, and the registry
unchanged (nothing served, nothing persisted); a source outside every root, a file that is
not JSON or of another version, and an entry naming an unknown root are errors naming the
file; an entry whose path escapes its root by now is PathOutsideRootError; watchers of a
retired dataset are called once, at once if it is already retired.
"""

from __future__ import annotations

import json
import os
import threading

import h5py
import numpy as np
import pytest

from data_node.catalog.dataset_store import FILE_NAME, DatasetStore
from data_node.catalog.datasets import DatasetRegistry
from data_node.config import ArrayConfig, DatasetConfig, SourceConfig
from data_node.errors import ConfigError, PathOutsideRootError


@pytest.fixture
def roots(tmp_path):
    data = tmp_path / "data"
    outputs = data / "outputs"  # nested inside the data root
    outputs.mkdir(parents=True)
    for path in (data / "a.h5", outputs / "b.h5"):
        with h5py.File(path, "w") as f:
            f["x"] = np.arange(4.0)
    return {"data_root": data.resolve(), "output_root": outputs.resolve()}


def h5_config(name, *paths):
    sources = tuple(SourceConfig(path, "hdf5", "x") for path in paths)
    return DatasetConfig(name, (ArrayConfig("x", sources),), class_list=(1,) * len(paths))


def test_entries_round_trip_relative_to_their_innermost_root(tmp_path, roots):
    store = DatasetStore(tmp_path / "state", roots)
    config = h5_config("d", roots["data_root"] / "a.h5", roots["output_root"] / "b.h5")
    entry = store.dump_entry(config)
    assert [s["root"] for s in entry["arrays"][0]["sources"]] == ["data_root", "output_root"]
    assert [s["path"] for s in entry["arrays"][0]["sources"]] == ["a.h5", "b.h5"]
    store.save([entry])
    (loaded,) = store.load()
    assert store.parse_entry(loaded) == config
    moved = {key: root.parent / "elsewhere" for key, root in roots.items()}
    relocated = DatasetStore(tmp_path / "state", moved).parse_entry(loaded)
    assert relocated.arrays[0].sources[0].path == (moved["data_root"] / "a.h5").resolve()


def test_a_failed_write_leaves_the_old_file_and_the_registry_unchanged(
    tmp_path, roots, monkeypatch
):
    store = DatasetStore(tmp_path / "state", roots)
    store.save([])
    before = store.path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    registry = DatasetRegistry(store=store)
    config = DatasetConfig(
        "kept", (ArrayConfig("x", (SourceConfig(roots["data_root"] / "a.h5", "hdf5", "x"),)),)
    )
    with pytest.raises(OSError, match="disk full"):
        registry.register(config)
    assert store.path.read_bytes() == before
    assert os.listdir(store.path.parent) == [FILE_NAME]
    assert list(registry) == []


def test_bad_files_and_entries_are_named(tmp_path, roots):
    store = DatasetStore(tmp_path / "state", roots)
    with pytest.raises(ConfigError, match="Expected every source inside one of"):
        store.dump_entry(h5_config("d", tmp_path / "outside.h5"))
    store.path.parent.mkdir()
    store.path.write_text("{not json")
    with pytest.raises(ConfigError, match=f"{FILE_NAME}: Expected the node's registered"):
        store.load()
    store.path.write_text(json.dumps({"version": 99, "datasets": []}))
    with pytest.raises(ConfigError, match=r"Expected a registry of version 1\. Got 99"):
        store.load()
    entry = {"name": "d", "class_list": None, "maxlen": None}
    source = {"root": "nowhere", "path": "a.h5", "format": "hdf5", "key": "x"}
    entry["arrays"] = [{"name": "x", "sources": [source]}]
    with pytest.raises(ConfigError, match="Expected a source root among"):
        store.parse_entry(entry)
    source.update(root="data_root", path="../../escape.h5")
    with pytest.raises(PathOutsideRootError, match="data_root source: Expected a path inside"):
        store.parse_entry(entry)
    with pytest.raises(ConfigError, match="Expected entries of name, arrays"):
        store.parse_entry({"name": "d"})


def test_watchers_are_called_once_when_their_dataset_is_retired(roots):
    registry = DatasetRegistry()
    config = DatasetConfig(
        "d", (ArrayConfig("x", (SourceConfig(roots["data_root"] / "a.h5", "hdf5", "x"),)),)
    )
    first = registry.register(config)
    retired = threading.Event()
    calls = []
    with registry.serving(first, lambda: calls.append("first")):
        registry.register(config, replace=True)
        assert calls == ["first"]
        assert not registry.is_served(first)
    with registry.serving(first, retired.set):  # already retired: called at once
        assert retired.is_set()
    second = registry.get("d")
    with registry.serving(second, lambda: calls.append("second")):
        pass
    registry.remove("d")  # left the block: not called
    assert calls == ["first"]

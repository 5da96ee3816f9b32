"""Opening configured datasets: formats, combination, labels, length checks, lookup.

Matrix: hdf5 / zarr / bcolz single sources; two sources with class_list (label array) and
maxlen; arrays whose per-source lengths differ; a source that cannot be opened; registry
lookup with a did-you-mean; the opened views pickle (worker processes receive them);
replacing a dataset holds its name (lookups wait), retires the old one and drops its chunks.
"""

from __future__ import annotations

import pickle
import threading

import bcolz
import h5py
import numpy as np
import pytest
import zarr

from data_node.catalog.datasets import DatasetRegistry, open_dataset, wire_dtype
from data_node.config import ArrayConfig, DatasetConfig, SourceConfig
from data_node.errors import ConfigError, DatasetNotFoundError
from data_tools.chunk_cache import ChunkCache


@pytest.fixture
def sources(tmp_path, rng):
    image_a = rng.random((5, 1, 4, 4)).astype(np.float32)
    image_b = rng.random((3, 1, 4, 4)).astype(np.float32)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["image"] = image_a
        f["mask"] = (image_a > 0.5).astype(np.uint8)
    group = zarr.open_group(str(tmp_path / "b.zarr"), mode="w")
    group.create_array("image", data=image_b)
    bcolz.carray(
        (image_b > 0.5).astype(np.uint8), rootdir=str(tmp_path / "b_mask.bcolz"), mode="w"
    ).flush()
    return tmp_path, image_a, image_b


def source(path, fmt, key=None):
    return SourceConfig(path=path, format=fmt, key=key)


def test_two_sources_with_classes(sources):
    root, image_a, image_b = sources
    config = DatasetConfig(
        name="toy",
        arrays=(
            ArrayConfig(
                "image",
                (source(root / "a.h5", "hdf5", "image"), source(root / "b.zarr", "zarr", "image")),
            ),
            ArrayConfig(
                "mask",
                (source(root / "a.h5", "hdf5", "mask"), source(root / "b_mask.bcolz", "bcolz")),
            ),
        ),
        class_list=(3, 7),
    )
    dataset = open_dataset(config)
    assert dataset.array_names == ("image", "mask", "label")
    assert dataset.length == 8
    assert dataset.classes == (3, 7)
    np.testing.assert_array_equal(dataset.array("image")[:], np.concatenate([image_a, image_b]))
    np.testing.assert_array_equal(
        dataset.array("mask")[:], np.concatenate([image_a > 0.5, image_b > 0.5]).astype(np.uint8)
    )
    np.testing.assert_array_equal(dataset.array("label"), [3] * 5 + [7] * 3)
    with pytest.raises(KeyError):
        dataset.array("nope")
    clone = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(clone.array("image")[[7, 0]], dataset.array("image")[[7, 0]])


def test_maxlen_caps_each_source(sources):
    root, image_a, image_b = sources
    config = DatasetConfig(
        name="toy",
        arrays=(
            ArrayConfig(
                "image",
                (source(root / "a.h5", "hdf5", "image"), source(root / "b.zarr", "zarr", "image")),
            ),
        ),
        maxlen=2,
    )
    dataset = open_dataset(config)
    assert dataset.length == 4
    np.testing.assert_array_equal(
        dataset.array("image")[:], np.concatenate([image_a[:2], image_b[:2]])
    )


def test_arrays_of_unequal_length_are_refused(sources):
    root, _, _ = sources
    config = DatasetConfig(
        name="toy",
        arrays=(
            ArrayConfig("image", (source(root / "a.h5", "hdf5", "image"),)),
            ArrayConfig("mask", (source(root / "b_mask.bcolz", "bcolz"),)),
        ),
    )
    with pytest.raises(ConfigError, match=r"datasets\.toy\.arrays: .* Got \[3\] for 'mask'"):
        open_dataset(config)


def test_unopenable_source_names_the_key(sources):
    root, _, _ = sources
    config = DatasetConfig(
        name="toy", arrays=(ArrayConfig("image", (source(root / "a.h5", "hdf5", "nope"),)),)
    )
    with pytest.raises(ConfigError, match=r"datasets\.toy\.arrays\.image\[0\]: cannot open"):
        open_dataset(config)


def test_registry_lookup(sources):
    root, _, _ = sources
    config = DatasetConfig(
        name="brains", arrays=(ArrayConfig("image", (source(root / "a.h5", "hdf5", "image"),)),)
    )
    registry = DatasetRegistry.from_config({"brains": config})
    assert registry.get("brains").length == 5
    assert [d.name for d in registry] == ["brains"]
    with pytest.raises(DatasetNotFoundError, match="Did you mean 'brains'"):
        registry.get("brain")


def test_replacing_holds_the_name_and_retires_the_old_dataset(sources):
    root, _, _ = sources
    config = DatasetConfig(
        name="brains", arrays=(ArrayConfig("image", (source(root / "b.zarr", "zarr", "image"),)),)
    )
    cache = ChunkCache(1 << 20)
    registry = DatasetRegistry.from_config({}, cache)
    registry.register(config)
    old = registry.get("brains")
    old.array("image")[:]
    assert old.cache_keys
    assert cache.stats().nbytes > 0
    got = []
    with registry.replacing("brains", retire=True):
        assert old.replaced.is_set()
        assert cache.stats().nbytes == 0  # its chunks dropped
        lookup = threading.Thread(target=lambda: got.append(registry.get("brains")))
        lookup.start()
        lookup.join(0.2)
        assert lookup.is_alive()  # waits while the name is held
        new = registry.register(config, replace=True)
    lookup.join(5)
    assert len(got) == 1
    assert got[0] is new
    assert not new.replaced.is_set()
    assert registry.get("brains") is new


def test_dtypes_the_wire_cannot_carry_are_refused(tmp_path):
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["complex"] = np.zeros(3, dtype=np.complex64)
        f["big"] = np.zeros(3, dtype=">f4")
    bad = DatasetConfig(
        name="c", arrays=(ArrayConfig("z", (source(tmp_path / "c.h5", "hdf5", "complex"),)),)
    )
    with pytest.raises(ConfigError, match=r"datasets\.c\.arrays\.z: Expected a dtype the wire"):
        open_dataset(bad)
    big = DatasetConfig(
        name="b", arrays=(ArrayConfig("x", (source(tmp_path / "c.h5", "hdf5", "big"),)),)
    )
    assert wire_dtype(open_dataset(big).array("x").dtype) == "<f4"

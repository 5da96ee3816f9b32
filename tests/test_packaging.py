"""The distribution installs its four packages, each typed, each with a sorted ``__all__``."""

from __future__ import annotations

import importlib
import importlib.resources

import pytest

PACKAGES = ["data_tools", "data_node", "data_client", "data_wire"]
PUBLIC_MODULES = [
    "data_tools",
    "data_tools.errors",
    "data_tools.io",
    "data_tools.wrap",
    "data_tools.patches",
    "data_tools.data_augmentation",
    "data_tools.chunk_cache",
    "data_tools.parsing",
    "data_tools.storage",
    "data_tools.storage.base",
    "data_tools.storage.bcolz",
    "data_tools.storage.confine",
    "data_tools.storage.hdf5",
    "data_tools.storage.numpy",
    "data_tools.storage.sitk",
    "data_tools.storage.zarr",
    "data_client",
    "data_client.client",
    "data_client.errors",
    "data_client.jobs",
    "data_node.config",
    "data_node.jobs.manager",
    "data_node.server",
    "data_node.streaming.streams",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_package_imports_and_is_typed(name):
    module = importlib.import_module(name)
    assert importlib.resources.files(module).joinpath("py.typed").is_file()


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_sorted_and_resolves(name):
    module = importlib.import_module(name)
    names = module.__all__
    # ruff's RUF022 order: CONSTANTS, then Classes, then functions, each alphabetical.
    kinds = [(0 if n.isupper() else 1 if n[:1].isupper() else 2, n) for n in names]
    assert kinds == sorted(kinds)
    assert len(set(names)) == len(names)
    for public in names:
        assert hasattr(module, public), f"{name}.__all__ names {public!r} but it is missing"

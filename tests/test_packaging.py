"""The distribution: its four packages, its dependencies and extras, and the Makefile's installs.

Matrix: each package imports and is typed; each public module's ``__all__`` is sorted and
resolves. The base dependencies (the light install, ``pip install data-tools``) hold the
reference README's requirements and the wire's; every third-party module our packages import
comes from a base dependency, except torch (extra ``torch``, in the torch adapter) and Dask
(extra ``dask``, in build jobs); the extras are exactly torch, dask and dev, and dev holds the
other two. ``make demo`` installs the base only; ``make test`` adds the dev extra and runs every
check (what ``.ci/run`` runs), from a checkout without ``.venv``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.resources
import sys
import tomllib
from pathlib import Path

import pytest
from make_support import make_dry_run
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# The reference README's "Requires" (numpy, scipy, SimpleITK, h5py, bcolz; bcolz as its
# maintained fork bcolz-zipline), and what the wire needs (issue 17: zarr, grpcio, protobuf).
REFERENCE_REQUIREMENTS = ["numpy", "scipy", "SimpleITK", "h5py", "bcolz-zipline"]
WIRE_REQUIREMENTS = ["zarr", "grpcio", "protobuf"]
# Third-party modules of an extra, and where alone they may be imported: torch (extra torch)
# by the torch adapter, Dask's distributed (extra dask) by the node's build jobs.
EXTRA_IMPORTS = {
    "torch": "client/data_client/torch_adapter.py",
    "distributed": "server/data_node/",
}
WHEEL_PACKAGES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"][
    "targets"
]["wheel"]["packages"]
OUR_PACKAGES = {"data_tools", "data_node", "data_client", "data_wire"}

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


def requirement_names(requirements):
    return {canonicalize_name(Requirement(r).name) for r in requirements}


BASE = requirement_names(PROJECT["dependencies"])


def test_the_base_dependencies_hold_the_reference_and_the_wire_requirements():
    expected = requirement_names(REFERENCE_REQUIREMENTS + WIRE_REQUIREMENTS)
    assert expected <= BASE, sorted(expected - BASE)
    assert not {"torch", "dask", "distributed"} & BASE  # the heavy ones stay in extras


def test_the_extras_are_torch_dask_and_dev():
    extras = PROJECT["optional-dependencies"]
    assert set(extras) == {"torch", "dask", "dev"}
    assert requirement_names(extras["torch"]) == {"torch"}
    assert requirement_names(extras["dask"]) == {"dask"}
    (itself,) = [Requirement(r) for r in extras["dev"] if Requirement(r).name == "data-tools"]
    assert itself.extras == {"torch", "dask"}
    assert "kubernetes-validate" in requirement_names(extras["dev"])  # deploy/ validation


def third_party_imports():
    """{top-level module: [file importing it, ...]} over every module of our four packages."""
    found: dict[str, list[str]] = {}
    for package in WHEEL_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top not in sys.stdlib_module_names and top not in OUR_PACKAGES:
                        found.setdefault(top, []).append(str(path.relative_to(ROOT)))
    return found


def test_every_import_comes_from_a_base_dependency_or_its_extra():
    distributions = importlib.metadata.packages_distributions()
    imports = third_party_imports()
    assert {"numpy", "grpc", "SimpleITK", "cv2", "torch"} <= set(imports)  # the scan works
    for module, files in imports.items():
        if module in EXTRA_IMPORTS:
            assert all(f.startswith(EXTRA_IMPORTS[module]) for f in files), (module, files)
            continue
        providers = {canonicalize_name(d) for d in distributions.get(module, [])}
        assert providers & BASE, f"{module} (imported by {files[0]}) is no base dependency"


def test_make_demo_installs_no_extra(tmp_path):
    lines = make_dry_run("demo", tmp_path / ".venv")
    installs = [line for line in lines if " pip install " in line and "--upgrade pip" not in line]
    assert [line.split()[-1] for line in installs] == ["."]
    assert lines[0].endswith(f"-m venv {tmp_path / '.venv'}")
    assert lines[-1].endswith("-m data_node.demo")


def test_make_test_installs_the_dev_extra_and_runs_every_check(tmp_path):
    lines = make_dry_run("test", tmp_path / ".venv")
    installs = [line.split()[-1] for line in lines if " pip install --quiet -e " in line]
    assert installs == [".", "'.[dev]'"]
    commands = [line.split("/")[-1] for line in lines if "/.venv/bin/" in line]
    for check in ("ruff check .", "ruff format --check .", "mypy", "lint-imports", "pytest"):
        assert check in commands, commands
    assert (ROOT / ".ci" / "run").read_text().splitlines()[-1] == "exec make test"

"""The import-linter contracts in pyproject.toml hold, and the node's list of private modules is whole.

Matrix: lint-imports over the tree (every contract kept) x the "data_node imports only public
data_tools modules" contract naming exactly the private modules of data_tools (import-linter
has no wildcard for a leading underscore, so a private module added later must be listed);
the class name DataNodeError defined once across the client, the node and the library.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import data_client
import data_node
import data_tools
from data_client.errors import DataNodeError

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = "data_node imports only public data_tools modules"


def _contract(name):
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    return next(contract for contract in contracts if contract["name"] == name)


def test_the_node_contract_lists_every_private_data_tools_module():
    private = sorted(
        module.name
        for module in pkgutil.walk_packages(data_tools.__path__, "data_tools.")
        if any(part.startswith("_") for part in module.name.split(".")[1:])
    )
    contract = _contract(CONTRACT)
    assert contract["source_modules"] == ["data_node"]
    assert sorted(contract["forbidden_modules"]) == private


def test_every_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{CONTRACT} KEPT" in result.stdout


def test_one_class_is_named_data_node_error():
    """The client's failed call; the node's refusal is data_node.errors.NodeError."""
    found = [
        f"{package.__name__}/{path.relative_to(Path(package.__path__[0])).as_posix()}"
        for package in (data_client, data_node, data_tools)
        for path in sorted(Path(package.__path__[0]).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.ClassDef) and node.name == "DataNodeError"
    ]
    assert found == ["data_client/errors.py"]
    assert data_client.DataNodeError is DataNodeError

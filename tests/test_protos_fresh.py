"""The checked-in generated code equals what protos/generate.py produces now.

Matrix: every generated file (*_pb2.py, *_pb2.pyi, *_pb2_grpc.py) of every .proto.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "protos" / "data_wire" / "v1"


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "protos_generate", ROOT / "protos" / "generate.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path):
    _load_generator().generate(tmp_path)
    fresh = sorted(p.name for p in (tmp_path / "data_wire" / "v1").iterdir())
    checked_in = sorted(p.name for p in GENERATED.glob("*_pb2*"))
    assert fresh == checked_in, "run `python protos/generate.py` and commit the result"
    for name in fresh:
        expected = (tmp_path / "data_wire" / "v1" / name).read_bytes()
        assert (GENERATED / name).read_bytes() == expected, (
            f"{name} is stale: run `python protos/generate.py` and commit the result"
        )


def test_every_proto_file_is_generated():
    protos = sorted(p.stem for p in GENERATED.glob("*.proto"))
    assert protos == ["data_node", "jobs", "tensor"]
    for stem in protos:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert (GENERATED / f"{stem}{suffix}").is_file()

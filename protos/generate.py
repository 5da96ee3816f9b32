"""Generate the Python code of the wire contract from protos/data_wire/v1/*.proto.

Run ``python protos/generate.py`` after editing a .proto file and commit the result.
``tests/test_protos_fresh.py`` fails when the checked-in code is stale. The generator
is grpcio-tools, pinned in the ``dev`` extra so the output is reproducible.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_PACKAGE = Path("data_wire") / "v1"


def proto_files() -> list[Path]:
    """The .proto files of the contract, relative to protos/, sorted."""
    return sorted(p.relative_to(PROTO_ROOT) for p in (PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))


def generate(out_dir: Path) -> None:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto file under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=PROTO_ROOT, help="output root (default: protos/)"
    )
    generate(parser.parse_args(argv).out)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Count the module-to-module calls a batch takes from disk to trainer (not a benchmark).

Serves tests/node_support's toy dataset from an in-process node, streams it with the real
client, and records the call stacks (our modules only, consecutive frames of one module
collapsed) at five points of a batch's path:

- read: an io thread reading the HDF5 file (h5py's Dataset.__getitem__);
- consume: the stream taking the batch from data_flow (its ``flow_with_info`` iterator);
- encode: the stream encoding the batch (data_node.wire);
- decode: the client decoding the message (data_client._decode, on gRPC's thread);
- deliver: the trainer's next() asking gRPC for the message.

A hop is a call from one of our modules into another; the two hand-offs between the
stacks (the io threads' queue, the gRPC wire) are counted apart. Run:

    .venv/bin/python benchmarks/trace_hops.py
"""

from __future__ import annotations

import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from node_support import make_data, write_config

from data_client import DataNodeClient
from data_node.config import load
from data_node.server import build_server

if TYPE_CHECKING:
    from types import FrameType

OURS = ("data_tools", "data_node", "data_client")
SHOWN = (*OURS, "h5py", "grpc", "__main__")
POINTS = ("read", "consume", "encode", "decode", "deliver")


def module_of(frame: FrameType | None) -> str:
    return "" if frame is None else str(frame.f_globals.get("__name__", "?"))


def stack_of(frame: FrameType | None) -> tuple[str, ...]:
    modules = []
    while frame is not None:
        modules.append(module_of(frame))
        frame = frame.f_back
    collapsed: list[str] = []
    for module in reversed(modules):
        if not module.startswith(SHOWN):
            continue
        if module.startswith(("h5py", "grpc")):
            module = module.split(".")[0]
        if not collapsed or collapsed[-1] != module:
            collapsed.append(module)
    return tuple(collapsed)


def point_of(frame: FrameType) -> str | None:
    module, name = module_of(frame), frame.f_code.co_name
    caller = module_of(frame.f_back)
    if name == "__getitem__" and frame.f_code.co_filename.endswith("h5py/_hl/dataset.py"):
        return "read"
    if name == "flow_with_info" and caller.startswith("data_node"):
        return "consume"
    if module == "data_node.wire" and name != "<module>":
        return "encode"
    if module == "data_client._decode" and name != "<module>":
        return "decode"
    if module.startswith("grpc") and name == "__next__" and caller.startswith("data_client"):
        return "deliver"
    return None


def main() -> None:
    stacks: dict[str, set[tuple[str, ...]]] = {point: set() for point in POINTS}

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            point = point_of(frame)
            if point is not None:
                stacks[point].add(stack_of(frame))

    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            make_data(root)
            node, port = build_server(load(write_config(root)), "127.0.0.1:0")
            node.start()
            try:
                with DataNodeClient(f"127.0.0.1:{port}") as client:
                    for _ in client.stream("toy", batch_size=8, nb_io_workers=1):
                        pass
            finally:
                node.stop(None)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    total = 0
    for point in POINTS:
        longest = max(sorted(stacks[point]), key=len, default=())
        hops = max(0, sum(module.startswith(OURS) for module in longest) - 1)
        total += hops
        print(f"{point:8s} {hops} hops: {' -> '.join(longest)}")
    print(f"total    {total} hops + 2 hand-offs (the io threads' queue, the gRPC wire)")


if __name__ == "__main__":
    main()

"""``data-client datasets|describe|register|remove``: what a node serves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from data_client.cli._arguments import add_command, say, say_each
from data_client.cli.connection import add_connection_arguments, connect
from data_client.jobs import FileArray

if TYPE_CHECKING:
    import argparse

    from data_client.client import DatasetInfo

__all__ = ["add_dataset_commands"]


def add_dataset_commands(commands: Any) -> None:
    """Add ``datasets``, ``describe``, ``register`` and ``remove`` to ``commands``."""
    datasets = add_command(
        commands,
        "datasets",
        "list the node's datasets, one line each",
        "  data-client datasets --address node:50051\n"
        "  data-client datasets --address node-a:50051 --ca ca.pem --token-env DATA_TOKEN",
    )
    add_connection_arguments(datasets)
    datasets.set_defaults(run=_datasets)

    describe = add_command(
        commands,
        "describe",
        "show one dataset: its length, arrays (dtype, shape) and classes",
        "  data-client describe brains --address node:50051",
    )
    describe.add_argument("dataset", help="the dataset's name on the node")
    add_connection_arguments(describe)
    describe.set_defaults(run=_describe)

    register = add_command(
        commands,
        "register",
        "serve files under the node's data root as a dataset, at once (needs the build role)",
        "  data-client register scans --array image=scans.h5:image --array mask=scans.h5:mask\n"
        "  data-client register scans --array image=a.h5:image --array image=b.zarr --replace",
        "--array NAME=PATH[:KEY] names a file under the node's data root (KEY: the HDF5 or\n"
        "zarr array path); a NAME repeated adds a source to that array.",
    )
    register.add_argument("dataset", help="the dataset's name")
    add_connection_arguments(register)
    register.add_argument(
        "--array",
        action="append",
        required=True,
        metavar="NAME=PATH[:KEY]",
        help="an array's source under the data root; repeat (a NAME again adds a source)",
    )
    register.add_argument("--class-list", type=int, nargs="+", help="one class per source")
    register.add_argument("--maxlen", type=int, help="at most this many samples per source")
    register.add_argument("--replace", action="store_true", help="replace a registered one")
    register.set_defaults(run=_register)

    remove = add_command(
        commands,
        "remove",
        "stop serving a registered dataset; its files stay (needs the build role)",
        "  data-client remove scans --address node:50051",
    )
    remove.add_argument("dataset", help="the dataset's name")
    add_connection_arguments(remove)
    remove.set_defaults(run=_remove)


def describe_dataset(info: DatasetInfo) -> str:
    """One line: name, length, each array's dtype and sample shape, and the classes."""
    arrays = ", ".join(f"{a.name} {a.dtype} {a.shape[1:]}" for a in info.arrays)
    classes = f"; classes {list(info.classes)}" if info.classes else ""
    return f"{info.name}: {info.length} samples; {arrays}{classes}"


def _datasets(args: argparse.Namespace) -> int:
    with connect(args) as client:
        found = client.datasets()
    say_each([describe_dataset(info) for info in found], "the node serves no dataset")
    return 0


def _describe(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.describe(args.dataset)
    say(f"{info.name}: {info.length} samples")
    for array in info.arrays:
        say(f"  {array.name}: {array.dtype} {array.shape}")
    if info.classes:
        say(f"  classes: {list(info.classes)}")
    return 0


def _register(args: argparse.Namespace) -> int:
    arrays: dict[str, list[FileArray]] = {}
    for spec in args.array:
        name, sep, source = spec.partition("=")
        if not sep or not name or not source:
            raise ValueError(f"--array: Expected NAME=PATH[:KEY]. Got {spec!r} instead.")
        path, _, key = source.partition(":")
        arrays.setdefault(name, []).append(FileArray(path, key))
    with connect(args) as client:
        info = client.register_dataset(
            args.dataset,
            arrays,
            class_list=args.class_list,
            maxlen=args.maxlen,
            replace=args.replace,
        )
    say(f"registered {describe_dataset(info)}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.remove_dataset(args.dataset)
    say(f"removed {args.dataset}" if info is None else f"removed {describe_dataset(info)}")
    return 0

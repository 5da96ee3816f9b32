"""The ``data-node`` command: ``serve`` a config, check a node's ``health``, run build jobs.

``data-node demo-data DIR`` writes the demo dataset (``DIR/disks.h5``: noisy images of disks
and their masks, arrays ``image`` and ``mask``) that ``docker/node.toml`` serves as ``disks``;
an existing file is kept unless ``--overwrite`` is given.

Build jobs (over the node's RPCs, with ``data_client``)::

    data-node build --address HOST:PORT --output NAME --patchsize 32 \
        --volume brain.h5:/image --mask brain.h5:/mask --class_list 0 1   # watches: a bar
    data-node import --address HOST:PORT --output NAME --register-as NAME \
        --case a.nii.gz,a_seg.nii.gz --case b.nii.gz,b_seg.nii.gz --orientation RAS \
        --spacing 1 1 --size 128 128 --normalize zscore     # medical cases -> 2D slices
    data-node jobs --address HOST:PORT                     # one line per job
    data-node watch JOB_ID --address HOST:PORT
    data-node cancel JOB_ID --address HOST:PORT

Datasets served without a restart (persisted in the node's state dir; see RegisterDataset)::

    data-node register NAME --address HOST:PORT --array image=cases.h5:image \
        --array mask=cases.h5:mask [--class_list 0 1] [--maxlen N] [--replace]
    data-node remove NAME --address HOST:PORT

``--array NAME=PATH[:KEY]`` names a file under the node's data root (KEY: the HDF5 or zarr
array path); repeat a NAME to combine several sources into one array.

Against a node with ``[tls]`` or ``[auth]``, every command but ``serve`` takes ``--ca
CA.pem`` (TLS; ``--tls`` alone trusts gRPC's bundled roots), ``--cert C.pem --key C.key``
(mutual TLS) and ``--token_file FILE`` (the first word of its first line that is not blank
or a ``#`` comment is the bearer token; ``health`` sends none). ``build`` takes SubmitBuildJobRequest's fields as flags of the same names. An input is
``--volume PATH[:KEY]`` (a file under the node's data root; KEY is the HDF5 or zarr array
path) or ``--volume_dataset DATASET:ARRAY`` (an array of a served dataset); likewise
``--mask`` / ``--mask_dataset``. ``import`` takes ImportCases' fields as flags; each
``--case IMAGE[,LABEL]`` is one case, IMAGE and LABEL each ``PATH[:KEY]`` under the data
root. ``build``, ``import`` and ``watch`` exit 0 when the job succeeds, 1 when it fails or
is cancelled, 2 when the node refuses the request.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2

from data_client import DataNodeClient, DataNodeError, DatasetInfo, TlsConfig
from data_client.jobs import CaseInput, DatasetArray, FileArray, JobInfo, JobState
from data_node.config import EXECUTORS, load
from data_node.errors import ConfigError, PathOutsideRootError
from data_tools._parse import parse_non_negative_int, parse_positive_int
from data_wire.defaults import DEFAULT_ADDRESS

if TYPE_CHECKING:
    from data_client.jobs import BuildJob

__all__ = ["main"]

_DEMO_FILE = "disks.h5"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="data-node", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve the datasets of a config file")
    serve_parser.add_argument("--config", type=Path, required=True, help="the node's TOML file")
    serve_parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    health_parser = commands.add_parser(
        "health", help="exit 0 if the node at --address reports SERVING"
    )
    _add_connection_arguments(health_parser)
    health_parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    _add_build_parser(commands)
    _add_registry_parsers(commands)
    _add_import_parser(commands)
    _add_demo_data_parser(commands)
    jobs_parser = commands.add_parser("jobs", help="list the node's build jobs")
    _add_connection_arguments(jobs_parser)
    for name, text in (
        ("watch", "show a job's progress until it ends"),
        ("cancel", "cancel a job"),
    ):
        job_parser = commands.add_parser(name, help=text)
        job_parser.add_argument("job_id", help="the job's id (see `data-node jobs`)")
        _add_connection_arguments(job_parser)
    return parser


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help="host:port")
    parser.add_argument("--ca", type=Path, help="PEM CA bundle to verify the node with (TLS)")
    parser.add_argument("--cert", type=Path, help="client certificate (PEM), for mutual TLS")
    parser.add_argument("--key", type=Path, help="the client certificate's key (PEM)")
    parser.add_argument("--tls", action="store_true", help="TLS even without --ca or --cert")
    parser.add_argument(
        "--token-file",
        "--token_file",
        type=Path,
        help="file holding the token: the first word of its first line that is not a # comment",
    )


def _client(args: argparse.Namespace, timeout: float | None = 30.0) -> DataNodeClient:
    """A client of ``args.address`` with the TLS and token flags of ``args``.

    Raises:
        OSError: A PEM file or the token file cannot be read.
        ValueError: --cert without --key, or the reverse; an empty token file.
    """
    tls = None
    if args.tls or args.ca or args.cert or args.key:
        tls = TlsConfig(ca=args.ca, cert=args.cert, key=args.key)
    token = None
    if args.token_file is not None and args.command != "health":  # health needs no token
        token = _read_token(args.token_file)
    return DataNodeClient(args.address, token, tls, timeout=timeout)


def _read_token(path: Path) -> str:
    """The first word of the first line of ``path`` that is neither blank nor a # comment."""
    for line in path.read_text().splitlines():
        words = line.split()
        if words and not words[0].startswith("#"):
            return words[0]
    raise ValueError(f"--token-file: Expected a token. {str(path)!r} holds none.")


def _add_build_parser(commands: Any) -> None:
    build = commands.add_parser("build", help="submit a patch-dataset build job and watch it")
    _add_connection_arguments(build)
    build.add_argument("--output", required=True, help="output name under the output root")
    build.add_argument("--patchsize", type=int, required=True, help="patch edge, in pixels")
    for name in ("volume", "mask"):
        group = build.add_mutually_exclusive_group(required=name == "volume")
        group.add_argument(f"--{name}", metavar="PATH[:KEY]", help="a file under the data root")
        group.add_argument(
            f"--{name}-dataset",
            f"--{name}_dataset",
            metavar="DATASET:ARRAY",
            help="an array of a served dataset",
        )
    build.add_argument(
        "--class-list", "--class_list", type=int, nargs="+", help="mask values to extract"
    )
    build.add_argument(
        "--random-order",
        "--random_order",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="randomize each class's patch order (default: yes)",
    )
    build.add_argument("--batchsize", type=int, default=32, help="patches per write (32)")
    build.add_argument(
        "--max-patches-per-class",
        "--max_patches_per_class",
        type=int,
        help="at most this many per class",
    )
    build.add_argument(
        "--file-format", "--file_format", default="hdf5", help="hdf5 (default), zarr or bcolz"
    )
    build.add_argument(
        "--writer-options", "--writer_options", type=json.loads, help="a JSON object"
    )
    build.add_argument(
        "--register-as", "--register_as", help="serve the result as a dataset of this name"
    )
    build.add_argument("--overwrite", action="store_true", help="replace an existing output")
    build.add_argument(
        "--slice-axis", "--slice_axis", type=int, default=-1, help="axis of the slices (-1)"
    )
    build.add_argument(
        "--store-masks",
        "--store_masks",
        action="store_true",
        help="also store each patch's mask patch (needs --mask)",
    )
    build.add_argument("--seed", type=int, help="seed of the random choices")
    build.add_argument("--executor", choices=EXECUTORS, help="default: the node's")
    build.add_argument(
        "--scheduler-address", "--scheduler_address", help="Dask scheduler; default: the node's"
    )
    build.add_argument("--detach", action="store_true", help="print the job id and exit")


def _add_registry_parsers(commands: Any) -> None:
    register = commands.add_parser("register", help="serve files as a dataset, at once")
    register.add_argument("name", help="the dataset's name")
    _add_connection_arguments(register)
    register.add_argument(
        "--array",
        action="append",
        required=True,
        metavar="NAME=PATH[:KEY]",
        help="an array's source under the data root; repeat (a NAME again adds a source)",
    )
    register.add_argument(
        "--class-list", "--class_list", type=int, nargs="+", help="one class per source"
    )
    register.add_argument("--maxlen", type=int, help="at most this many samples per source")
    register.add_argument("--replace", action="store_true", help="replace a registered one")
    remove = commands.add_parser("remove", help="stop serving a registered dataset")
    remove.add_argument("name", help="the dataset's name")
    _add_connection_arguments(remove)


def _register(args: argparse.Namespace) -> int:
    arrays: dict[str, list[FileArray]] = {}
    for spec in args.array:
        name, sep, source = spec.partition("=")
        if not sep or not name or not source:
            raise ValueError(f"--array: Expected NAME=PATH[:KEY]. Got {spec!r} instead.")
        path, _, key = source.partition(":")
        arrays.setdefault(name, []).append(FileArray(path, key))
    with _client(args) as client:
        info = client.register_dataset(
            args.name, arrays, class_list=args.class_list, maxlen=args.maxlen, replace=args.replace
        )
    print(f"registered {_describe_dataset(info)}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.remove_dataset(args.name)
    print(f"removed {args.name!r}" if info is None else f"removed {_describe_dataset(info)}")
    return 0


def _describe_dataset(info: DatasetInfo) -> str:
    arrays = ", ".join(f"{a.name} {a.dtype} {a.shape[1:]}" for a in info.arrays)
    return f"{info.name!r}: {info.length} samples; {arrays}"


def _add_import_parser(commands: Any) -> None:
    command = commands.add_parser(
        "import", help="submit an import of medical cases (2D slices) and watch it"
    )
    _add_connection_arguments(command)
    command.add_argument("--output", required=True, help="output name under the output root")
    command.add_argument(
        "--case",
        dest="cases",
        action="append",
        required=True,
        metavar="IMAGE[,LABEL]",
        help="one case: image and optional label, each PATH[:KEY] under the data root",
    )
    command.add_argument(
        "--slice-axis", "--slice_axis", type=int, help="axis of the (z, y, x) arrays (0)"
    )
    command.add_argument("--orientation", help="reorient every case, e.g. RAS or LPS")
    command.add_argument(
        "--spacing", type=float, nargs=2, metavar=("ROWS", "COLS"), help="in-plane spacing"
    )
    command.add_argument("--size", type=int, nargs=2, metavar=("ROWS", "COLS"), help="slice size")
    command.add_argument("--clip", type=float, nargs=2, metavar=("LOW", "HIGH"), help="clip")
    command.add_argument("--normalize", help="none (default), zscore, minmax or window")
    command.add_argument(
        "--keep-unlabelled",
        "--keep_unlabelled",
        type=float,
        help="fraction of the slices without labels kept (1)",
    )
    command.add_argument(
        "--label-values", "--label_values", type=int, nargs="+", help="the labels cases may hold"
    )
    command.add_argument(
        "--file-format", "--file_format", default="hdf5", help="hdf5 (default) or zarr"
    )
    command.add_argument("--batchsize", type=int, default=32, help="slices per write (32)")
    command.add_argument(
        "--writer-options", "--writer_options", type=json.loads, help="a JSON object"
    )
    command.add_argument(
        "--register-as", "--register_as", help="serve the result as a dataset of this name"
    )
    command.add_argument("--overwrite", action="store_true", help="replace an existing output")
    command.add_argument("--seed", type=int, help="seed of the keep_unlabelled draw")
    command.add_argument("--detach", action="store_true", help="print the job id and exit")


def _add_demo_data_parser(commands: Any) -> None:
    demo = commands.add_parser("demo-data", help=f"write the demo dataset DIR/{_DEMO_FILE}")
    demo.add_argument("directory", type=Path, help="where to write it (created if missing)")
    demo.add_argument("--images", type=int, default=512, help="number of images (512)")
    demo.add_argument("--size", type=int, default=128, help="image edge, in pixels (128)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated data (0)")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing file")


def _demo_data(args: argparse.Namespace) -> int:
    """Write ``disks.h5`` into ``args.directory`` unless it exists (or with --overwrite).

    The file is written under a temporary name and renamed, so a node never opens half of it.
    """
    from data_node.demo import make_disks  # imported here for the reason given in main()

    images = parse_positive_int("--images", args.images)
    size = parse_positive_int("--size", args.size)
    seed = parse_non_negative_int("--seed", args.seed)
    path = args.directory / _DEMO_FILE
    if path.exists() and not args.overwrite:
        print(f"{path} exists; kept it (--overwrite replaces it)")
        return 0
    args.directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{_DEMO_FILE}.partial")
    make_disks(partial, images, size, seed)
    partial.replace(path)
    print(f"wrote {path}: {images} images of {size}x{size} (arrays image and mask)")
    return 0


def _array_input(path: str | None, dataset: str | None) -> FileArray | DatasetArray | None:
    if dataset is not None:
        name, _, array = dataset.partition(":")
        return DatasetArray(name, array)
    return None if path is None else _file_input(path)


def _file_input(text: str) -> FileArray:
    """``PATH[:KEY]`` as a FileArray."""
    file, _, key = text.partition(":")
    return FileArray(file, key)


def _build(args: argparse.Namespace) -> int:
    volume = _array_input(args.volume, args.volume_dataset)
    assert volume is not None  # argparse requires one
    with _client(args) as client:
        job = client.submit_build(
            args.output,
            args.patchsize,
            volume,
            _array_input(args.mask, args.mask_dataset),
            args.class_list,
            args.random_order,
            args.batchsize,
            args.file_format,
            args.writer_options,
            max_patches_per_class=args.max_patches_per_class,
            register_as=args.register_as,
            overwrite=args.overwrite,
            slice_axis=args.slice_axis,
            seed=args.seed,
            executor=args.executor,
            scheduler_address=args.scheduler_address,
            store_masks=args.store_masks,
        )
        return _follow(job, detach=args.detach)


def _import(args: argparse.Namespace) -> int:
    cases = []
    for text in args.cases:
        image, _, label = text.partition(",")
        cases.append(CaseInput(_file_input(image), _file_input(label) if label else None))
    with _client(args) as client:
        job = client.submit_import(
            args.output,
            cases,
            slice_axis=args.slice_axis,
            orientation=args.orientation,
            spacing=args.spacing,
            size=args.size,
            clip=args.clip,
            normalize=args.normalize,
            keep_unlabelled=args.keep_unlabelled,
            label_values=args.label_values,
            file_format=args.file_format,
            batchsize=args.batchsize,
            writer_options=args.writer_options,
            register_as=args.register_as,
            overwrite=args.overwrite,
            seed=args.seed,
        )
        return _follow(job, detach=args.detach)


def _follow(job: BuildJob, *, detach: bool) -> int:
    """Print the job's id, then (unless ``detach``) wait for it with a progress bar."""
    print(f"job {job.job_id} submitted")
    return 0 if detach else _wait(job)


def _wait(job: BuildJob) -> int:
    info = job.wait(progress=True)
    print(_describe(info))
    return 0 if info.state is JobState.SUCCEEDED else 1


def _describe(info: JobInfo) -> str:
    counts = " ".join(f"class_{c.value}={c.written}/{c.total}" for c in info.classes)
    if info.cases:
        done = sum(case.done for case in info.cases)
        kept = sum(case.kept for case in info.cases)
        counts = f"cases={done}/{len(info.cases)} slices={kept}"
    line = (
        f"{info.job_id} {info.state.value:<9} {info.fraction_done:6.1%} "
        f"{info.elapsed_seconds:7.1f}s output={info.output!r} {counts}"
    )
    return f"{line} error={info.error!r}" if info.error else line


def _jobs_command(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.command == "jobs":
            for info in client.jobs():
                print(_describe(info))
            return 0
        job = client.job(args.job_id)
        if args.command == "watch":
            return _wait(job)
        print(_describe(job.cancel()))
        return 0


def _health(args: argparse.Namespace) -> int:
    address = args.address
    with _client(args, args.timeout) as client:
        check = client.channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            response = check(health_pb2.HealthCheckRequest(service=""), timeout=args.timeout)
        except grpc.RpcError as error:
            print(f"{address}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{address}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command != "serve":
        try:
            if args.command == "health":
                return _health(args)
            if args.command == "demo-data":
                return _demo_data(args)
            if args.command in ("register", "remove"):
                return _register(args) if args.command == "register" else _remove(args)
            if args.command == "import":
                return _import(args)
            return _build(args) if args.command == "build" else _jobs_command(args)
        except (DataNodeError, TypeError, ValueError, OSError) as error:
            print(f"data-node {args.command}: {error}", file=sys.stderr)
            return 2
    # Imported here, not at the top: the image's HEALTHCHECK runs `data-node health` every few
    # seconds, and the server's imports (the whole library, h5py, zarr) would triple its cost.
    from data_node.server import serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        config = load(args.config, os.environ)
        serve(config)
    except (ConfigError, PathOutsideRootError, RuntimeError) as error:
        # RuntimeError: the address cannot be bound, or the TLS certificate and key differ.
        print(f"data-node: cannot serve {str(args.config)!r}: {error}", file=sys.stderr)
        return 2
    return 0

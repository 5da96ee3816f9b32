"""``data-client build|import|jobs|watch|cancel``: build jobs on the node.

A job is named by its id or by any prefix of it that no other job shares (the 8 characters
the progress bar shows are enough in practice). A job lives on the node that accepted it:
given several nodes, ``jobs`` lists every node's (each line ending with node=ADDRESS), and
``watch``/``cancel`` look for the job on every node and act on the one that has it.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import TYPE_CHECKING, Any

from data_client.cli._arguments import add_command, json_object, say, say_each
from data_client.cli.connection import add_connection_arguments, connect, node_addresses
from data_client.cli.exits import FAILED, OK, Interrupted
from data_client.errors import DataNodeError, UnavailableError
from data_client.jobs import CaseInput, DatasetArray, FileArray, JobState

if TYPE_CHECKING:
    from collections.abc import Callable

    from data_client.client import DataNodeClient
    from data_client.jobs import BuildJob, JobInfo

__all__ = ["add_job_commands"]

_EXECUTORS = ("dask", "local")

_BUILD_DETAILS = """\
Takes SubmitBuildJobRequest's fields as flags of the same names (batchsize: --batch-size,
as in stream). An input is --volume PATH[:KEY] (a file under the node's data root; KEY is
the HDF5 or zarr array path) or --volume-dataset DATASET:ARRAY (an array of a served
dataset); likewise --mask and --mask-dataset. Without --detach it prints the job id on
stderr, shows a progress bar until the job ends and prints the job's line; with --detach it
prints only the job id."""

_IMPORT_DETAILS = """\
Takes ImportCases' fields as flags; each --case IMAGE[,LABEL] is one case, IMAGE and LABEL
each PATH[:KEY] under the node's data root. Waits as build does (or --detach)."""


def add_job_commands(commands: Any) -> None:
    """Add ``build``, ``import``, ``jobs``, ``watch`` and ``cancel`` to ``commands``."""
    _add_build(commands)
    _add_import(commands)
    jobs = add_command(
        commands,
        "jobs",
        "list the node(s)' jobs, one line each: id, state, progress, seconds, output, counts",
        "  data-client jobs --address node:50051 --token-file build.token\n"
        "  data-client jobs --address node-a:50051 --address node-b:50051",
        "With several --address, every node's jobs, each line ending with node=ADDRESS; a\n"
        "node that fails is reported after the others' jobs (exit 1).",
    )
    add_connection_arguments(jobs)
    jobs.set_defaults(run=_jobs)
    for name, summary, run in (
        ("watch", "show a job's progress until it ends", _watch),
        ("cancel", "cancel a queued or running job; prints it once stopped", _cancel),
    ):
        command = add_command(
            commands,
            name,
            summary,
            f"  data-client {name} 3f2a9c1e --address node:50051\n"
            f"  data-client {name} 3f2a9c1e5b7d4e0f8a6c2b1d9e7f5a3c",
            "JOB is the job's id or a prefix of it that names one job. With several --address,\n"
            "the job is looked for on every node and the command acts on the node that has it.",
        )
        command.add_argument("job", metavar="JOB", help="the job's id, or a unique prefix of it")
        add_connection_arguments(command)
        command.set_defaults(run=run)


def _add_build(commands: Any) -> None:
    build = add_command(
        commands,
        "build",
        "submit a patch-dataset build job and watch it",
        "  data-client build --output patches --patchsize 32 --volume brain.h5:image "
        "--mask brain.h5:mask --class-list 0 1\n"
        "  data-client build --output patches --patchsize 32 --volume-dataset brains:image "
        "--register-as brain_patches\n"
        "  J=$(data-client build --output patches --patchsize 32 --volume b.h5:image --detach)",
        _BUILD_DETAILS,
    )
    add_connection_arguments(build)
    build.add_argument("--output", required=True, help="output name under the output root")
    build.add_argument("--patchsize", type=int, required=True, help="patch edge, in pixels")
    for name in ("volume", "mask"):
        group = build.add_mutually_exclusive_group(required=name == "volume")
        group.add_argument(f"--{name}", metavar="PATH[:KEY]", help="a file under the data root")
        group.add_argument(
            f"--{name}-dataset", metavar="DATASET:ARRAY", help="an array of a served dataset"
        )
    build.add_argument("--class-list", type=int, nargs="+", help="mask values to extract")
    build.add_argument(
        "--random-order",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="randomize each class's patch order (default: yes)",
    )
    build.add_argument("--batch-size", type=int, default=32, help="patches per write (32)")
    build.add_argument("--max-patches-per-class", type=int, help="at most this many per class")
    build.add_argument("--file-format", default="hdf5", help="hdf5 (default), zarr or bcolz")
    build.add_argument("--writer-options", type=json_object, help="a JSON object")
    build.add_argument("--register-as", help="serve the result as a dataset of this name")
    build.add_argument("--overwrite", action="store_true", help="replace an existing output")
    build.add_argument("--slice-axis", type=int, default=-1, help="axis of the slices (-1)")
    build.add_argument(
        "--store-masks", action="store_true", help="also store each patch's mask patch"
    )
    build.add_argument("--seed", type=int, help="seed of the random choices")
    build.add_argument("--executor", choices=_EXECUTORS, help="default: the node's")
    build.add_argument("--scheduler-address", help="Dask scheduler; default: the node's")
    build.add_argument("--detach", action="store_true", help="print only the job id and exit")
    build.set_defaults(run=_build)


def _add_import(commands: Any) -> None:
    command = add_command(
        commands,
        "import",
        "submit an import of medical cases (2D slices) and watch it",
        "  data-client import --output ct --register-as ct --case a.nii.gz,a_seg.nii.gz "
        "--case b.nii.gz,b_seg.nii.gz\n"
        "  data-client import --output ct --case a.nii.gz --orientation RAS --spacing 1 1 "
        "--size 128 128 --normalize zscore --detach",
        _IMPORT_DETAILS,
    )
    add_connection_arguments(command)
    command.add_argument("--output", required=True, help="output name under the output root")
    command.add_argument(
        "--case",
        dest="cases",
        action="append",
        required=True,
        metavar="IMAGE[,LABEL]",
        help="one case: image and optional label, each PATH[:KEY] under the data root",
    )
    command.add_argument("--slice-axis", type=int, help="axis of the (z, y, x) arrays (0)")
    command.add_argument("--orientation", help="reorient every case, e.g. RAS or LPS")
    command.add_argument(
        "--spacing", type=float, nargs=2, metavar=("ROWS", "COLS"), help="in-plane spacing"
    )
    command.add_argument("--size", type=int, nargs=2, metavar=("ROWS", "COLS"), help="slice size")
    command.add_argument("--clip", type=float, nargs=2, metavar=("LOW", "HIGH"), help="clip")
    command.add_argument("--normalize", help="none (default), zscore, minmax or window")
    command.add_argument(
        "--keep-unlabelled", type=float, help="fraction of the slices without labels kept (1)"
    )
    command.add_argument("--label-values", type=int, nargs="+", help="the labels cases may hold")
    command.add_argument("--file-format", default="hdf5", help="hdf5 (default) or zarr")
    command.add_argument("--batch-size", type=int, default=32, help="slices per write (32)")
    command.add_argument("--writer-options", type=json_object, help="a JSON object")
    command.add_argument("--register-as", help="serve the result as a dataset of this name")
    command.add_argument("--overwrite", action="store_true", help="replace an existing output")
    command.add_argument("--seed", type=int, help="seed of the keep_unlabelled draw")
    command.add_argument("--detach", action="store_true", help="print only the job id and exit")
    command.set_defaults(run=_import)


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
    with connect(args) as client:
        return _submit_and_follow(
            lambda: client.submit_build(
                args.output,
                args.patchsize,
                volume,
                _array_input(args.mask, args.mask_dataset),
                args.class_list,
                args.random_order,
                args.batch_size,
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
            ),
            detach=args.detach,
        )


def _import(args: argparse.Namespace) -> int:
    cases = []
    for text in args.cases:
        image, _, label = text.partition(",")
        cases.append(CaseInput(_file_input(image), _file_input(label) if label else None))
    with connect(args) as client:
        return _submit_and_follow(
            lambda: client.submit_import(
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
                batchsize=args.batch_size,
                writer_options=args.writer_options,
                register_as=args.register_as,
                overwrite=args.overwrite,
                seed=args.seed,
            ),
            detach=args.detach,
        )


def _submit_and_follow(submit: Callable[[], BuildJob], *, detach: bool) -> int:
    """Submit with ``submit()``; print the job's id (alone with ``detach``), else wait for it."""
    try:
        job = submit()
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted before the node answered; the job may have been queued "
            "(data-client jobs lists it)"
        ) from None
    if detach:
        say(job.job_id)
        return OK
    return _wait(job, announce=True)


def _wait(job: BuildJob, *, announce: bool = False) -> int:
    """Wait for ``job`` with a progress bar (``announce``: say its id on stderr first); a
    Ctrl-C says that it keeps running and how to cancel it."""
    try:
        if announce:
            print(f"job {job.job_id} submitted", file=sys.stderr, flush=True)
        info = job.wait(progress=True)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted; job {job.job_id} keeps running on the node "
            f"(data-client cancel {job.job_id[:8]})"
        ) from None
    say(_describe(info))
    return OK if info.state is JobState.SUCCEEDED else FAILED


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


def _node_clients(args: argparse.Namespace, stack: contextlib.ExitStack) -> list[DataNodeClient]:
    """A client per node the flags name: a job lives on the node that accepted it."""
    return [
        stack.enter_context(connect(args, addresses=[address])) for address in node_addresses(args)
    ]


def _jobs(args: argparse.Namespace) -> int:
    """Every node's jobs (each line ends with node=ADDRESS when there are several nodes).

    A node that fails is reported after the others' jobs are listed (exit 1).
    """
    failure: DataNodeError | None = None
    lines = []
    with contextlib.ExitStack() as stack:
        clients = _node_clients(args, stack)
        for client in clients:
            try:
                found = client.jobs()
            except DataNodeError as error:
                failure = failure or error
                continue
            node = f" node={client.addresses[0]}" if len(clients) > 1 else ""
            lines += [_describe(info) + node for info in found]
    if failure is not None:
        for line in lines:
            say(line)
        raise failure
    say_each(lines, "the node has no jobs" if len(clients) == 1 else "the nodes have no jobs")
    return OK


def _find_job(clients: list[DataNodeClient], text: str) -> BuildJob:
    """The job whose id is ``text`` or the only one starting with it, on the node that has it.

    Raises:
        ValueError: Several jobs' ids start with ``text`` (the message names them and, with
            several nodes, their nodes).
        NotFoundError: No job's id does (the first node's answer to the id as given).
        UnavailableError: No job's id does on the nodes that answered, and a node did not.
    """
    matches: list[tuple[str, DataNodeClient]] = []
    unavailable: UnavailableError | None = None
    for client in clients if text else ():
        try:
            ids = [info.job_id for info in client.jobs()]
        except UnavailableError as error:
            if len(clients) == 1:
                raise
            unavailable = error
            continue
        matches += [(job_id, client) for job_id in ids if job_id.startswith(text)]
    matches = [match for match in matches if match[0] == text] or matches
    if len(matches) > 1:
        named = [
            job_id if len(clients) == 1 else f"{job_id} (node {client.addresses[0]})"
            for job_id, client in matches
        ]
        raise ValueError(
            f"JOB: Expected an id prefix that names one job. {len(matches)} jobs start with "
            f"{text!r}: {', '.join(named)}."
        )
    if matches:
        job_id, client = matches[0]
        return client.job(job_id)
    if unavailable is not None:
        raise unavailable
    job = clients[0].job(text)
    job.status()  # the node's NOT_FOUND, before a progress bar is drawn
    return job


def _watch(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        return _wait(_find_job(_node_clients(args, stack), args.job))


def _cancel(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        job = _find_job(_node_clients(args, stack), args.job)
        try:
            info = job.cancel()
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted; the node may still cancel job {job.job_id} (data-client watch "
                f"{job.job_id[:8]})"
            ) from None
    say(_describe(info))
    return OK

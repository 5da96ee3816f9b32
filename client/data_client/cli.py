"""The ``data-client`` command: list a node's datasets, stream one, or preview its samples.

Usage::

    data-client datasets --address HOST:PORT
    data-client preview --address HOST:PORT --dataset NAME --out grid.png --samples 8 \\
        --seed 0 --epoch 0 --shuffle --cases 0-79 \\
        --augment '{"x_array": "image", "y_array": "mask", "rotation_range": 15}'
    data-client stream --address HOST:PORT --dataset NAME --batch-size 32 --epochs 1 \\
        --rank 0 --world-size 2 --seed 0 --shuffle --report-every 10 [--cases 0-79,90]

``stream`` prints a line every ``--report-every`` batches and one at the end of each epoch
(batches/s, samples/s and MB/s over that stretch), then one summary line of ``key=value``
fields: ``rank world_size epochs batches samples distinct bytes seconds batches/s samples/s
MB/s stall_s stall_fraction``, where ``distinct`` counts the different global sample indices
received, ``stall_s`` is the time spent waiting for data and ``stall_fraction`` its share of
the time streamed. ``--indices-out FILE`` writes one line ``EPOCH INDEX`` per sample
received, in order: with ``--world-size W`` and one ``--seed``, the W ranks' files hold
disjoint parts of every epoch whose union is the epoch.

``preview`` writes a PNG grid of the first ``--samples`` samples of epoch ``--epoch`` of
the stream those arguments open (``--augment`` is ``stream(augment=...)`` as JSON), each
augmented image beside its original with the mask drawn over both in colour (see
``DataNodeClient.preview``), and prints the file's path.

``--address`` may be given several times: the nodes share the work of the stream (see
``DataNodeClient``). With ``--resolve`` each address is a DNS name standing for every address
it resolves to (a headless Kubernetes service, or a scaled compose service).

Against a node with ``[auth]``, ``--token-env VAR`` names the environment variable holding
the bearer token; with ``[tls]``, ``--ca PEM`` verifies the node (``--tls`` alone trusts
gRPC's bundled roots).

Exit status: 0 on success; 1 when the node refuses the request or cannot be reached (the
message names the gRPC status); 2 for invalid arguments; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from data_client._requests import CODECS
from data_client.client import DataNodeClient
from data_client.errors import DataNodeError
from data_client.nodes import resolve_nodes
from data_wire.defaults import DEFAULT_ADDRESS

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

    from data_client.client import BatchStream
    from data_client.merge import MultiNodeStream

__all__ = ["main"]

_CODECS = tuple(sorted(CODECS))
_SHARING = ("independent", "partitioned")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="data-client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    datasets = commands.add_parser("datasets", help="list the node's datasets")
    _add_connection_arguments(datasets)
    stream = commands.add_parser("stream", help="stream a dataset and print the throughput")
    _add_connection_arguments(stream)
    stream.add_argument("--dataset", required=True, help="the dataset's name on the node")
    stream.add_argument("--batch-size", type=int, required=True, help="samples per batch")
    stream.add_argument("--epochs", type=int, default=1, help="number of epochs (default 1)")
    stream.add_argument("--shuffle", action="store_true", help="random order within epochs")
    stream.add_argument("--seed", type=int, help="sample order seed (default: the node's)")
    stream.add_argument("--rank", type=int, default=0, help="this trainer's rank (default 0)")
    stream.add_argument("--world-size", type=int, default=1, help="number of ranks (default 1)")
    stream.add_argument(
        "--sharing",
        choices=_SHARING,
        help="default: partitioned when --world-size > 1, else independent",
    )
    stream.add_argument("--codec", choices=_CODECS, default="none", help="wire encoding")
    _add_cases_argument(stream)
    stream.add_argument(
        "--max-reconnects",
        type=int,
        default=20,
        help="reconnects to an unavailable node before giving up (default 20: about 25 s)",
    )
    stream.add_argument(
        "--report-every",
        type=_count,
        default=0,
        help="print the throughput every N batches (default 0: once per epoch)",
    )
    stream.add_argument(
        "--indices-out", type=Path, help="write 'EPOCH INDEX' per sample received to this file"
    )
    _add_preview_parser(commands)
    return parser


def _add_preview_parser(commands: Any) -> None:
    preview = commands.add_parser(
        "preview", help="write a PNG grid of augmented samples beside their originals"
    )
    _add_connection_arguments(preview)
    preview.add_argument("--dataset", required=True, help="the dataset's name on the node")
    preview.add_argument("--out", type=Path, required=True, help="the PNG file to write")
    preview.add_argument("--samples", type=int, default=8, help="samples shown (default 8)")
    preview.add_argument("--seed", type=int, help="the stream's seed (default: drawn)")
    preview.add_argument("--epoch", type=int, default=0, help="the epoch shown (default 0)")
    preview.add_argument("--shuffle", action="store_true", help="random order within epochs")
    _add_cases_argument(preview)
    preview.add_argument(
        "--augment", type=_json_object, help="stream(augment=...) as a JSON object"
    )
    preview.add_argument("--image-array", help="the array shown (default: x_array or image)")
    preview.add_argument("--mask-array", help="the array drawn over it (default: y_array or mask)")
    preview.add_argument("--columns", type=int, default=4, help="pairs per row (default 4)")
    preview.add_argument("--scale", type=int, help="pixels per sample pixel (default: auto)")


def _json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(
            f"Expected a JSON object. Got {text!r} ({error})."
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"Expected a JSON object. Got {text!r} instead.")
    return value


def _add_cases_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cases",
        help="only these cases of the dataset's 'case' array, e.g. 0-79,90 (default: all)",
    )


def _count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"Expected an integer >= 0. Got {text!r} instead.")
    return value


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        action="append",
        help=f"a node's host:port; repeat for several nodes (default {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--resolve", action="store_true", help="read from every address of each --address name"
    )
    parser.add_argument("--token-env", metavar="VAR", help="environment variable with the token")
    parser.add_argument("--ca", type=Path, help="PEM CA bundle to verify the node with (TLS)")
    parser.add_argument("--tls", action="store_true", help="TLS with gRPC's bundled roots")


def _addresses(args: argparse.Namespace) -> list[str]:
    """The node addresses of ``args``, each name resolved to its addresses with --resolve.

    Raises:
        OSError: With --resolve, a name does not resolve.
        ValueError: An address is not host:port (--resolve), or one is repeated.
    """
    addresses: list[str] = args.address or [DEFAULT_ADDRESS]
    if args.resolve:
        addresses = [address for name in addresses for address in resolve_nodes(name)]
    return addresses


def _client(args: argparse.Namespace) -> DataNodeClient:
    """A client of the nodes of ``args`` with its token and TLS.

    Raises:
        ValueError: ``--token-env`` names a variable that is unset or empty; see _addresses.
        OSError: The ``--ca`` file cannot be read; see _addresses.
    """
    token = None
    if args.token_env is not None:
        token = os.environ.get(args.token_env)
        if not token:
            raise ValueError(
                f"--token-env: Expected the environment variable {args.token_env} to hold the "
                "node's bearer token. It is unset or empty."
            )
    tls: Path | bool | None = args.ca if args.ca is not None else args.tls
    return DataNodeClient(_addresses(args), token, tls)


def _datasets(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for info in client.datasets():
            arrays = ", ".join(f"{a.name} {a.dtype} {a.shape[1:]}" for a in info.arrays)
            classes = f"; classes {list(info.classes)}" if info.classes else ""
            _say(f"{info.name}: {info.length} samples; {arrays}{classes}")
    return 0


@dataclass
class _Meter:
    """Batches, samples and bytes received since ``start`` (a ``time.perf_counter()``)."""

    start: float
    batches: int = 0
    samples: int = 0
    num_bytes: int = 0

    def add(self, samples: int, num_bytes: int) -> None:
        self.batches += 1
        self.samples += samples
        self.num_bytes += num_bytes

    def describe(self, end: float) -> str:
        seconds = max(end - self.start, 1e-9)
        return (
            f"{self.batches} batches, {self.samples} samples in {seconds:.2f} s: "
            f"{self.batches / seconds:.1f} batches/s, {self.samples / seconds:.1f} samples/s, "
            f"{self.num_bytes / seconds / 1e6:.1f} MB/s"
        )


class _Progress:
    """What one stream has delivered: totals, the current epoch and the current report interval."""

    def __init__(self, report_every: int) -> None:
        self.report_every = report_every
        self.start = self.last = time.perf_counter()
        self.epoch: int | None = None
        self.epochs = 0
        self.seen = np.zeros(0, dtype=bool)  # seen[i]: sample i was received
        self.total = _Meter(self.start)
        self.in_epoch = _Meter(self.start)
        self.interval = _Meter(self.start)

    def add(self, epoch: int, indices: npt.NDArray[np.int64], num_bytes: int) -> None:
        """Count one batch of ``epoch`` received now; print the reports it completes."""
        now = time.perf_counter()
        if epoch != self.epoch:
            self.end_epoch()
            self.epoch, self.epochs = epoch, self.epochs + 1
            # An epoch's time starts when the previous batch arrived: its first wait counts.
            self.in_epoch = _Meter(self.last)
        for meter in (self.total, self.in_epoch, self.interval):
            meter.add(len(indices), num_bytes)
        if len(indices) and indices.max() >= len(self.seen):
            grown = np.zeros(max(int(indices.max()) + 1, 2 * len(self.seen)), dtype=bool)
            grown[: len(self.seen)] = self.seen
            self.seen = grown
        self.seen[indices] = True
        self.last = now
        if self.report_every and self.total.batches % self.report_every == 0:
            _say(f"epoch {epoch} batch {self.total.batches}: {self.interval.describe(now)}")
            self.interval = _Meter(now)

    def end_epoch(self) -> None:
        """Print the line of the epoch in progress, if any."""
        if self.epoch is not None:
            _say(f"epoch {self.epoch} done: {self.in_epoch.describe(self.last)}")

    def summary(self, stream: BatchStream | MultiNodeStream, args: argparse.Namespace) -> str:
        total = self.total
        seconds = max(self.last - self.start, 1e-9)
        return (
            f"summary: rank={args.rank} world_size={args.world_size} epochs={self.epochs} "
            f"batches={total.batches} samples={total.samples} distinct={np.count_nonzero(self.seen)} "
            f"bytes={total.num_bytes} seconds={seconds:.3f} "
            f"batches/s={total.batches / seconds:.1f} samples/s={total.samples / seconds:.1f} "
            f"MB/s={total.num_bytes / seconds / 1e6:.1f} stall_s={stream.stall:.3f} "
            f"stall_fraction={stream.stall_fraction:.3f}"
        )


def _stream(args: argparse.Namespace) -> int:
    with _client(args) as client, contextlib.ExitStack() as files:
        stream = client.stream(
            args.dataset,
            args.batch_size,
            shuffle=args.shuffle,
            seed=args.seed,
            epochs=args.epochs,
            rank=args.rank,
            world_size=args.world_size,
            sharing=args.sharing,
            codec=args.codec,
            max_reconnects=args.max_reconnects,
            cases=args.cases,
        )
        indices_out: TextIO | None = None
        if args.indices_out is not None:
            indices_out = files.enter_context(args.indices_out.open("w"))
        _say(
            f"streaming {args.dataset!r} from {', '.join(client.addresses)}: rank {args.rank} of "
            f"{args.world_size}, batch size {args.batch_size}, {args.epochs} epoch(s)"
        )
        progress = _Progress(args.report_every)
        with stream:
            for arrays in stream:
                indices, epoch = stream.indices, stream.epoch
                # Both are set with every batch.
                assert indices is not None
                assert epoch is not None
                progress.add(epoch, indices, sum(array.nbytes for array in arrays))
                if indices_out is not None:
                    np.savetxt(
                        indices_out,
                        np.column_stack((np.full_like(indices, epoch), indices)),
                        fmt="%d",
                    )
        progress.end_epoch()
        _say(progress.summary(stream, args))
    return 0


def _preview(args: argparse.Namespace) -> int:
    with _client(args) as client:
        shown = client.preview(
            args.dataset,
            args.out,
            args.samples,
            shuffle=args.shuffle,
            seed=args.seed,
            epoch=args.epoch,
            augment=args.augment,
            cases=args.cases,
            image_array=args.image_array,
            mask_array=args.mask_array,
            columns=args.columns,
            scale=args.scale,
        )
    _say(
        f"wrote a preview of {len(shown.indices)} samples of {args.dataset!r} (epoch "
        f"{shown.epoch}, seed {shown.seed}) to {shown.path}"
    )
    return 0


def _say(line: str) -> None:
    # Flushed per line: in a container stdout is a pipe, and the lines are the progress.
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits 2 for bad arguments)."""
    args = _parser().parse_args(argv)
    try:
        command = {"stream": _stream, "preview": _preview, "datasets": _datasets}[args.command]
        return command(args)
    except DataNodeError as error:
        print(f"data-client {args.command}: {error}", file=sys.stderr)
        return 1
    except (TypeError, ValueError, OSError) as error:
        print(f"data-client {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

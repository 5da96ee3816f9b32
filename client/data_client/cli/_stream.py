"""``data-client stream|preview``: stream a dataset and report the throughput, or look at it."""

from __future__ import annotations

import contextlib
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from data_client._requests import CODECS
from data_client.cli._arguments import add_command, count, json_object, say
from data_client.cli.connection import add_connection_arguments, connect
from data_client.cli.exits import Interrupted

if TYPE_CHECKING:
    import argparse

    import numpy.typing as npt

    from data_client._stream_base import StreamBase

__all__ = ["SUMMARY_FIELDS", "add_stream_commands"]

_CODECS = tuple(sorted(CODECS))
_SHARING = ("independent", "partitioned")

# The summary line's key=value fields, in order; the help lists them from here.
SUMMARY_FIELDS = (
    "rank", "world_size", "epochs", "batches", "samples", "distinct", "bytes", "seconds",
    "batches/s", "samples/s", "MB/s", "stall_s", "stall_fraction", "decoded_bytes",
    "read_amplification",
)  # fmt: skip

_STREAM_DETAILS = (
    textwrap.fill(
        "Prints a line every --report-every batches and one at the end of each epoch (batches/s, "
        "samples/s and MB/s over that stretch), then one summary line of key=value fields: "
        f"{' '.join(SUMMARY_FIELDS)}. seconds runs from the request to the end of the stream; "
        "stall_s is the part of it spent waiting for data (never more than seconds), "
        "stall_fraction its share; distinct counts the different global sample indices "
        "received; decoded_bytes counts the bytes of storage chunks the node decoded for the "
        "stream, read_amplification those per byte delivered. --indices-out FILE writes one "
        "line 'EPOCH INDEX' per sample received, in order: with --world-size W and one --seed, "
        "the W ranks' files hold disjoint parts of every epoch whose union is the epoch.",
        width=92,
        break_on_hyphens=False,
    )
    + "\n\nReconnects to an unavailable node are reported on stderr with their cause."
)


def add_stream_commands(commands: Any) -> None:
    """Add ``stream`` and ``preview`` to ``commands``."""
    stream = add_command(
        commands,
        "stream",
        "stream a dataset from the node(s) and print the throughput",
        "  data-client stream --dataset brains --batch-size 32 --epochs 2 --sample-random\n"
        "  data-client stream --dataset brains --batch-size 32 --rank 0 --world-size 2 --seed 7\n"
        "  data-client stream --dataset brains --batch-size 16 --nb-proc-workers 2 "
        '--augmentation \'{"x_array": "image", "rotation_range": 15}\'\n'
        "  data-client stream --dataset brains --batch-size 32 --address a:50051 "
        "--address b:50051",
        _STREAM_DETAILS,
    )
    add_connection_arguments(stream)
    stream.add_argument("--dataset", required=True, help="the dataset's name on the node")
    stream.add_argument("--batch-size", type=int, required=True, help="samples per batch")
    stream.add_argument("--epochs", type=int, default=1, help="number of epochs (default 1)")
    stream.add_argument("--loop-forever", action="store_true", help="stream until Ctrl-C")
    _add_sampling_arguments(stream)
    stream.add_argument(
        "--drop-incomplete-batches",
        action="store_true",
        help="drop each epoch's last batch when smaller",
    )
    stream.add_argument("--rank", type=int, default=0, help="this trainer's rank (default 0)")
    stream.add_argument("--world-size", type=int, default=1, help="number of ranks (default 1)")
    stream.add_argument(
        "--sharing",
        choices=_SHARING,
        help="default: partitioned when --world-size > 1, else independent",
    )
    stream.add_argument("--start-epoch", type=int, default=0, help="first epoch (default 0)")
    stream.add_argument(
        "--shuffle-window",
        type=int,
        metavar="SAMPLES",
        help="with --sample-random: shuffle within windows of about SAMPLES samples of whole "
        "storage chunks, each chunk decoded about once per epoch (default: the exact permutation)",
    )
    stream.add_argument("--preprocessor", help="a preprocessor registered in the node's config")
    stream.add_argument(
        "--nb-io-workers",
        type=count,
        default=0,
        metavar="N",
        help="reader threads on the node (default 0)",
    )
    stream.add_argument(
        "--nb-proc-workers",
        type=count,
        metavar="N",
        default=0,
        help="preprocessing processes on the node (default 0; 1 at least with --augmentation "
        "or --preprocessor)",
    )
    stream.add_argument("--codec", choices=_CODECS, default="none", help="wire encoding")
    stream.add_argument(
        "--max-reconnects",
        type=count,
        metavar="N",
        default=20,
        help="reconnects to an unavailable node before giving up (default 20: about 25 s)",
    )
    stream.add_argument(
        "--report-every",
        type=count,
        metavar="N",
        default=0,
        help="print the throughput every N batches (default 0: once per epoch)",
    )
    stream.add_argument(
        "--indices-out",
        type=Path,
        metavar="FILE",
        help="write 'EPOCH INDEX' per sample received to this file",
    )
    stream.set_defaults(run=_stream)

    preview = add_command(
        commands,
        "preview",
        "write a PNG grid of augmented samples beside their originals",
        "  data-client preview --dataset brains --out grid.png\n"
        "  data-client preview --dataset brains --out grid.png --num-samples 16 --seed 0 "
        '--sample-random --augmentation \'{"x_array": "image", "y_array": "mask", '
        '"rotation_range": 15}\'',
        "The first --num-samples samples of epoch --epoch of the stream those arguments open,\n"
        "each augmented image beside its original, the mask drawn over both in colour (see\n"
        "DataNodeClient.preview); prints the file's path.",
    )
    add_connection_arguments(preview)
    preview.add_argument("--dataset", required=True, help="the dataset's name on the node")
    preview.add_argument("--out", type=Path, required=True, help="the PNG file to write")
    preview.add_argument("--num-samples", type=int, default=8, help="samples shown (default 8)")
    preview.add_argument("--epoch", type=int, default=0, help="the epoch shown (default 0)")
    _add_sampling_arguments(preview)
    preview.add_argument("--image-array", help="the array shown (default: x_array or image)")
    preview.add_argument("--mask-array", help="the array drawn over it (default: y_array or mask)")
    preview.add_argument("--columns", type=int, default=4, help="pairs per row (default 4)")
    preview.add_argument("--scale", type=int, help="pixels per sample pixel (default: auto)")
    preview.set_defaults(run=_preview)


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, help="seed of order and augmentation (default: drawn)")
    parser.add_argument("--sample-random", action="store_true", help="random order within epochs")
    parser.add_argument(
        "--sample-with-replacement", action="store_true", help="random sampling with replacement"
    )
    parser.add_argument(
        "--sample-weights", metavar="ARRAY", help="an array of one sampling weight per sample"
    )
    parser.add_argument(
        "--cases", help="only these cases of the dataset's 'case' array, e.g. 0-79,90"
    )
    parser.add_argument(
        "--augmentation",
        type=json_object,
        metavar="JSON",
        help="per-sample augmentation: image_random_transform's arguments with x_array "
        "(and y_array), as a JSON object",
    )


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
    """What one stream has delivered: totals, the current epoch and the current report interval.

    ``start`` is taken before the stream's first ``next()`` and ``end`` after its last, so the
    stream's stall (time inside ``next()``) always lies within the ``seconds`` reported.
    """

    def __init__(self, report_every: int) -> None:
        self.report_every = report_every
        self.start = self.last = self.end = time.perf_counter()
        self.epoch: int | None = None
        self.epochs = 0
        self.seen = np.zeros(0, dtype=bool)  # seen[i]: sample i was received
        self.total = _Meter(self.start)
        self.in_epoch = _Meter(self.start)
        self.interval = _Meter(self.start)

    def add(
        self, epoch: int, batch_index: int, indices: npt.NDArray[np.int64], num_bytes: int
    ) -> None:
        """Count batch ``batch_index`` of ``epoch``, received now; print the reports it ends."""
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
            say(f"epoch {epoch} batch {batch_index + 1}: {self.interval.describe(now)}")
            self.interval = _Meter(now)

    def end_epoch(self) -> None:
        """Print the line of the epoch in progress, if any."""
        if self.epoch is not None:
            say(f"epoch {self.epoch} done: {self.in_epoch.describe(self.last)}")

    def summary(self, rank: int, world_size: int, stream: StreamBase) -> str:
        """The summary line: each of ``SUMMARY_FIELDS`` as key=value."""
        total = self.total
        seconds = max(self.end - self.start, 1e-9)
        values = {
            "rank": rank,
            "world_size": world_size,
            "epochs": self.epochs,
            "batches": total.batches,
            "samples": total.samples,
            "distinct": np.count_nonzero(self.seen),
            "bytes": total.num_bytes,
            "seconds": f"{seconds:.3f}",
            "batches/s": f"{total.batches / seconds:.1f}",
            "samples/s": f"{total.samples / seconds:.1f}",
            "MB/s": f"{total.num_bytes / seconds / 1e6:.1f}",
            "stall_s": f"{stream.stall:.3f}",
            "stall_fraction": f"{stream.stall / seconds:.3f}",
            "decoded_bytes": stream.decoded_bytes,
            "read_amplification": f"{stream.read_amplification:.2f}",
        }
        return "summary: " + " ".join(f"{name}={values[name]}" for name in SUMMARY_FIELDS)


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    """The ``stream()`` and ``preview()`` keywords the sampling flags give."""
    return {
        "seed": args.seed,
        "sample_random": args.sample_random,
        "sample_with_replacement": args.sample_with_replacement,
        "sample_weights": args.sample_weights,
        "cases": args.cases,
        "augmentation": args.augmentation,
    }


def _stream(args: argparse.Namespace) -> int:
    with connect(args) as client, contextlib.ExitStack() as files:
        stream = client.stream(
            args.dataset,
            args.batch_size,
            epochs=args.epochs,
            preprocessor=args.preprocessor,
            rank=args.rank,
            world_size=args.world_size,
            sharing=args.sharing,
            drop_incomplete_batches=args.drop_incomplete_batches,
            loop_forever=args.loop_forever,
            nb_io_workers=args.nb_io_workers,
            nb_proc_workers=args.nb_proc_workers,
            codec=args.codec,
            max_reconnects=args.max_reconnects,
            start_epoch=args.start_epoch,
            shuffle_window=args.shuffle_window,
            **_sampling(args),
        )
        indices_out: TextIO | None = None
        if args.indices_out is not None:
            indices_out = files.enter_context(args.indices_out.open("w"))
        epochs = "until interrupted" if args.loop_forever else f"{args.epochs} epoch(s)"
        say(
            f"streaming {args.dataset!r} from {', '.join(client.addresses)}: rank {args.rank} of "
            f"{args.world_size}, batch size {args.batch_size}, {epochs}"
        )
        progress = _Progress(args.report_every)
        with stream:
            try:
                for arrays in stream:
                    indices, epoch, batch_index = stream.indices, stream.epoch, stream.batch_index
                    # All three are set with every batch.
                    assert indices is not None
                    assert epoch is not None
                    assert batch_index is not None
                    num_bytes = sum(array.nbytes for array in arrays)
                    progress.add(epoch, batch_index, indices, num_bytes)
                    if indices_out is not None:
                        np.savetxt(
                            indices_out,
                            np.column_stack((np.full_like(indices, epoch), indices)),
                            fmt="%d",
                        )
            except KeyboardInterrupt:
                raise Interrupted(
                    "interrupted; the stream is cancelled (the node stops it, nothing keeps "
                    "running)"
                ) from None
            progress.end = time.perf_counter()
        progress.end_epoch()
        say(progress.summary(args.rank, args.world_size, stream))
    return 0


def _preview(args: argparse.Namespace) -> int:
    with connect(args) as client:
        shown = client.preview(
            args.dataset,
            args.out,
            args.num_samples,
            epoch=args.epoch,
            image_array=args.image_array,
            mask_array=args.mask_array,
            columns=args.columns,
            scale=args.scale,
            **_sampling(args),
        )
    say(
        f"wrote a preview of {len(shown.indices)} samples of {args.dataset!r} (epoch "
        f"{shown.epoch}, seed {shown.seed}) to {shown.path}"
    )
    return 0

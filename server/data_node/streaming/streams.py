"""One StreamBatches call: check the request against its dataset and the limits, then stream.

``parse_stream_request`` turns a ``StreamRequest`` into a :class:`StreamPlan` (every field
checked once, errors naming the field): the library's ``FlowSpec`` (sampling, shard, lane,
start, last epoch, workers; and every position: batches per epoch, the cursor after a batch,
an empty lane) plus the transform and the wire options. :func:`stream_batches` runs it with
``data_flow.from_spec`` and yields each batch as encoded ``Batch`` bytes with the cursor after
it.

Windowed shuffle: ``shuffle_window`` asks for the library's chunk-windowed shuffle over the
dataset's storage chunks (``data_tools.io.read_blocks`` of its arrays), so a dataset larger
than the chunk cache is decoded about once per epoch; the window is part of the fingerprint.

Sharing: SHARING_INDEPENDENT trainers each get whole epochs in the order of their own seed;
SHARING_PARTITIONED ranks (one shared seed, required) get disjoint parts of every epoch whose
union is the epoch. A lane (index, count) carries only the batches with ``batch_index % count
== index`` of the trainer's part, so a client can split it across several nodes and merge
the lanes back in (epoch, batch_index) order; a lane with no batch (more lanes than batches
per epoch) is an empty stream that ends OK. A resume cursor at the end of the requested
epochs gets OUT_OF_RANGE rather than an empty stream.

Untrusted values never reach native code in the node's process: every field is checked
against documented bounds at parse time (augmentation: ``augment_request.py``; cursors:
``cursors.py``), and a stream with an augmentation or a preprocessor always runs them in at
least one worker process of the node's warm pool (``nb_proc_workers``, the most of the
pool's workers the stream uses at once, is read as ``limits.max_nb_proc_workers`` when left
0: the whole pool, shared fairly with the other streams), never in the node's threads. A crash in native code (OpenCV, a preprocessor's C extension) then kills one
worker, never the node (see the faults below).

Read amplification: every batch carries the bytes of storage chunks decoded for it
(``Batch.decoded_bytes``: through the chunk cache, what the cache decoded for the stream;
without one, each chunk the batch reads, whole), counted per dataset in the metrics, and
logged for the stream as it ends (one INFO line; no per-stream metric label, as streams are
unbounded in number). An exact shuffle whose own chunks exceed the cache gets one warning.

Shared reads: the streams of a dataset whose sources read through the node's chunk cache
(``Dataset.cached``) run data_flow with ``shared_reads``: with worker processes
(nb_proc_workers > 0), the stream's io threads read every batch in the node's process,
through the cache, and the processes only transform. So N streams of one dataset read and
decompress each storage chunk once while it stays cached, whatever their worker counts,
rather than once per worker process. Without a cache, each process reads its own batches.

Determinism: the sample order is data_flow's pure function of (seed, epoch, rank,
world_size), and a sample's augmentation is drawn from
``np.random.default_rng([seed, epoch, sample_index])``, so a stream, and a stream resumed
from any of its cursors, is bit-identical whatever the worker counts.

Faults end the stream they hit, never the node, and a stream recovers by itself only from
one worker's death (other failures would likely happen again); the client resumes from its
last cursor without losing or repeating a sample once the cause is gone:

* a worker process of the node's pool that dies (killed, out of memory, a crash in native
  code) while it runs a batch: the pool replaces it and runs the batch once more on another
  worker (a batch is a pure function of the plan, epoch and indices: the stream stays
  bit-identical); if that worker dies too, INTERNAL, "Worker process data_tools-proc-N (pid
  P) died unexpectedly (killed by SIGKILL); the flow stopped.", and the stream's shared
  memory is freed;
* a source that cannot be read (a corrupt chunk, a truncated compressed file): INTERNAL
  with the reader's message; a file missing when a worker process opens it:
  FAILED_PRECONDITION naming it; a chunk lost from a zarr array or bcolz carray written
  complete: DATA_LOSS naming it (never fill values); every path named relative to the
  data root (``redact.py``); a ValueError or TypeError once the stream began (from a
  source, the preprocessor, encoding): INTERNAL, never INVALID_ARGUMENT, as the request
  was checked before;
* the call's deadline passing, or the client cancelling or going away: ``stop`` is set
  (by the servicer) and the stream ends within a tenth of a second, even while it waits
  for a batch: it leaves the worker pool (a worker still busy with one of its batches 10 s
  later is killed and replaced), an io thread busy with a batch ends once that batch is done;
* the node stopping: UNAVAILABLE ("the node is stopping"), which the client retries;
* the dataset's files being replaced (a build job overwrote the output it serves):
  FAILED_PRECONDITION; a batch is sent only if it was read completely before the
  replacement began, so a stream never sends rows of a half-replaced output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import operator
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from data_node.config import MiB, resolve_preprocessor
from data_node.errors import (
    CursorAtEndError,
    DatasetRemovedError,
    LimitExceededError,
    NodeStoppingError,
    RequestError,
    StreamFailedError,
)
from data_node.fields import bounded, choice, field_first
from data_node.resources import default_io_workers
from data_node.streaming.augment_request import parse_augmentation
from data_node.streaming.cases import parse_cases
from data_node.streaming.cursors import MAX_EPOCHS, fingerprint, parse_start
from data_node.wire import encode_batch, parse_codec
from data_tools.chunk_cache import cache_of, chunk_reads, following_reads
from data_tools.data_augmentation import SampleAugmentation
from data_tools.io import (
    FlowSpec,
    PreprocessorChain,
    data_flow,
    decoded_nbytes,
    parse_sample_weights,
    weights_digest,
)
from data_wire.v1 import data_node_pb2, tensor_pb2

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterator, Mapping

    import numpy.typing as npt

    from data_node.catalog.datasets import Dataset
    from data_node.config import LimitsConfig
    from data_node.metrics import StreamMetrics
    from data_node.streaming.augment_request import AugmentPlan
    from data_tools.chunk_cache import StreamReads
    from data_tools.io.pool import WorkerPool

logger = logging.getLogger(__name__)

__all__ = [
    "StreamPlan",
    "parse_stream_request",
    "stream_batches",
]

# More lanes than any set of nodes a client would split a stream across.
MAX_LANES = 1024
# More ranks than any data-parallel job has.
MAX_WORLD_SIZE = 1 << 20
# FlowSpec keywords whose refusals the node words field-first, by the request field named.
_FLOW_FIELDS = {"sample_random": "sample_random", "start_batch": "resume.batch_index"}


@dataclass(frozen=True)
class StreamPlan:
    """A checked StreamBatches request: everything needed to produce its batches.

    Attributes:
        dataset: The dataset streamed.
        flow: The flow's plan (sampling, shard, lane, start, last epoch, workers) and the
            arithmetic of its positions.
        transform: data_flow's preprocessor, only library code and the registered
            preprocessor: the augmentation (``SampleAugmentation``), the preprocessor, both
            in a ``PreprocessorChain``, or None when the batch passes through.
        seed: The stream's seed (given, taken from the cursor, or drawn by the node).
        fingerprint: Digest of what the request means (see cursors.py).
        codec: Wire codec of every tensor.
        batch_bytes: Bytes of one batch as read (the dataset's rows; a preprocessor that
            grows them is not foreseen).
    """

    dataset: Dataset
    flow: FlowSpec
    transform: Callable[..., Any] | None
    seed: int
    fingerprint: str
    codec: int
    batch_bytes: int

    @property
    def memory_bytes(self) -> int:
        """The most bytes the stream holds in the node's process, reserved in the budget.

        Its batches prepared ahead (``max_in_flight``), the one being sent twice over (the
        encoded message and gRPC's copy of it, held until the transport takes it: a client
        that does not read stops the stream there), and one more for batches freed but not
        yet unmapped (the node returns large frees to the system at once,
        ``data_node.resources.return_large_frees``; without it glibc keeps freed batches in
        each reader thread's arena, beyond this); with
        worker processes, also their shared-memory blocks (one per batch in flight).
        """
        in_flight = self.flow.in_flight
        blocks = in_flight if self.flow.nb_proc_workers else 0
        return self.batch_bytes * (in_flight + 3 + blocks)

    def cursor(self, epoch: int, batch_index: int) -> tensor_pb2.Cursor:
        """The cursor just after batch ``batch_index`` of ``epoch``."""
        epoch, batch_index = self.flow.position_after(epoch, batch_index)
        return tensor_pb2.Cursor(
            dataset=self.dataset.name,
            seed=self.seed,
            epoch=epoch,
            batch_index=batch_index,
            fingerprint=self.fingerprint,
        )


def parse_stream_request(
    request: data_node_pb2.StreamRequest,
    dataset: Dataset,
    limits: LimitsConfig,
    preprocessors: Mapping[str, str],
) -> StreamPlan:
    """Check every field of ``request`` against ``dataset`` and ``limits``.

    Raises:
        RequestError: A field is invalid; the message starts with the field's name.
        LimitExceededError: A batch would exceed ``limits.max_batch_bytes``.
    """
    batch_size = bounded("batch_size", request.batch_size, 1, limits.max_batch_size)
    batch_bytes = _check_batch_bytes(dataset, batch_size, limits)
    epochs = None if request.loop_forever else bounded("epochs", request.epochs, 1, MAX_EPOCHS)
    rank, world_size = _parse_sharing(request)
    lanes = bounded("lane.count", request.lane.count or 1, 1, MAX_LANES)
    lane = bounded("lane.index", request.lane.index, 0, lanes - 1)
    nb_io_workers = bounded("nb_io_workers", request.nb_io_workers, 0, limits.max_nb_io_workers)
    nb_proc_workers = bounded(
        "nb_proc_workers", request.nb_proc_workers, 0, limits.max_nb_proc_workers
    )
    try:
        codec = parse_codec(request.codec)
    except ValueError as error:
        raise RequestError(field_first(str(error), {"codec": "codec"})) from None
    subset, cases = parse_cases(request.cases, dataset)
    weights = _parse_weights(request, dataset)
    shuffle_window = request.shuffle_window or None
    augment = (
        parse_augmentation(request.augmentation, dataset)
        if request.HasField("augmentation")
        else None
    )
    preprocessor = _parse_preprocessor(request, preprocessors)
    meaning = {
        "dataset": dataset.name,
        "batch_size": batch_size,
        "sample_random": request.sample_random,
        "sample_with_replacement": request.sample_with_replacement,
        "sample_weights": None if weights is None else weights_digest(weights),
        "drop_incomplete_batches": request.drop_incomplete_batches,
        "shard": [rank, world_size],
        "augmentation": None if augment is None else augment.meaning,
        "preprocessor": request.preprocessor or None,
    }
    # Absent rather than empty or null: streams without them keep their fingerprints.
    if cases:
        meaning["cases"] = [list(case_range) for case_range in cases]
    if shuffle_window is not None:
        meaning["shuffle_window"] = shuffle_window
    digest = fingerprint(meaning)
    seed, start_epoch, start_batch = parse_start(request, dataset.name, digest)
    transform = _transform(seed, augment, preprocessor)
    try:
        flow = FlowSpec.for_data(
            [array for _, array in dataset.arrays],
            batch_size=batch_size,
            seed=seed,
            sample_random=request.sample_random,
            sample_with_replacement=request.sample_with_replacement,
            sample_weights=weights,
            drop_incomplete_batches=request.drop_incomplete_batches,
            shuffle_window=shuffle_window,
            subset=subset,
            rank=rank,
            world_size=world_size,
            lane=lane,
            lanes=lanes,
            start_epoch=start_epoch,
            stop_epoch=epochs,
            # Decoders release the GIL: by default a stream reads on every core it may use.
            nb_io_workers=nb_io_workers or min(default_io_workers(), limits.max_nb_io_workers),
            # A request's transform never runs in the node's process (see the module
            # docstring); left 0, the stream may use the whole pool, shared fairly.
            nb_proc_workers=(
                nb_proc_workers
                if transform is None
                else nb_proc_workers or limits.max_nb_proc_workers
            ),
            max_in_flight=limits.max_in_flight,
        )
        flow = flow.starting_at(start_epoch, start_batch)
    except (TypeError, ValueError) as error:
        raise RequestError(field_first(str(error), _FLOW_FIELDS)) from error
    if flow.exhausted and not request.HasField("resume"):
        raise RequestError(
            f"start_epoch: Expected an epoch below epochs ({epochs}). Got {start_epoch} instead."
        )
    if flow.exhausted:
        raise CursorAtEndError(
            f"resume: the cursor (epoch {start_epoch}, batch {start_batch}) is at the end of "
            f"the stream's {epochs} epoch(s); nothing is left. Ask for more epochs to go on."
        )
    return StreamPlan(dataset, flow, transform, seed, digest, codec, batch_bytes)


def stream_batches(
    plan: StreamPlan,
    stop: threading.Event,
    metrics: StreamMetrics | None = None,
    workers: WorkerPool | None = None,
) -> Iterator[bytes]:
    """Yield each batch of ``plan`` as encoded ``Batch`` bytes until its last epoch.

    With worker processes, the batches run on ``workers`` (the node's warm pool), using at
    most ``nb_proc_workers`` of them at once; default None: on ``nb_proc_workers`` processes
    of the stream's own (the node always passes its pool: a request leaving the count 0 gets
    ``limits.max_nb_proc_workers``).

    Each batch gRPC takes (asks for the next one after) is counted in ``metrics`` (default
    None: none), with its read, augment, encode and send seconds; a batch sent as the call
    ends (the client cancelled) may not be.

    Raises:
        NodeStoppingError: ``stop`` was set (the node is stopping, or the call ended).
        DatasetRemovedError: The dataset's files are being replaced (checked after each
            batch is read, before it is sent; any error once they are is reported so).
        WorkerError: A worker process of the stream died.
        StreamFailedError: Reading a source, the transform or encoding raised a ValueError
            or TypeError (INTERNAL: the request was checked before the stream began).
        Exception: Whatever else reading a source or the transform raised.

    Every worker the stream started is stopped when the generator ends, however it ends
    (exhausted, closed by gRPC on cancellation, or garbage-collected), and once ``stop`` is
    set even while the generator waits for a batch.
    """
    try:
        yield from _stream(plan, stop, metrics, workers)
    except (ValueError, TypeError) as error:
        # The request was checked before the stream began: what fails now (a source, the
        # preprocessor, encoding) is the node's, never the client's (not INVALID_ARGUMENT).
        raise StreamFailedError(f"{type(error).__name__} while streaming: {error}") from error


def _stream(
    plan: StreamPlan,
    stop: threading.Event,
    metrics: StreamMetrics | None,
    workers: WorkerPool | None,
) -> Iterator[bytes]:
    arrays = [array for _, array in plan.dataset.arrays]
    # The order is the plan's pure function: the reads it foresees let the chunk cache keep
    # what this stream needs next.
    # (itemgetter: the cache pulls the plan's batches without calling back into the node.)
    batches = map(operator.itemgetter(2), plan.flow.batches())
    with following_reads(arrays, batches) as (reading, reads):
        if reads is not None:
            _warn_of_amplification(plan, arrays)
        yield from _send_batches(plan, reading, reads, stop, metrics, workers)
    if not stop.is_set():
        return  # the last epoch was sent (or the lane has no batch)
    # The call ended or the node is stopping.
    raise NodeStoppingError(
        "the node is stopping; reconnect and resume from the last cursor received"
    )


def _send_batches(
    plan: StreamPlan,
    arrays: list[Any],
    reads: StreamReads | None,
    stop: threading.Event,
    metrics: StreamMetrics | None,
    workers: WorkerPool | None,
) -> Iterator[bytes]:
    flow = data_flow.from_spec(
        arrays, plan.flow, preprocessor=plan.transform, shared_reads=plan.dataset.cached
    )
    names = plan.dataset.array_names
    # Bytes decoded for the stream (through the cache: counted by it, reads.decoded_bytes;
    # without: the chunks each batch reads) and delivered, by the batches sent so far.
    tally = _Tally()
    with flow, _replacement_ends(plan.dataset), _logged_at_end(plan, tally):
        for info in flow.flow_with_info(stop=stop, pool=workers):
            # The replacement sets the flag before it moves a file: a batch read whole
            # before the flag was set holds none of the new files' rows.
            _check_not_replaced(plan.dataset)
            if stop.is_set():
                break
            start = time.perf_counter()
            decoded = (
                sum(decoded_nbytes(array, info.indices) for array in arrays)
                if reads is None
                else reads.decoded_bytes - tally.decoded
            )
            delivered = sum(array.nbytes for array in info.arrays)
            message = encode_batch(
                info.arrays,
                indices=info.indices,
                cursor=plan.cursor(info.epoch, info.batch_index),
                epoch=info.epoch,
                batch_index=info.batch_index,
                codec=plan.codec,
                names=names if len(names) == len(info.arrays) else None,
                decoded_bytes=decoded,
            )
            encoded = time.perf_counter()
            info = dataclasses.replace(info, arrays=())  # the message holds the batch now
            size = len(message)
            # gRPC resumes the generator once the transport has taken the whole message,
            # within the client's flow-control window: a client that does not read stops
            # the stream here, with this message and max_in_flight batches held.
            yield message
            del message  # not held while the next batch is encoded
            if metrics is not None:
                sent = time.perf_counter()
                metrics.batch_sent(info, size, encoded - start, sent - encoded)
                metrics.bytes_read(decoded, delivered)
            tally.decoded += decoded
            tally.delivered += delivered


@dataclass
class _Tally:
    """Bytes decoded for a stream and delivered, by the batches it sent."""

    decoded: int = 0
    delivered: int = 0


@contextlib.contextmanager
def _logged_at_end(plan: StreamPlan, tally: _Tally) -> Iterator[None]:
    """Log the stream's read amplification when it ends, however it ends (INFO, one line).

    The per-stream figure on the node: a log line rather than a metric labelled by stream,
    as streams are unbounded in number (the metrics have it per dataset).
    """
    try:
        yield
    finally:
        logger.info(
            "stream of %r (seed %d) ended: %d bytes decoded for %d bytes delivered "
            "(read amplification %.2f)",
            plan.dataset.name,
            plan.seed,
            tally.decoded,
            tally.delivered,
            tally.decoded / tally.delivered if tally.delivered else 0.0,
        )


def _warn_of_amplification(plan: StreamPlan, arrays: list[Any]) -> None:
    """Log once if an exact shuffle over more decoded data than the cache holds will amplify.

    The data is the stream's own: the chunks of the dataset's cached arrays that its rows
    (its ``cases``, or every row) lie in. The estimate: each chunk a batch reads is decoded
    unless cached, and a random chunk is cached about as often as the cache's share of
    those chunks' decoded bytes.
    """
    if not plan.flow.sample_random or plan.flow.shuffle_window is not None:
        return
    cache = cache_of(arrays)
    assert cache is not None  # the stream registered its reads with it
    subset = plan.flow.subset
    dataset_bytes = (
        sum(
            int(array.shape[0]) * math.prod(array.shape[1:]) * np.dtype(array.dtype).itemsize
            for array in arrays
            if cache_of([array]) is cache
        )
        if subset is None
        else sum(source.chunk_nbytes for a in arrays for _, (source, _) in chunk_reads(a, subset))
    )
    if dataset_bytes <= cache.max_bytes:
        return
    rows = next(plan.flow.batches())[2]
    chunk_bytes = sum(
        source.chunk_nbytes for a in arrays for _, (source, _) in chunk_reads(a, rows)
    )
    delivered = sum(len(rows) * math.prod(a.shape[1:]) * np.dtype(a.dtype).itemsize for a in arrays)
    amplification = chunk_bytes * (1 - cache.max_bytes / dataset_bytes) / max(delivered, 1)
    logger.warning(
        "stream of %r: an exact shuffle over %.0f MiB of decoded chunks, more than the chunk "
        "cache's %.0f MiB, will decode about %.1fx the bytes it delivers (read amplification; "
        "eviction by known future use saves part of it). A chunk-windowed shuffle "
        "(shuffle_window) decodes each chunk about once per epoch.",
        plan.dataset.name,
        dataset_bytes / MiB,
        cache.max_bytes / MiB,
        amplification,
    )


@contextlib.contextmanager
def _replacement_ends(dataset: Dataset) -> Iterator[None]:
    """Report any error of a stream whose dataset is being replaced as that replacement."""
    try:
        yield
    except DatasetRemovedError:
        raise
    except Exception as error:
        if not dataset.replaced.is_set():
            raise
        _check_not_replaced(dataset, error)


def _check_not_replaced(dataset: Dataset, cause: Exception | None = None) -> None:
    if dataset.replaced.is_set():
        raise DatasetRemovedError(
            f"dataset: {dataset.name!r} was replaced while this stream read it (a build job "
            "overwrote its output); what was read since cannot be trusted. Open a new stream "
            "to read the new data."
        ) from cause


# ---------------------------------------------------------------- field checks


def _parse_sharing(request: data_node_pb2.StreamRequest) -> tuple[int, int]:
    """The (rank, world_size) of the request's sharing mode."""
    world_size = bounded("shard.world_size", request.shard.world_size or 1, 1, MAX_WORLD_SIZE)
    rank = bounded("shard.rank", request.shard.rank, 0, world_size - 1)
    sharing = request.sharing
    if sharing not in data_node_pb2.Sharing.values():
        raise RequestError(
            f"sharing: Expected one of {sorted(data_node_pb2.Sharing.keys())}. Got {sharing}."
        )
    if sharing == data_node_pb2.SHARING_PARTITIONED:
        if not request.HasField("seed") and not request.HasField("resume"):
            raise RequestError(
                "seed: Expected a seed with SHARING_PARTITIONED: every rank must cut the same "
                "epoch order. Got none."
            )
        return rank, world_size
    if world_size > 1:
        name = data_node_pb2.Sharing.Name(sharing)
        raise RequestError(
            f"sharing: Expected SHARING_PARTITIONED for a shard of world_size {world_size}. "
            f"Got {name} instead (independent trainers each get whole epochs)."
        )
    return rank, world_size


def _check_batch_bytes(dataset: Dataset, batch_size: int, limits: LimitsConfig) -> int:
    """The bytes of one batch, checked against ``limits.max_batch_bytes``."""
    sample_bytes: int = sum(
        int(np.prod(array.shape[1:], dtype=np.int64)) * np.dtype(array.dtype).itemsize
        for _, array in dataset.arrays
    )
    if batch_size * sample_bytes > limits.max_batch_bytes:
        raise LimitExceededError(
            f"max_batch_bytes: a batch of {batch_size} samples of {dataset.name!r} holds "
            f"{batch_size * sample_bytes} bytes; the node sends at most "
            f"{limits.max_batch_bytes} bytes per batch. Ask for a smaller batch_size."
        )
    return batch_size * sample_bytes


def _parse_weights(
    request: data_node_pb2.StreamRequest, dataset: Dataset
) -> npt.NDArray[np.float64] | None:
    source = request.sample_weights.WhichOneof("source")
    if source is None:
        return None
    if source == "values":
        weights = np.asarray(request.sample_weights.values.values, dtype=np.float64)
        field = "sample_weights.values"
    else:
        name = request.sample_weights.array
        field = "sample_weights.array"
        array = dataset.array(choice(field, name, dataset.array_names))
        if tuple(array.shape) != (dataset.length,):  # checked before reading a byte of it
            raise RequestError(
                f"{field}: Expected an array of one weight per sample ({dataset.length}). "
                f"Got {name!r}, of shape {tuple(array.shape)}, instead."
            )
        weights = np.asarray(array[:], dtype=np.float64)
    try:
        return parse_sample_weights(weights, dataset.length, name=field)
    except (TypeError, ValueError) as error:
        raise RequestError(str(error)) from None


def _parse_preprocessor(
    request: data_node_pb2.StreamRequest, preprocessors: Mapping[str, str]
) -> Callable[..., Any] | None:
    if not request.preprocessor:
        return None
    name = choice("preprocessor", request.preprocessor, sorted(preprocessors))
    return resolve_preprocessor(preprocessors[name])


def _transform(
    seed: int, augment: AugmentPlan | None, preprocessor: Callable[..., Any] | None
) -> Callable[..., Any] | None:
    """The stream's preprocessor: augment each sample, then run the registered preprocessor."""
    stages: list[Callable[..., Any]] = []
    if augment is not None:
        stages.append(
            SampleAugmentation(augment.spec, seed, augment.x_position, augment.y_position)
        )
    if preprocessor is not None:
        stages.append(preprocessor)
    if len(stages) > 1:
        return PreprocessorChain(tuple(stages))
    return stages[0] if stages else None

"""One StreamBatches call: check the request against its dataset and the limits, then stream.

``parse_stream_request`` turns a ``StreamRequest`` into a :class:`StreamPlan` (every field
checked once, errors naming the field); :func:`stream_batches` runs the plan through
``data_flow`` and yields each batch as encoded ``Batch`` bytes with the cursor after it.

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
least one worker process of the node's warm pool (``nb_proc_workers`` 0 is read as 1 for
it; it is the most of the pool's workers the stream uses at once), never in the node's
threads. A crash in native code (OpenCV, a preprocessor's C extension) then kills one
worker, never the node (see the faults below).

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
import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from data_node.augment_request import parse_augmentation
from data_node.cases import parse_cases
from data_node.config import resolve_preprocessor
from data_node.cursors import MAX_EPOCHS, fingerprint, parse_start
from data_node.errors import (
    CursorAtEndError,
    DatasetRemovedError,
    LimitExceededError,
    NodeStoppingError,
    RequestError,
    StreamFailedError,
)
from data_node.fields import bounded
from data_node.wire import encode_batch
from data_tools.data_augmentation import image_random_transform
from data_tools.io import data_flow
from data_tools.io.data_flow import preprocessor_keywords
from data_wire.v1 import data_node_pb2, tensor_pb2

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterator, Mapping

    import numpy.typing as npt

    from data_node.augment_request import AugmentPlan
    from data_node.config import LimitsConfig
    from data_node.datasets import Dataset
    from data_node.metrics import StreamMetrics
    from data_tools.io.pool import WorkerPool

__all__ = [
    "SampleTransform",
    "StreamPlan",
    "augment_sample",
    "parse_stream_request",
    "stream_batches",
]

# More lanes than any set of nodes a client would split a stream across.
MAX_LANES = 1024
# More ranks than any data-parallel job has.
MAX_WORLD_SIZE = 1 << 20
# The largest relative sampling weight: the sum of a dataset's weights stays finite.
MAX_WEIGHT = 1e100


@dataclass(frozen=True)
class SampleTransform:
    """The per-batch work of a stream: augment each sample, then run the preprocessor.

    Picklable (worker processes receive it). ``data_flow`` calls it with the batch, its
    rng, epoch and global indices.

    Attributes:
        seed: The stream's seed.
        x_position: Position of the augmented x array in the batch, or None: no augmentation.
        y_position: Position of the y array transformed with x, or None.
        options: Keyword arguments of ``image_random_transform``.
        preprocessor: The registered preprocessor, or None. It is called as data_flow calls
            one: with the ``rng``, ``epoch`` and ``indices`` keywords it accepts.
    """

    seed: int
    x_position: int | None = None
    y_position: int | None = None
    options: Mapping[str, Any] | None = None
    preprocessor: Callable[..., Any] | None = None
    # Which keywords the preprocessor takes, found once here rather than on every batch.
    _keywords: frozenset[str] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keywords = (
            frozenset() if self.preprocessor is None else (preprocessor_keywords(self.preprocessor))
        )
        object.__setattr__(self, "_keywords", keywords)

    def __call__(
        self,
        batch: list[npt.NDArray[Any]],
        *,
        rng: np.random.Generator,
        epoch: int,
        indices: npt.NDArray[np.int64],
    ) -> list[npt.NDArray[Any]] | tuple[npt.NDArray[Any], ...]:
        arrays = list(batch)
        if self.x_position is not None:
            self._augment(arrays, epoch, indices)
        if self.preprocessor is None:
            return arrays
        available = {"rng": rng, "epoch": epoch, "indices": indices}
        extra = {name: available[name] for name in self._keywords}
        return self.preprocessor(arrays, **extra)  # type: ignore[no-any-return]

    def _augment(
        self, arrays: list[npt.NDArray[Any]], epoch: int, indices: npt.NDArray[np.int64]
    ) -> None:
        assert self.x_position is not None
        xs, ys = [], []
        for row, index in enumerate(indices):
            rng = np.random.default_rng([self.seed, epoch, int(index)])
            y = None if self.y_position is None else arrays[self.y_position][row]
            x_out, y_out = augment_sample(
                arrays[self.x_position][row], y, rng=rng, options=self.options or {}
            )
            xs.append(x_out)
            if y_out is not None:
                ys.append(y_out)
        arrays[self.x_position] = np.stack(xs)
        if self.y_position is not None:
            arrays[self.y_position] = np.stack(ys)


def augment_sample(
    x: npt.NDArray[Any],
    y: npt.NDArray[Any] | None,
    *,
    rng: np.random.Generator,
    options: Mapping[str, Any],
) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None]:
    """``image_random_transform`` of one sample (x and optionally y, e.g. a mask).

    A 2-D x or y (H, W), as a medical import's slices and masks, is transformed as one
    channel and comes back 2-D; (C, H, W) arrays are passed as they are.
    """
    x_in = x[np.newaxis] if x.ndim == 2 else x
    if y is None:
        x_out = np.asarray(image_random_transform(x_in, rng=rng, **options))
        return (x_out[0] if x.ndim == 2 else x_out), None
    y_in = y[np.newaxis] if y.ndim == 2 else y
    x_out, y_out = image_random_transform(x_in, y_in, rng=rng, **options)
    return (x_out[0] if x.ndim == 2 else x_out), (y_out[0] if y.ndim == 2 else y_out)


@dataclass(frozen=True)
class StreamPlan:
    """A checked StreamBatches request: everything needed to produce its batches.

    Attributes:
        dataset: The dataset streamed.
        flow_options: Keyword arguments of ``data_flow`` (sampling, shard, workers, start).
        transform: The per-batch work, or None when the batch passes through.
        seed: The stream's seed (given, taken from the cursor, or drawn by the node).
        epochs: Epochs in the whole stream (counted from epoch 0), or None: forever.
        fingerprint: Digest of what the request means (see cursors.py).
        codec: Wire codec of every tensor.
        batch_bytes: Bytes of one batch as read (the dataset's rows; a preprocessor that
            grows them is not foreseen).
    """

    dataset: Dataset
    flow_options: Mapping[str, Any]
    transform: SampleTransform | None
    seed: int
    epochs: int | None
    fingerprint: str
    codec: int
    batch_bytes: int

    @property
    def memory_bytes(self) -> int:
        """The most bytes the stream holds in the node's process, reserved in the budget.

        Its batches prepared ahead (``max_in_flight``), the one being sent twice over (the
        encoded message and gRPC's copy of it, held until the transport takes it: a client
        that does not read stops the stream there), and one more for what the C allocator
        keeps of freed batches for reuse (measured up to a batch on a loaded machine); with
        worker processes, also their shared-memory blocks (one per batch in flight).
        """
        in_flight: int = self.flow_options["max_in_flight"]
        blocks = in_flight if self.flow_options["nb_proc_workers"] else 0
        return self.batch_bytes * (in_flight + 3 + blocks)

    def cursor(self, epoch: int, batch_index: int, batches_per_epoch: int) -> tensor_pb2.Cursor:
        """The cursor just after batch ``batch_index`` of ``epoch``."""
        epoch, batch_index = divmod(epoch * batches_per_epoch + batch_index + 1, batches_per_epoch)
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
    nb_io_workers = bounded("nb_io_workers", request.nb_io_workers, 0, limits.max_io_workers)
    nb_proc_workers = bounded(
        "nb_proc_workers", request.nb_proc_workers, 0, limits.max_proc_workers
    )
    if request.codec not in tensor_pb2.Codec.values():
        raise RequestError(
            f"codec: Expected one of {sorted(tensor_pb2.Codec.keys())}. Got {request.codec}."
        )
    subset, cases = parse_cases(request.cases, dataset)
    weights = _parse_weights(request, dataset)
    if (weights is not None or request.sample_with_replacement) and not request.sample_random:
        raise RequestError(
            "sample_random: Expected true when sample_with_replacement or sample_weights "
            "is set. Got false instead."
        )
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
        "sample_weights": None if weights is None else _weights_digest(weights),
        "drop_incomplete_batches": request.drop_incomplete_batches,
        "shard": [rank, world_size],
        "augmentation": None if augment is None else augment.meaning,
        "preprocessor": request.preprocessor or None,
    }
    if cases:  # absent rather than empty: streams of every case keep their fingerprints
        meaning["cases"] = [list(case_range) for case_range in cases]
    digest = fingerprint(meaning)
    seed, start_epoch, start_batch = parse_start(request, dataset.name, digest)
    if epochs is not None and start_epoch >= epochs and not request.HasField("resume"):
        raise RequestError(
            f"start_epoch: Expected an epoch below epochs ({epochs}). Got {start_epoch} instead."
        )
    if epochs is not None and start_epoch >= epochs:
        raise CursorAtEndError(
            f"resume: the cursor (epoch {start_epoch}, batch {start_batch}) is at the end of "
            f"the stream's {epochs} epoch(s); nothing is left. Ask for more epochs to go on."
        )
    transform = _transform(seed, augment, preprocessor)
    flow_options = {
        "batch_size": batch_size,
        "nb_io_workers": nb_io_workers or 1,
        # A request's transform never runs in the node's process (see the module docstring).
        "nb_proc_workers": nb_proc_workers if transform is None else max(1, nb_proc_workers),
        "sample_random": request.sample_random,
        "sample_with_replacement": request.sample_with_replacement,
        "sample_weights": weights,
        "drop_incomplete_batches": request.drop_incomplete_batches,
        "seed": seed,
        "rank": rank,
        "world_size": world_size,
        "start_epoch": start_epoch,
        "start_batch": start_batch,
        "max_in_flight": limits.max_in_flight,
        "lane": lane,
        "lanes": lanes,
        "shared_reads": dataset.cached,
        "subset": subset,
    }
    _check_flow_options(dataset, transform, flow_options)
    return StreamPlan(
        dataset, flow_options, transform, seed, epochs, digest, request.codec, batch_bytes
    )


def _check_flow_options(
    dataset: Dataset, transform: SampleTransform | None, options: Mapping[str, Any]
) -> None:
    """Let data_flow check the sampling options, and the cursor against its epoch length.

    Building a data_flow starts nothing (workers start on the first batch), so this costs
    no more than the checks themselves.
    """
    arrays = [array for _, array in dataset.arrays]
    try:
        flow = data_flow(
            arrays, preprocessor=transform, **{**options, "start_epoch": 0, "start_batch": 0}
        )
    except (TypeError, ValueError) as error:
        raise RequestError(str(error)) from error
    with flow:
        if not 0 <= options["start_batch"] < len(flow):
            raise RequestError(
                f"resume.batch_index: Expected an integer in [0, {len(flow)}) (the batches "
                f"of one epoch). Got {options['start_batch']} instead."
            )


def stream_batches(
    plan: StreamPlan,
    stop: threading.Event,
    metrics: StreamMetrics | None = None,
    workers: WorkerPool | None = None,
) -> Iterator[bytes]:
    """Yield each batch of ``plan`` as encoded ``Batch`` bytes until its last epoch.

    With worker processes, the batches run on ``workers`` (the node's warm pool), using at
    most ``nb_proc_workers`` of them at once; default None: on processes of the stream's own.

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
    flow = data_flow(arrays, preprocessor=plan.transform, **plan.flow_options)
    names = plan.dataset.array_names
    with flow, _replacement_ends(plan.dataset):
        if plan.flow_options["lane"] >= len(flow):
            return  # more lanes than batches per epoch: this lane never has a batch
        for info in flow.flow_with_info(stop=stop, pool=workers):
            # The replacement sets the flag before it moves a file: a batch read whole
            # before the flag was set holds none of the new files' rows.
            _check_not_replaced(plan.dataset)
            if stop.is_set():
                break
            if plan.epochs is not None and info.epoch >= plan.epochs:
                return
            start = time.perf_counter()
            message = encode_batch(
                info.arrays,
                indices=info.indices,
                cursor=plan.cursor(info.epoch, info.batch_index, len(flow)),
                epoch=info.epoch,
                batch_index=info.batch_index,
                codec=plan.codec,
                names=names if len(names) == len(info.arrays) else None,
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
    # The flow loops forever: it ended because the call ended or the node is stopping.
    raise NodeStoppingError(
        "the node is stopping; reconnect and resume from the last cursor received"
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
        try:
            array = dataset.array(name)
        except KeyError:
            raise RequestError(
                f"{field}: Expected one of {list(dataset.array_names)}. Got {name!r} instead."
            ) from None
        if tuple(array.shape) != (dataset.length,):  # checked before reading a byte of it
            raise RequestError(
                f"{field}: Expected an array of one weight per sample ({dataset.length}). "
                f"Got {name!r}, of shape {tuple(array.shape)}, instead."
            )
        weights = np.asarray(array[:], dtype=np.float64)
    if weights.shape != (dataset.length,):
        raise RequestError(
            f"{field}: Expected one weight per sample ({dataset.length}). "
            f"Got shape {weights.shape} instead."
        )
    if not np.all((weights >= 0) & (weights <= MAX_WEIGHT)) or not weights.sum() > 0:
        raise RequestError(
            f"{field}: Expected finite weights in [0, {MAX_WEIGHT:g}], not all zero."
        )
    return weights


def _weights_digest(weights: npt.NDArray[np.float64]) -> str:
    """What the weights mean: the probabilities they normalize to (as data_flow does)."""
    probabilities = np.ascontiguousarray(weights / weights.sum(), dtype="<f8")
    return hashlib.sha256(probabilities.tobytes()).hexdigest()


def _parse_preprocessor(
    request: data_node_pb2.StreamRequest, preprocessors: Mapping[str, str]
) -> Callable[..., Any] | None:
    if not request.preprocessor:
        return None
    if request.preprocessor not in preprocessors:
        raise RequestError(
            f"preprocessor: Expected one of {sorted(preprocessors)}. "
            f"Got {request.preprocessor!r} instead."
        )
    return resolve_preprocessor(preprocessors[request.preprocessor])


def _transform(
    seed: int, augment: AugmentPlan | None, preprocessor: Callable[..., Any] | None
) -> SampleTransform | None:
    if augment is None:
        return None if preprocessor is None else SampleTransform(seed, preprocessor=preprocessor)
    return SampleTransform(
        seed, augment.x_position, augment.y_position, augment.options, preprocessor
    )

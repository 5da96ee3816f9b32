"""data_flow: a parallel, ordered, deterministic and resumable minibatch pipeline."""

from __future__ import annotations

import inspect
import math
import pickle
import sys
import weakref
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import numpy.typing as npt

from data_tools._parse import (
    parse_bool,
    parse_int,
    parse_non_negative_int,
    parse_option,
    parse_positive_int,
)
from data_tools.io._batch import BatchInfo, Preprocess, accepts_out
from data_tools.io._pipeline import Pipeline, build_pipeline
from data_tools.io._sampler import SEED_LIMIT, SamplingPlan, iter_batches, num_batches

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Generator, Sequence
    from types import TracebackType

    from data_tools.io.pool import WorkerPool

__all__ = ["PREPROCESSOR_KEYWORDS", "BatchInfo", "data_flow", "preprocessor_keywords"]

START_METHODS = ("forkserver", "spawn")


def _length(name: str, array: Any) -> int:
    """Return the length of the first axis of ``array`` (zarr arrays have no ``len()``)."""
    shape = getattr(array, "shape", None)
    try:
        return int(shape[0]) if shape is not None else len(array)
    except (TypeError, IndexError) as error:
        raise TypeError(
            f"Expected {name} to be an array with a first axis. Got {type(array).__name__} instead."
        ) from error


def _parse_data(data: Any) -> list[Any]:
    if not isinstance(data, list | tuple) or not data:
        raise TypeError(
            f"Expected data to be a non-empty list of arrays. Got {type(data).__name__} instead."
        )
    lengths = [_length(f"data[{index}]", array) for index, array in enumerate(data)]
    if len(set(lengths)) > 1:
        raise ValueError(
            f"Expected every array in data to have the same length. Got lengths {lengths} instead."
        )
    if lengths[0] == 0:
        raise ValueError("Expected the arrays in data to hold at least one element. Got 0 instead.")
    return list(data)


def _parse_subset(subset: Any, num_samples: int) -> npt.NDArray[np.int64] | None:
    if subset is None:
        return None
    array = np.asarray(subset)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            "Expected subset to be a non-empty 1-D sequence of element ids. "
            f"Got {array.size} value(s) of dtype {array.dtype} and shape {array.shape} instead."
        )
    ids = array.astype(np.int64)
    if ids[0] < 0 or ids[-1] >= num_samples or np.any(np.diff(ids) <= 0):
        raise ValueError(
            f"Expected subset to hold distinct element ids in [0, {num_samples}), in "
            f"increasing order. Got ids from {ids.min()} to {ids.max()} instead."
        )
    return ids


def _parse_weights(
    weights: Any, num_samples: int, subset: npt.NDArray[np.int64] | None
) -> npt.NDArray[np.float64]:
    """The weights of the elements drawn (the subset's, when given), summing to 1."""
    try:
        array = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"Expected sample_weights to be a sequence of numbers. Got {weights!r} instead."
        ) from error
    if array.shape != (num_samples,):
        raise ValueError(
            f"Expected sample_weights to hold one weight per element ({num_samples}). "
            f"Got shape {array.shape} instead."
        )
    if not np.all(np.isfinite(array)) or np.any(array < 0) or not array.sum() > 0:
        raise ValueError(
            "Expected sample_weights to be finite, non-negative and not all zero. "
            f"Got {array!r} instead."
        )
    if subset is not None:
        array = array[subset]
        if not array.sum() > 0:
            raise ValueError(
                "Expected sample_weights to give some element of subset a weight > 0. "
                "Got only zeros there instead."
            )
    normalized: npt.NDArray[np.float64] = array / array.sum()
    return normalized


PREPROCESSOR_KEYWORDS = frozenset({"rng", "epoch", "indices"})


def preprocessor_keywords(function: Callable[..., Any]) -> frozenset[str]:
    """Which of PREPROCESSOR_KEYWORDS ``function`` takes by keyword (all with ``**kwargs``)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return PREPROCESSOR_KEYWORDS
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(
        p.name for p in parameters if p.kind in named and p.name in PREPROCESSOR_KEYWORDS
    )


def _parse_preprocessor(preprocessor: Any, to_processes: bool) -> Callable[..., Any] | None:
    if preprocessor is None:
        return None
    if not callable(preprocessor):
        raise TypeError(
            f"Expected preprocessor to be callable or None. Got {preprocessor!r} instead."
        )
    if to_processes:
        try:
            pickle.dumps(preprocessor)
        except Exception as error:
            raise TypeError(
                "Expected preprocessor to be picklable (a module-level function), as "
                f"nb_proc_workers > 0 sends it to worker processes. Got {preprocessor!r} "
                "instead."
            ) from error
        module = getattr(preprocessor, "__module__", None)
        if module == "__main__" and not hasattr(sys.modules["__main__"], "__file__"):
            # A spawned worker re-imports __main__ from its file; `python -c` and
            # interactive sessions have none, so the worker could not find the function.
            raise TypeError(
                "Expected preprocessor to be importable by worker processes. Got "
                f"{preprocessor!r}, defined in an interactive session or `python -c`, "
                "instead: move it into a module, or use nb_proc_workers=0."
            )
    return preprocessor  # type: ignore[no-any-return]


def _parse_seed(seed: Any, rng: Any) -> int:
    if seed is not None and rng is not None:
        raise ValueError("Expected either seed or rng, not both. Got both instead.")
    if seed is not None:
        value = parse_non_negative_int("seed", seed)
        if value >= SEED_LIMIT:
            raise ValueError(f"Expected seed to be an integer < 2**32. Got {value} instead.")
        return value
    if rng is None:
        rng = np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(SEED_LIMIT))
    if isinstance(rng, np.random.RandomState):
        return int(rng.randint(SEED_LIMIT, dtype=np.int64))
    raise TypeError(
        f"Expected rng to be a numpy Generator, a RandomState or None. Got {rng!r} instead."
    )


def _batch_nbytes(arrays: Sequence[Any], batch_size: int) -> int:
    """Estimate a batch's bytes from the arrays' shapes and dtypes (0 where unknown)."""
    total = 0
    for array in arrays:
        shape = getattr(array, "shape", None)
        dtype = getattr(array, "dtype", None)
        if shape is not None and dtype is not None:
            total += math.prod(shape[1:]) * np.dtype(dtype).itemsize * batch_size + 64
    return total


class data_flow:
    """Minibatches of a list of arrays, read and preprocessed in parallel, in order.

    The arrays of ``data`` are iterated in tandem: a batch holds ``A[i], B[i], ...`` for the
    same indices ``i`` (``BatchInfo.indices``) of every array. Batches come out in sampling order
    whatever the worker counts (``ordered=True``), and the stream is a pure function of the
    arguments and ``seed``: the epoch order comes from ``(seed, epoch)``, the preprocessor's
    randomness from ``(seed, epoch, batch_index, rank)``, never from which worker ran it.

    Where the work happens: with ``nb_proc_workers=0`` the ``nb_io_workers`` threads read
    batches from ``data`` and preprocess them (with no threads either, the consumer does it
    inside ``next()``). With ``nb_proc_workers > 0``, each worker process reads its batches
    itself and preprocesses them, one batch at a time; results come back through a pool of
    shared-memory blocks (a preprocessor that names an ``out`` keyword gets the block's arrays
    to fill, from the second batch a process runs on). Worker processes start with ``start_method``
    (never fork) and receive the arrays pickled: h5py datasets become a path and key reopened
    read-only in each process, numpy arrays (1 MiB and more) are copied once into shared memory
    mapped by every process, zarr arrays and data_tools views pickle themselves. Any other
    array must pickle into something that can read the data in another process; a wrapper
    over an open file handle cannot. With ``shared_reads=True`` the processes only
    preprocess: this process reads every batch (see ``shared_reads``).

    Args:
        data: A non-empty list of arrays of equal length (numpy, h5py, zarr, data_tools
            views or anything with ``len()`` and integer-array indexing along the first axis).
        batch_size: The most elements per batch; the last batch of an epoch holds the rest
            unless dropped.
        nb_io_workers: Threads that read (and, without processes, preprocess) batches; 0
            does that in the consumer's thread. With processes, each process reads its own
            batches and this count does not matter, but with ``shared_reads``: the threads
            of this process that read for them (at least 1). Default 1.
        nb_proc_workers: Worker processes that read and preprocess batches. Default 0.
        loop_forever: If True (default), epochs follow each other endlessly; if False the
            flow ends after one epoch (the rest of ``start_epoch``).
        sample_random: If True, draw each epoch in random order. Default False.
        sample_with_replacement: If True, draw each epoch's ``len(data[0])`` elements with
            replacement. Requires ``sample_random``. Default False.
        sample_weights: Relative probability of each element (finite, >= 0, not all zero).
            With replacement, elements are drawn with these probabilities; without, every
            element still comes once per epoch, in the order of successive weighted draws
            (zero-weight elements last). Requires ``sample_random``. Default None (uniform).
        drop_incomplete_batches: If True, drop the short last batch of each epoch. Default
            False.
        preprocessor: Called on each batch, a list arranged like ``data`` of freshly read
            arrays it may modify in place; returns a numpy array or a tuple/list of arrays.
            If it accepts an ``rng`` keyword it is called as ``preprocessor(batch, rng=g)``
            with ``g = np.random.default_rng([seed, epoch, batch_index, rank])``; likewise an
            ``epoch`` keyword receives the batch's epoch and an ``indices`` keyword its global
            indices (so per-sample randomness can be drawn from (seed, epoch, index)). Runs in the
            io threads, or in the worker processes when ``nb_proc_workers > 0`` (then it
            must be picklable). Default None: batches pass through.
        rng: A numpy Generator or RandomState from which the seed is drawn, once, here.
            Default None.
        seed: The seed of every random stream, an integer in ``[0, 2**32)``. Pass either
            ``seed`` or ``rng``; with neither, a random seed is drawn (see ``seed``).
        ordered: If True (default), batches come out in sampling order; if False, as soon as
            they are ready (more throughput with uneven batch costs; the contents of each
            batch stay reproducible, their order and so the resume cursor do not).
        max_in_flight: The most batches read or preprocessed ahead of the consumer,
            including those waiting in the reorder buffer; bounds memory and the
            shared-memory pool. Default: 1 with no workers, else twice the number of
            processes (or of io threads without processes).
        start_epoch: Epoch to start at. Default 0.
        start_batch: Batch index within ``start_epoch`` to start at, from 0 to ``len(self)``
            (``len(self)`` is the end of that epoch). A flow started at ``(epoch, batch)``
            yields exactly what an uninterrupted flow yields from there. Default 0.
        rank: Which part of every epoch this flow yields, from 0 to ``world_size - 1``.
            Default 0.
        world_size: Number of disjoint parts each epoch is cut into (one per data-parallel
            consumer). The epoch order is cut into contiguous parts whose sizes differ by at
            most one element; nothing is dropped or padded, so the parts' union is the epoch
            exactly once and ranks may differ by one batch. Default 1.
        start_method: ``"spawn"`` (default) or ``"forkserver"``, for worker processes.
        lane: Which lane of every epoch's batches this flow yields, from 0 to ``lanes - 1``:
            the batches whose index ``b`` has ``b % lanes == lane``. Batch contents,
            indices and ``len(self)`` are those of the whole flow, so flows over every lane,
            merged in (epoch, batch_index) order, yield exactly the flow with one lane (as
            a client reading from several data nodes does). A lane with no batch
            (``lane >= len(self)``) yields nothing, even with ``loop_forever``. Default 0.
        lanes: Number of lanes. Default 1: every batch.
        shared_reads: With worker processes, read every batch in this process, from the
            arrays of ``data`` as given, on ``nb_io_workers`` threads (at least 1), and send
            its rows to the processes through shared memory; they only preprocess. Use it
            when the arrays read through something that lives in this process, such as a
            cache of decoded chunks shared with other flows: each chunk is then read and
            decoded once, not once per process. The arrays are never sent to the processes
            (they need not pickle; the preprocessor must). Reads no longer run in parallel
            across processes (and h5py runs one call of a process at a time). Batches are
            bit-identical either way; ``BatchInfo.read_seconds`` is then measured in this
            process, ``preprocess_seconds`` in the worker. Without processes it changes
            nothing. Default False: each process reads its own batches.
        subset: Element ids (distinct, increasing, in ``[0, len(data[0]))``) the flow
            draws from, as if ``data`` held only these elements: an epoch has
            ``len(subset)`` draws (so fewer batches), shards and ``sample_weights``
            (still one weight per element of ``data``; those of the subset are used) apply
            to them, and ``BatchInfo.indices`` (so the per-sample randomness keyed by
            index) stay element ids of ``data``. Default None: every element.

    Raises:
        TypeError: If an argument has the wrong type (``data`` not a list of arrays, a
            non-callable or, with processes, unpicklable ``preprocessor``, an ``rng`` that
            is not a numpy generator, non-bool flags).
        ValueError: If ``batch_size`` < 1, worker counts < 0, arrays of unequal or zero
            length, invalid ``sample_weights`` or ``subset``, replacement or weights without
            ``sample_random``, both ``seed`` and ``rng``, ``rank`` outside
            ``[0, world_size)``, ``lane`` outside ``[0, lanes)``, ``start_batch`` outside
            ``[0, len(self)]``, an unknown
            ``start_method``, or an epoch with no batch for this rank.
    """

    def __init__(
        self,
        data: Sequence[Any],
        batch_size: int,
        nb_io_workers: int = 1,
        nb_proc_workers: int = 0,
        loop_forever: bool = True,
        sample_random: bool = False,
        sample_with_replacement: bool = False,
        sample_weights: Any = None,
        drop_incomplete_batches: bool = False,
        preprocessor: Callable[..., Any] | None = None,
        rng: np.random.Generator | np.random.RandomState | None = None,
        *,
        seed: int | None = None,
        ordered: bool = True,
        max_in_flight: int | None = None,
        start_epoch: int = 0,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_method: str = "spawn",
        lane: int = 0,
        lanes: int = 1,
        shared_reads: bool = False,
        subset: Any = None,
    ) -> None:
        self._pipelines: weakref.WeakSet[Pipeline] = weakref.WeakSet()
        self._data = _parse_data(data)
        num_samples = _length("data[0]", self._data[0])
        ids = _parse_subset(subset, num_samples)
        batch_size = parse_positive_int("batch_size", batch_size)
        self._num_io_threads = parse_non_negative_int("nb_io_workers", nb_io_workers)
        self._num_processes = parse_non_negative_int("nb_proc_workers", nb_proc_workers)
        self._loop_forever = parse_bool("loop_forever", loop_forever)
        shuffle = parse_bool("sample_random", sample_random)
        replacement = parse_bool("sample_with_replacement", sample_with_replacement)
        if replacement and not shuffle:
            raise ValueError(
                "Expected sample_with_replacement=False when sample_random=False "
                "(replacement only applies to random sampling). Got True instead."
            )
        weights = None
        if sample_weights is not None:
            if not shuffle:
                raise ValueError(
                    "Expected sample_weights=None when sample_random=False (weights only "
                    "apply to random sampling). Got weights instead."
                )
            weights = _parse_weights(sample_weights, num_samples, ids)
        if ids is not None:
            num_samples = len(ids)
        function = _parse_preprocessor(preprocessor, self._num_processes > 0)
        self._seed = _parse_seed(seed, rng)
        self._ordered = parse_bool("ordered", ordered)
        world_size = parse_positive_int("world_size", world_size)
        rank = parse_non_negative_int("rank", rank)
        if rank >= world_size:
            raise ValueError(
                f"Expected rank to be an integer in [0, world_size={world_size}). "
                f"Got {rank} instead."
            )
        self._lanes = parse_positive_int("lanes", lanes)
        self._lane = parse_non_negative_int("lane", lane)
        if self._lane >= self._lanes:
            raise ValueError(
                f"Expected lane to be an integer in [0, lanes={self._lanes}). "
                f"Got {self._lane} instead."
            )
        self._plan = SamplingPlan(
            num_samples=num_samples,
            batch_size=batch_size,
            shuffle=shuffle,
            replacement=replacement,
            weights=weights,
            drop_incomplete=parse_bool("drop_incomplete_batches", drop_incomplete_batches),
            seed=self._seed,
            rank=rank,
            world_size=world_size,
            subset=ids,
        )
        self._num_batches = num_batches(self._plan)
        if self._num_batches == 0:
            raise ValueError(
                f"Expected batch_size to give rank {rank} at least one batch per epoch. Got "
                f"batch_size={batch_size} for {num_samples} elements over {world_size} "
                "rank(s) with drop_incomplete_batches=True instead."
                if self._plan.drop_incomplete
                else f"Expected rank {rank} to get at least one element per epoch. Got "
                f"{num_samples} elements over world_size={world_size} ranks instead."
            )
        self._start_epoch = parse_non_negative_int("start_epoch", start_epoch)
        self._start_batch = parse_int("start_batch", start_batch)
        if not 0 <= self._start_batch <= self._num_batches:
            raise ValueError(
                f"Expected start_batch to be an integer in [0, {self._num_batches}] (the "
                f"batches of one epoch). Got {self._start_batch} instead."
            )
        if max_in_flight is None:
            workers = self._num_processes or self._num_io_threads
            self._max_in_flight = 2 * workers if workers else 1
        else:
            self._max_in_flight = parse_positive_int("max_in_flight", max_in_flight)
        self._start_method = parse_option("start_method", start_method, START_METHODS)
        self._shared_reads = parse_bool("shared_reads", shared_reads)
        self._preprocess = Preprocess(
            function,
            frozenset() if function is None else preprocessor_keywords(function),
            self._seed,
            rank,
            out=function is not None and accepts_out(function),
        )

    @property
    def seed(self) -> int:
        """The seed of every random stream: given, drawn from ``rng``, or drawn at random."""
        return self._seed

    def __len__(self) -> int:
        """Return the number of batches in one epoch (for this rank)."""
        return self._num_batches

    def flow_with_info(
        self, *, stop: threading.Event | None = None, pool: WorkerPool | None = None
    ) -> Generator[BatchInfo, None, None]:
        """Return a generator of ``BatchInfo`` (epoch, batch index, global indices, arrays).

        Each ``BatchInfo`` also says how long the batch took to read and to preprocess
        (measured in the thread or process that did it) and how many finished batches
        waited behind it (``ready``, the queue depth), for monitoring.

        Workers start at the first ``next()`` and stop when the generator ends, is closed or
        garbage-collected, or when ``close()`` is called; each call starts a new flow.

        Args:
            stop: An event that ends the flow once set, even while the consumer waits for a
                batch (within a tenth of a second; a batch run in the consumer's thread,
                without workers, is finished first): the generator returns and the workers
                stop. Lets another thread end a flow whose consumer is blocked in ``next()``,
                as a server does when a client goes away. Default None.
            pool: A started ``data_tools.io.pool.WorkerPool`` to run the batches on when
                ``nb_proc_workers > 0``, instead of starting worker processes for this flow:
                the flow then uses at most ``nb_proc_workers`` of the pool's workers at once,
                the first batch waits for no process to start, and the pool outlives the
                flow. Batches are bit-identical either way. Default None.

        Raises:
            Exception: Whatever the preprocessor or a source raised, with its original type
                and the worker's traceback text (as ``__cause__`` when it came from a
                process); the flow stops.
            WorkerError: If a worker process died, or an exception could not be rebuilt.
            TypeError: With processes and without ``shared_reads``, if an array of
                ``data`` cannot be pickled to them.
        """
        pipeline = build_pipeline(
            iter_batches(
                self._plan,
                self._start_epoch,
                self._start_batch,
                self._loop_forever,
                self._lane,
                self._lanes,
            ),
            self._data,
            self._preprocess,
            num_io_threads=self._num_io_threads,
            num_processes=self._num_processes,
            max_in_flight=self._max_in_flight,
            ordered=self._ordered,
            start_method=self._start_method,
            block_nbytes=_batch_nbytes(self._data, self._plan.batch_size),
            shared_reads=self._shared_reads,
            stop=stop,
            pool=pool,
        )
        self._pipelines.add(pipeline)
        try:
            yield from pipeline
        finally:
            pipeline.close()

    def flow(self) -> Generator[tuple[npt.NDArray[Any], ...], None, None]:
        """Return a generator of batches: tuples with one stacked array per output.

        Same lifecycle and errors as ``flow_with_info``.
        """
        flow = self.flow_with_info()
        try:
            for info in flow:
                yield info.arrays
        finally:
            flow.close()

    def close(self) -> None:
        """Stop every flow started so far: threads, processes and shared memory (idempotent)."""
        for pipeline in list(getattr(self, "_pipelines", ())):
            pipeline.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

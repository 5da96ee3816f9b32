"""data_flow: a parallel, ordered, deterministic and resumable minibatch pipeline."""

from __future__ import annotations

import math
import pickle
import sys
import weakref
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import numpy.typing as npt

from data_tools._parse import parse_bool, parse_non_negative_int, parse_option
from data_tools.io._batch import BatchInfo, Preprocess
from data_tools.io._pipeline import Pipeline, build_pipeline
from data_tools.io._read_blocks import length
from data_tools.io._sampler import SEED_LIMIT
from data_tools.io.flow_spec import FlowSpec
from data_tools.io.preprocessing import accepts_out, preprocessor_keywords

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Generator, Sequence
    from types import TracebackType

    from data_tools.io.pool import WorkerPool

__all__ = ["BatchInfo", "data_flow"]

START_METHODS = ("forkserver", "spawn")


def _length(name: str, array: Any) -> int:
    """Return the length of the first axis of ``array``, or raise TypeError naming ``name``."""
    try:
        return length(array)
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


def _parse_seed(seed: Any, rng: Any) -> Any:
    """The seed given (FlowSpec checks it), or one drawn from ``rng`` or at random."""
    if seed is not None and rng is not None:
        raise ValueError("Expected either seed or rng, not both. Got both instead.")
    if seed is not None:
        return seed
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
        shuffle_window: With ``sample_random``, shuffle by chunk windows instead of one
            exact permutation, so that each storage chunk is decoded about once per epoch
            in bounded memory: each epoch permutes the data's read blocks (runs of
            consecutive elements in one storage chunk of one source: ``read_blocks(data)``),
            cuts the blocks so ordered into windows of about ``shuffle_window`` elements
            (whole blocks) and permutes the elements inside each window. Every element still
            comes once per epoch, in an order fixed by (seed, epoch); shards, lanes and
            resume work as with the exact permutation. The shuffle is weaker: elements of
            one chunk stay within about ``shuffle_window`` positions of each other, so use
            the largest window whose chunks fit the chunk cache. An integer from 1 to the
            elements drawn per epoch; not with ``sample_with_replacement`` or
            ``sample_weights``. See ``FlowSpec``. Default None: the exact permutation.

    Raises:
        TypeError: If an argument has the wrong type (``data`` not a list of arrays, a
            non-callable or, with processes, unpicklable ``preprocessor``, an ``rng`` that
            is not a numpy generator, non-bool flags).
        ValueError: If ``batch_size`` < 1, worker counts < 0, arrays of unequal or zero
            length, invalid ``sample_weights`` or ``subset``, replacement or weights without
            ``sample_random``, both ``seed`` and ``rng``, ``rank`` outside
            ``[0, world_size)``, ``lane`` outside ``[0, lanes)``, ``start_batch`` outside
            ``[0, len(self)]``, an unknown ``start_method``, an epoch with no batch for this
            rank, or a ``shuffle_window`` out of range, without ``sample_random`` or with
            replacement or weights.
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
        shuffle_window: int | None = None,
    ) -> None:
        self._pipelines: weakref.WeakSet[Pipeline] = weakref.WeakSet()
        data = _parse_data(data)
        loop_forever = parse_bool("loop_forever", loop_forever)
        start_epoch = parse_non_negative_int("start_epoch", start_epoch)
        spec = FlowSpec.for_data(
            data,
            batch_size=batch_size,
            seed=_parse_seed(seed, rng),
            sample_random=sample_random,
            sample_with_replacement=sample_with_replacement,
            sample_weights=sample_weights,
            drop_incomplete_batches=drop_incomplete_batches,
            shuffle_window=shuffle_window,
            subset=subset,
            rank=rank,
            world_size=world_size,
            lane=lane,
            lanes=lanes,
            start_epoch=start_epoch,
            start_batch=start_batch,
            stop_epoch=None if loop_forever else start_epoch + 1,
            nb_io_workers=nb_io_workers,
            nb_proc_workers=nb_proc_workers,
            max_in_flight=max_in_flight,
        )
        self._setup(data, spec, preprocessor, ordered, start_method, shared_reads)

    @classmethod
    def from_spec(
        cls,
        data: Sequence[Any],
        spec: FlowSpec,
        *,
        preprocessor: Callable[..., Any] | None = None,
        ordered: bool = True,
        start_method: str = "spawn",
        shared_reads: bool = False,
    ) -> data_flow:
        """A flow of ``data`` yielding the batches ``spec`` plans (a node's streams use it).

        ``preprocessor``, ``ordered``, ``start_method`` and ``shared_reads`` are as in the
        constructor; ``spec.stop_epoch`` replaces ``loop_forever``.

        Raises:
            TypeError, ValueError: As the constructor, for ``data`` (also if its length is
                not ``spec.num_elements``) and the other arguments.
        """
        flow = cls.__new__(cls)
        flow._pipelines = weakref.WeakSet()
        data = _parse_data(data)
        if _length("data[0]", data[0]) != spec.num_elements:
            raise ValueError(
                f"Expected data of the spec's {spec.num_elements} elements. "
                f"Got {_length('data[0]', data[0])} instead."
            )
        flow._setup(data, spec, preprocessor, ordered, start_method, shared_reads)
        return flow

    def _setup(
        self,
        data: list[Any],
        spec: FlowSpec,
        preprocessor: Any,
        ordered: Any,
        start_method: Any,
        shared_reads: Any,
    ) -> None:
        self._data = data
        self._spec = spec
        function = _parse_preprocessor(preprocessor, spec.nb_proc_workers > 0)
        self._ordered = parse_bool("ordered", ordered)
        self._start_method = parse_option("start_method", start_method, START_METHODS)
        self._shared_reads = parse_bool("shared_reads", shared_reads)
        self._preprocess = Preprocess(
            function,
            frozenset() if function is None else preprocessor_keywords(function),
            spec.seed,
            spec.rank,
            out=function is not None and accepts_out(function),
        )

    @property
    def spec(self) -> FlowSpec:
        """The flow's plan: sampling, shard, lane, start and stop, workers; and its positions."""
        return self._spec

    @property
    def seed(self) -> int:
        """The seed of every random stream: given, drawn from ``rng``, or drawn at random."""
        return self._spec.seed

    def __len__(self) -> int:
        """Return the number of batches in one epoch (for this rank)."""
        return self._spec.batches_per_epoch

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
        spec = self._spec
        pipeline = build_pipeline(
            spec.batches(),
            self._data,
            self._preprocess,
            nb_io_workers=spec.nb_io_workers,
            num_processes=spec.nb_proc_workers,
            max_in_flight=spec.in_flight,
            ordered=self._ordered,
            start_method=self._start_method,
            block_nbytes=_batch_nbytes(self._data, spec.batch_size),
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

"""A PyTorch IterableDataset streaming minibatches from a data node (extra: data-tools[torch])."""

from __future__ import annotations

import inspect
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

try:
    import torch
    import torch.distributed
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError as error:
    raise ImportError(
        "data_client.torch_adapter needs PyTorch. Install it with: pip install 'data-tools[torch]'"
    ) from error

from data_client.client import DataNodeClient

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from types import FrameType

    import numpy.typing as npt

    from data_client.client import BatchStream
    from data_client.merge import MultiNodeStream
    from data_wire.v1.tensor_pb2 import Cursor

__all__ = ["BatchIterableDataset"]


class BatchIterableDataset(IterableDataset[tuple[torch.Tensor, ...]]):
    """Minibatches of a node's dataset as tuples of torch tensors, in the dataset's array order.

    The node already batches, so wrap it as ``DataLoader(dataset, batch_size=None,
    num_workers=0)`` (or iterate it directly). A DataLoader that batches again (any other
    ``batch_size``, the default 1 included) would yield batches of batches, and one with
    several workers would open one full stream per worker and deliver every sample several
    times: iterating either raises RuntimeError. Each ``iter()`` opens a new client and
    stream with the same options; leaving the loop early (or dropping the iterator) cancels
    the stream so the node frees its workers.

    Data-parallel training (one process per GPU, started by ``torchrun``): initialise the
    process group first, then build the same dataset in every process with the same ``seed``.
    Each rank's iteration takes its rank and world size from ``torch.distributed`` and
    receives a disjoint part of every epoch (``batch_size`` is per rank)::

        torch.distributed.init_process_group("nccl")
        nodes = resolve_nodes("data-node.ml.svc.cluster.local:50051")  # a headless service
        dataset = BatchIterableDataset(nodes, "disks", 32, sample_random=True, seed=0)
        for image, mask in DataLoader(dataset, batch_size=None, num_workers=0):
            ...

    Every tensor owns writable memory: the received (read-only) arrays are copied once, into
    page-locked memory when pinned.
    """

    def __init__(
        self,
        source: str | Sequence[str] | Callable[[], DataNodeClient],
        dataset: str,
        batch_size: int,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        pin_memory: bool = False,
        **stream_options: Any,
    ) -> None:
        """Describe the stream; nothing connects until iteration.

        Args:
            source: The node's address or a list of several nodes' addresses (for a
                plaintext ``DataNodeClient(source)``), or a callable returning a new
                ``DataNodeClient`` (for a token or TLS, e.g.
                ``functools.partial(DataNodeClient, address, token=...)``); it must be
                picklable if the dataset is sent to another process. The client is closed when
                the iteration ends.
            dataset: Dataset name.
            batch_size: Samples per batch, >= 1.
            rank: This trainer's shard. Default None: ``torch.distributed.get_rank()`` when a
                process group is initialised at iteration time, else 0.
            world_size: Number of trainers. Default None: ``torch.distributed.get_world_size()``
                when a process group is initialised at iteration time, else 1.
            pin_memory: Yield tensors in page-locked memory for faster, asynchronous copies to
                the GPU. Only when CUDA is available; otherwise a warning says it is ignored.
                Default False.
            **stream_options: Any other keyword argument of ``DataNodeClient.stream`` (sample_random,
                seed, epochs, augmentation, preprocessor, codec, resume, ...).

        Raises:
            TypeError: ``stream_options`` holds a keyword ``DataNodeClient.stream`` does not take.
        """
        inspect.signature(DataNodeClient.stream).bind(None, dataset, batch_size, **stream_options)
        if pin_memory and not torch.cuda.is_available():
            warnings.warn(
                "pin_memory=True is ignored: CUDA is not available.", UserWarning, stacklevel=2
            )
            pin_memory = False
        self._source = source
        self._dataset = dataset
        self._batch_size = batch_size
        self._rank = rank
        self._world_size = world_size
        self._pin_memory = pin_memory
        self._stream_options = stream_options
        self._stream: BatchStream | MultiNodeStream | None = None

    @property
    def cursor(self) -> Cursor | None:
        """Cursor after the last batch of the latest iteration (pass as ``resume=`` to continue)."""
        return None if self._stream is None else self._stream.cursor

    def shard(self) -> tuple[int, int]:
        """The (rank, world_size) an iteration starting now would use."""
        rank, world_size = self._rank, self._world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank() if rank is None else rank
            world_size = torch.distributed.get_world_size() if world_size is None else world_size
        return (0 if rank is None else rank, 1 if world_size is None else world_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """A new stream's batches; refuses a DataLoader that would batch or split them again.

        Raises:
            RuntimeError: A DataLoader with automatic batching (any ``batch_size`` other than
                None) is iterating this dataset, or one with ``num_workers > 1``. Nothing is
                sent to the node.
        """
        if _is_rebatched_by_a_dataloader(self, inspect.currentframe()):
            raise RuntimeError(
                "This DataLoader would batch the node's batches again (each item would be a "
                "batch of batches): the node already batches. Use DataLoader(dataset, "
                "batch_size=None, num_workers=0) and give the batch size to "
                "BatchIterableDataset(source, name, batch_size)."
            )
        worker = get_worker_info()
        if worker is not None and worker.num_workers > 1:
            raise RuntimeError(
                f"A DataLoader with num_workers={worker.num_workers} would stream every sample "
                "once per worker. Use DataLoader(dataset, batch_size=None, num_workers=0): the "
                "node already batches and prefetches."
            )
        return self._batches(*self.shard())

    def _batches(self, rank: int, world_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
        client = self._source() if callable(self._source) else DataNodeClient(self._source)
        with client:
            self._stream = stream = client.stream(
                self._dataset,
                self._batch_size,
                rank=rank,
                world_size=world_size,
                **self._stream_options,
            )
            with stream:
                for arrays in stream:
                    yield tuple(self._to_tensor(array) for array in arrays)

    def _to_tensor(self, array: npt.NDArray[Any]) -> torch.Tensor:
        """A copy of ``array`` in memory torch owns (pinned if asked); one copy, no warning."""
        dtype = torch.from_numpy(np.empty(0, dtype=array.dtype)).dtype
        tensor = torch.empty(array.shape, dtype=dtype, pin_memory=self._pin_memory)
        tensor.numpy()[...] = array
        return tensor


# A DataLoader's fetcher calls ``iter(dataset)`` in its constructor, one or two frames above
# ``__iter__``; a few more allow for a wrapper in a later torch.
_FETCHER_FRAMES = 4


def _is_rebatched_by_a_dataloader(dataset: object, frame: FrameType | None) -> bool:
    """Whether ``iter(dataset)`` comes from a DataLoader fetcher with automatic batching.

    torch's fetchers (``torch.utils.data._utils.fetch``, private) hold the ``dataset`` and
    ``auto_collation`` (True when the loader has a ``batch_size``) they were built with; that
    is the only place a dataset can see how it will be collated, in the main process and in
    a loader worker alike.
    """
    caller = None if frame is None else frame.f_back
    for _ in range(_FETCHER_FRAMES):
        if caller is None:
            return False
        fetcher = caller.f_locals.get("self")
        auto_collation = getattr(fetcher, "auto_collation", None)
        if auto_collation is not None and getattr(fetcher, "dataset", None) is dataset:
            return bool(auto_collation)
        caller = caller.f_back
    return False

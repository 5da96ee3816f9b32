"""The datasets a node serves: configured sources opened read-only as lazy views, by name."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

import data_tools._sources
from data_node.config import LABEL_ARRAY
from data_node.errors import ConfigError, DatasetNotFoundError, PathOutsideRootError
from data_node.wire import WIRE_DTYPES
from data_tools._chunk_cache import CachedSource, cached
from data_tools._confine import Root
from data_tools._parse import did_you_mean
from data_tools.errors import ConfinementError
from data_tools.wrap import delayed_view, multi_source_array

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable, Iterator, Mapping

    from data_node.config import DatasetConfig, SourceConfig
    from data_tools._chunk_cache import ChunkCache

__all__ = [
    "Dataset",
    "DatasetRegistry",
    "ReplacedFlag",
    "open_dataset",
    "open_source",
    "wire_dtype",
]


def wire_dtype(dtype: Any) -> str:
    """The Tensor.dtype string of ``dtype``: explicit little-endian, as on the wire."""
    return str(np.dtype(dtype).newbyteorder("<").str)


class ReplacedFlag:
    """Set once a dataset's files are being replaced; never cleared.

    A plain attribute rather than a ``threading.Event``, so a ``Dataset`` still pickles (a
    copy keeps the state); reading and setting one attribute is atomic.
    """

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        """Mark the dataset replaced."""
        self._set = True

    def is_set(self) -> bool:
        """Whether the dataset was replaced."""
        return self._set


@dataclass(frozen=True)
class Dataset:
    """A served dataset: named arrays of equal length, iterated in tandem in this order.

    Attributes:
        name: The dataset's name.
        arrays: (name, array) pairs; each array is a lazy, picklable view.
        classes: The class numbers behind the ``label`` array (empty without a class_list).
        cached: Whether some of its sources read through the node's chunk cache (which
            only reads made in the node's process use).
        cache_keys: The ``CachedSource.key`` of each of its sources reading through the cache.
        replaced: Set once the files behind it are being replaced (a build job overwrites its
            output): nothing read from it since can be trusted, and its streams end.
    """

    name: str
    arrays: tuple[tuple[str, Any], ...]
    classes: tuple[int, ...] = ()
    cached: bool = False
    cache_keys: frozenset[Hashable] = frozenset()
    replaced: ReplacedFlag = field(
        default_factory=lambda: ReplacedFlag(), compare=False, repr=False
    )

    @property
    def length(self) -> int:
        """Number of samples."""
        return len(self.arrays[0][1])

    @property
    def array_names(self) -> tuple[str, ...]:
        """Array names in batch order."""
        return tuple(name for name, _ in self.arrays)

    def array(self, name: str) -> Any:
        """The array called ``name``.

        Raises:
            KeyError: No array has that name.
        """
        for array_name, array in self.arrays:
            if array_name == name:
                return array
        raise KeyError(name)


def open_source(source: SourceConfig) -> Any:
    """Open one configured source read-only, as a picklable array-like, confined to its root.

    Raises:
        ConfinementError: The source's name or content reads from outside its root.
        FileNotFoundError, OSError, KeyError, TypeError: It cannot be opened.
    """
    root = source.root or Root(source.path.parent, "source's directory")
    return data_tools._sources.open_source(source.format, source.path, source.key, root)


def open_dataset(config: DatasetConfig, cache: ChunkCache | None = None) -> Dataset:
    """Open every source of a configured dataset and check the arrays line up.

    Args:
        config: The dataset's configuration.
        cache: The decoded-chunk cache that chunked sources (HDF5, zarr, bcolz) read
            through, shared by every stream reading them in this process (the dataset is
            then ``cached``, and its streams read in this process even with worker
            processes). Default None: sources are read directly.

    Raises:
        ConfigError: A source cannot be opened, or the arrays (or their per-source parts)
            differ in length; the message names the dataset key.
        PathOutsideRootError: A source's content reads from outside its root (an HDF5
            external link, a zarr entry symlinked outside...); the message names the key
            and the file relative to the root.
    """
    prefix = f"datasets.{config.name}"
    opened: list[tuple[str, list[Any]]] = []
    for array in config.arrays:
        sources = []
        for i, source in enumerate(array.sources):
            key = f"{prefix}.arrays.{array.name}[{i}]"
            try:
                source_array = open_source(source)
                source_array.shape  # noqa: B018 - opening is lazy; make it fail here
                if cache is not None:
                    source_array = cached(source_array, cache)
            except ConfinementError as error:
                raise PathOutsideRootError(f"{key}: {error}") from None
            except Exception as error:
                raise ConfigError(f"{key}: cannot open {str(source.path)!r}: {error}") from error
            sources.append(source_array)
        opened.append((array.name, sources))
    _check_lengths(prefix, opened)

    arrays: list[tuple[str, Any]] = []
    labels = None
    for name, sources in opened:
        if len(sources) == 1 and config.class_list is None and config.maxlen is None:
            arrays.append((name, delayed_view(sources[0])))
            continue
        combined = multi_source_array(sources, class_list=config.class_list, maxlen=config.maxlen)
        arrays.append((name, combined))
        if labels is None and config.class_list is not None:
            labels = np.asarray(combined.get_labels(), dtype=np.int64)
    if labels is not None:
        arrays.append((LABEL_ARRAY, labels))
    for name, array in arrays:
        if wire_dtype(array.dtype) not in WIRE_DTYPES:
            raise ConfigError(
                f"{prefix}.arrays.{name}: Expected a dtype the wire carries {WIRE_DTYPES}. "
                f"Got {np.dtype(array.dtype)} instead."
            )
    keys = frozenset(s.key for _, sources in opened for s in sources if isinstance(s, CachedSource))
    return Dataset(config.name, tuple(arrays), tuple(config.class_list or ()), bool(keys), keys)


def _check_lengths(prefix: str, opened: list[tuple[str, list[Any]]]) -> None:
    first_name, first_sources = opened[0]
    expected = [s.shape[0] for s in first_sources]
    for name, sources in opened[1:]:
        got = [s.shape[0] for s in sources]
        if got != expected:
            raise ConfigError(
                f"{prefix}.arrays: Expected every array to have the lengths of "
                f"{first_name!r} ({expected} per source). Got {got} for {name!r} instead."
            )


class DatasetRegistry:
    """Name -> Dataset, safe to read from many RPC threads and to extend at run time."""

    def __init__(self, datasets: Iterable[Dataset] = (), cache: ChunkCache | None = None) -> None:
        # Guards _datasets and _held; notified when a name is released.
        self._lock = threading.Condition()
        self._datasets = {d.name: d for d in datasets}
        self._held: set[str] = set()
        self.cache = cache

    @classmethod
    def from_config(
        cls, configs: Mapping[str, DatasetConfig], cache: ChunkCache | None = None
    ) -> DatasetRegistry:
        """Open every configured dataset (raising ConfigError on the first bad one).

        Args:
            configs: The configured datasets by name.
            cache: The decoded-chunk cache their sources read through. Default None: none.
        """
        return cls((open_dataset(config, cache) for config in configs.values()), cache)

    def get(self, name: str) -> Dataset:
        """The dataset called ``name``.

        While the name is held by :meth:`replacing` this waits until it is released, so a
        dataset being replaced is never handed out.

        Raises:
            DatasetNotFoundError: No such dataset; the message suggests a close name.
        """
        with self._lock:
            self._lock.wait_for(lambda: name not in self._held)
            dataset = self._datasets.get(name)
            names = sorted(self._datasets)
        if dataset is None:
            raise DatasetNotFoundError(
                f"dataset: Expected one of {names}. Got {name!r} instead."
                f"{did_you_mean(name, names)}"
            )
        return dataset

    def add(self, dataset: Dataset) -> None:
        """Serve ``dataset`` from now on (replacing one of the same name)."""
        with self._lock:
            self._datasets[dataset.name] = dataset

    @contextlib.contextmanager
    def replacing(self, name: str, *, retire: bool) -> Iterator[None]:
        """Hold ``name`` while the body replaces it (``get`` waits), retiring the old one.

        Args:
            name: The dataset's name; "" holds nothing.
            retire: Mark the dataset now served as ``name`` replaced (its streams end with
                FAILED_PRECONDITION) and drop its cached chunks, before the body runs.
        """
        if not name:
            yield
            return
        with self._lock:
            self._held.add(name)
            old = self._datasets.get(name)
        if retire and old is not None:
            old.replaced.set()
            if self.cache is not None:
                self.cache.discard(old.cache_keys)
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(name)
                self._lock.notify_all()

    def __iter__(self) -> Iterator[Dataset]:
        with self._lock:
            datasets = sorted(self._datasets.values(), key=lambda d: d.name)
        return iter(datasets)

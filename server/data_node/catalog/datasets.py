"""The datasets a node serves: configured sources opened read-only as lazy views, by name.

Two kinds share one registry: the config file's datasets, fixed while the node runs, and
registered ones (``RegisterDataset``, a build job's ``register_as``), added, replaced and
removed at run time and persisted in the state dir (``catalog.dataset_store``), so a restart serves
them again. Names are unique across both; the config file wins: a registration may not take
a config-file dataset's name, and a stored registration whose name the config file has
since taken is dropped (with a warning) when the node starts. A stored registration whose
files cannot be opened at start is kept (a warning names it) but not served until a restart
finds them; ``remove`` forgets it.

A stream holds the dataset it opened. When that dataset is removed or replaced, the
registry calls the stream's ``on_retire`` (see ``serving``) and the stream ends before its
next batch (FAILED_PRECONDITION): it never reads files that may be gone or rewritten.

Lock order: the registry's lock only; callbacks run after it is released.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from data_node.config import LABEL_ARRAY
from data_node.errors import (
    ConfigError,
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetRemovedError,
    PathOutsideRootError,
)
from data_node.fields import not_one_of
from data_node.wire import WIRE_DTYPES
from data_tools import storage
from data_tools.chunk_cache import CachedSource, cached
from data_tools.errors import ConfinementError
from data_tools.wrap import delayed_view, multi_source_array

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping

    import numpy.typing as npt

    from data_node.catalog.dataset_store import DatasetStore
    from data_node.config import DatasetConfig, SourceConfig
    from data_tools.chunk_cache import ChunkCache

__all__ = [
    "CASE_ARRAY",
    "Dataset",
    "DatasetRegistry",
    "ReplacedFlag",
    "open_dataset",
    "open_source",
    "wire_dtype",
]

CASE_ARRAY = "case"
"""The array holding each sample's case number, which streams select cases by."""

logger = logging.getLogger(__name__)


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
        registered: Registered at run time (else from the config file).
        replaced: Set once the files behind it are being replaced (a build job overwrites its
            output): nothing read from it since can be trusted, and its streams end.
    """

    name: str
    arrays: tuple[tuple[str, Any], ...]
    classes: tuple[int, ...] = ()
    cached: bool = False
    cache_keys: frozenset[Hashable] = frozenset()
    registered: bool = False
    replaced: ReplacedFlag = field(
        default_factory=lambda: ReplacedFlag(), compare=False, repr=False
    )

    @functools.cached_property
    def cases(self) -> npt.NDArray[np.int64]:
        """Each sample's case number (the ``case`` array, read once).

        Raises:
            KeyError: The dataset has no ``case`` array.
            TypeError: Its values are not integers.
        """
        array = self.array(CASE_ARRAY)
        if not np.issubdtype(np.dtype(array.dtype), np.integer) or len(array.shape) != 1:
            raise TypeError(
                f"Expected a 1-D {CASE_ARRAY!r} array of integers. Got dtype {array.dtype} "
                f"and shape {tuple(array.shape)} instead."
            )
        return np.asarray(array[:], dtype=np.int64)

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
    root = source.root or storage.Root(source.path.parent, "source's directory")
    return storage.open_source(source.format, source.path, source.key, root)


def open_dataset(
    config: DatasetConfig, cache: ChunkCache | None = None, *, prefix: str | None = None
) -> Dataset:
    """Open every source of a configured dataset and check the arrays line up.

    Args:
        config: The dataset's configuration.
        cache: The decoded-chunk cache that chunked sources (HDF5, zarr, bcolz) read
            through, shared by every stream reading them in this process (the dataset is
            then ``cached``, and its streams read in this process even with worker
            processes). Default None: sources are read directly.
        prefix: What error messages put before ``arrays``. Default None:
            ``datasets.<name>``, the config file's key; "" names a request's fields.

    Raises:
        ConfigError: A source cannot be opened, or the arrays (or their per-source parts)
            differ in length; the message names the dataset key.
        PathOutsideRootError: A source's content reads from outside its root (an HDF5
            external link, a zarr entry symlinked outside...); the message names the key
            and the file relative to the root.
    """
    prefix = f"datasets.{config.name}." if prefix is None else prefix
    opened: list[tuple[str, list[Any]]] = []
    for array in config.arrays:
        sources = []
        for i, source in enumerate(array.sources):
            key = f"{prefix}arrays.{array.name}[{i}]"
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
                f"{prefix}arrays.{name}: Expected a dtype the wire carries {WIRE_DTYPES}. "
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
                f"{prefix}arrays: Expected every array to have the lengths of "
                f"{first_name!r} ({expected} per source). Got {got} for {name!r} instead."
            )


class DatasetRegistry:
    """Name -> Dataset, safe to read from many RPC threads and to change at run time."""

    def __init__(
        self,
        datasets: Iterable[Dataset] = (),
        cache: ChunkCache | None = None,
        store: DatasetStore | None = None,
    ) -> None:
        """Serve ``datasets`` (the config file's).

        Args:
            datasets: The config file's datasets.
            cache: The decoded-chunk cache registered datasets read through. Default None.
            store: Where registrations persist. Default None: they last while the node runs.
        """
        # Guards everything below; notified when a held name is released.
        self._lock = threading.Condition()
        self._held: set[str] = set()
        self._datasets = {d.name: d for d in datasets}
        self._configured = frozenset(self._datasets)
        # name -> stored entry of every registration (served or not), in registration order.
        self._registered: dict[str, dict[str, Any]] = {}
        self._watchers: dict[int, list[Callable[[], None]]] = {}
        self._store = store
        self.cache = cache

    @classmethod
    def from_config(
        cls,
        configs: Mapping[str, DatasetConfig],
        cache: ChunkCache | None = None,
        store: DatasetStore | None = None,
    ) -> DatasetRegistry:
        """Open every configured dataset, then every stored registration.

        Args:
            configs: The configured datasets by name.
            cache: The decoded-chunk cache their sources read through. Default None: none.
            store: Where registrations persist. Default None: none are loaded or saved.

        Raises:
            ConfigError: A configured dataset cannot be opened, or the store's file is not
                readable (a registration that cannot be opened is only logged).
        """
        registry = cls((open_dataset(config, cache) for config in configs.values()), cache, store)
        if store is not None:
            registry._load(store)
        return registry

    def _load(self, store: DatasetStore) -> None:
        entries = store.load()
        for entry in entries:
            name = str(entry.get("name"))
            if name in self._configured:
                logger.warning(
                    "registered dataset %r dropped: the config file now has a dataset of that "
                    "name (the config file wins)",
                    name,
                )
                continue
            self._registered[name] = entry
            try:
                dataset = open_dataset(store.parse_entry(entry), self.cache)
            except (ConfigError, PathOutsideRootError) as error:
                logger.warning("registered dataset %r not served: %s", name, error)
                continue
            self._datasets[name] = dataclasses.replace(dataset, registered=True)
        if len(self._registered) != len(entries):
            store.save(self._registered.values())

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
            raise DatasetNotFoundError(not_one_of("dataset", name, names))
        return dataset

    def register(
        self, config: DatasetConfig, *, replace: bool = False, prefix: str | None = None
    ) -> Dataset:
        """Open ``config``'s sources and serve them from now on (and after a restart).

        Args:
            config: The dataset; its sources already confined to the node's roots.
            replace: Replace a registered dataset of that name (its streams end). Default
                False.
            prefix: Put before the keys in error messages (see ``open_dataset``).

        Raises:
            ConfigError: A source cannot be opened, or the arrays do not line up.
            DatasetExistsError: The name is a config-file dataset's, or registered already
                without ``replace``.
            OSError: The state dir cannot be written; nothing changed.
        """
        dataset = dataclasses.replace(
            open_dataset(config, self.cache, prefix=prefix), registered=True
        )
        name = config.name
        with self._lock:
            if name in self._configured:
                raise DatasetExistsError(
                    f"dataset: Expected a name other than the config file's datasets "
                    f"{sorted(self._configured)}. Got {name!r} instead."
                )
            if name in self._registered and not replace:
                raise DatasetExistsError(
                    f"dataset: Expected a name not registered yet, or replace. {name!r} is "
                    "registered already."
                )
            if self._store is not None:
                entries = {**self._registered, name: self._store.dump_entry(config)}
                self._store.save(entries.values())
                self._registered = entries
            else:
                self._registered[name] = {}
            retired = self._swap(name, dataset)
        _call(retired)
        return dataset

    def remove(self, name: str) -> Dataset | None:
        """Stop serving the registered dataset ``name`` and forget it; its streams end.

        Returns:
            The dataset served until now, or None for a registration that was not served
            (its files could not be opened).

        Raises:
            DatasetRemovedError: ``name`` is a config-file dataset (FAILED_PRECONDITION).
            DatasetNotFoundError: No dataset of that name is registered.
            OSError: The state dir cannot be written; nothing changed.
        """
        with self._lock:
            if name in self._configured:
                raise DatasetRemovedError(
                    f"dataset: Expected a registered dataset. {name!r} comes from the node's "
                    "config file: edit it and restart the node to remove it."
                )
            if name not in self._registered:
                raise DatasetNotFoundError(
                    not_one_of("dataset", name, sorted(self._registered), "the registered datasets")
                )
            entries = {key: e for key, e in self._registered.items() if key != name}
            if self._store is not None:
                self._store.save(entries.values())
            self._registered = entries
            removed = self._datasets.get(name)
            retired = self._swap(name, None)
        _call(retired)
        return removed

    def is_served(self, dataset: Dataset) -> bool:
        """Whether ``dataset`` (this very object) is still served under its name."""
        with self._lock:
            return self._datasets.get(dataset.name) is dataset

    @contextlib.contextmanager
    def serving(self, dataset: Dataset, on_retire: Callable[[], None]) -> Iterator[None]:
        """Within the block, call ``on_retire`` once ``dataset`` is removed or replaced.

        Called at once if it was already. Used by a stream: its ``stop.set``.
        """
        with self._lock:
            served = self._datasets.get(dataset.name) is dataset
            if served:
                self._watchers.setdefault(id(dataset), []).append(on_retire)
        if not served:
            on_retire()
        try:
            yield
        finally:
            with self._lock:
                watchers = self._watchers.get(id(dataset), [])
                if on_retire in watchers:
                    watchers.remove(on_retire)
                if not watchers:
                    self._watchers.pop(id(dataset), None)

    def _swap(self, name: str, dataset: Dataset | None) -> list[Callable[[], None]]:
        """Serve ``dataset`` as ``name`` (None: nothing); the old one's watchers (lock held)."""
        old = self._datasets.pop(name, None)
        if dataset is not None:
            self._datasets[name] = dataset
        return [] if old is None else self._watchers.pop(id(old), [])

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

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._datasets

    def __iter__(self) -> Iterator[Dataset]:
        with self._lock:
            datasets = sorted(self._datasets.values(), key=lambda d: d.name)
        return iter(datasets)


def _call(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        callback()

"""The bcolz storage backend: picklable carrays that report lost chunks, and writing.

A bcolz carray with a chunk file deleted raises ``ValueError("chunkfile ... not found")``,
which reads as the caller's mistake; :class:`BcolzSource` turns it into
:class:`DataLossError` naming the file. bcolz itself is imported only when a carray is
opened or written. ``BACKEND`` is the format's ``StorageBackend``.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data_tools.errors import DataLossError
from data_tools.storage.base import COMPLETE_ATTRIBUTE, UNREADABLE, StorageBackend, check_existing
from data_tools.storage.confine import check_tree

if TYPE_CHECKING:
    from collections.abc import Hashable, Mapping

    import numpy.typing as npt

    from data_tools.storage.confine import Root

__all__ = ["BACKEND", "BcolzBackend", "BcolzSource"]


class BcolzSource:
    """A read-only bcolz carray named by its directory, opened in each process, safe to pickle.

    Indexing delegates to the carray. A read that fails because a chunk file is gone raises
    :class:`DataLossError` naming it.

    Args:
        rootdir: The carray's directory.
        confine_to: If given, the carray's tree is checked to stay inside this root each
            time a process opens it (bcolz opens its files by name itself: checked, not
            pinned; see ``data_tools.storage.confine.check_tree``).
    """

    def __init__(self, rootdir: str | os.PathLike[str], *, confine_to: Root | None = None) -> None:
        self.rootdir = os.fspath(rootdir)
        self.confine_to = confine_to
        self._lock = threading.Lock()
        self._carray: Any = None
        self._pid: int | None = None
        self._carray_here()

    def __repr__(self) -> str:
        return f"BcolzSource({self.rootdir!r})"

    def _carray_here(self) -> Any:
        """This process's carray, opened on first use."""
        with self._lock:
            if self._carray is None or self._pid != os.getpid():
                import bcolz  # optional backend: imported only when used

                if self.confine_to is not None:
                    check_tree(self.confine_to, self.rootdir)
                self._carray, self._pid = bcolz.open(rootdir=self.rootdir, mode="r"), os.getpid()
            return self._carray

    @property
    def shape(self) -> tuple[int, ...]:
        """The carray's shape."""
        return tuple(int(size) for size in self._carray_here().shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The carray's dtype."""
        return self._carray_here().dtype  # type: ignore[no-any-return]

    @property
    def chunklen(self) -> int:
        """Rows per chunk."""
        return int(self._carray_here().chunklen)

    @property
    def ndim(self) -> int:
        """The carray's number of dimensions."""
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> Any:
        carray = self._carray_here()
        try:
            return carray[key]
        except ValueError as error:
            missing = self._missing_chunk(int(carray.nchunks))
            if missing is None:
                raise
            raise DataLossError(
                f"bcolz chunk file {missing!r} is missing: the data is lost. Restore the carray."
            ) from error

    def _missing_chunk(self, num_chunks: int) -> str | None:
        """The path of the first chunk file that is not there, or None."""
        data = Path(self.rootdir) / "data"
        present = set(os.listdir(data)) if data.is_dir() else set()
        for number in range(num_chunks):
            if f"__{number}.blp" not in present:
                return str(data / f"__{number}.blp")
        return None

    def __getstate__(self) -> dict[str, Any]:
        return {"rootdir": self.rootdir, "confine_to": self.confine_to}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.rootdir, self.confine_to = state["rootdir"], state["confine_to"]
        self._lock = threading.Lock()
        self._carray = self._pid = None


class _BcolzTarget:
    """A bcolz carray open for writing (``BcolzBackend.create``): batches are appended."""

    def __init__(self, array: Any) -> None:
        self.array = array

    def store(self, start: int, block: npt.NDArray[Any]) -> None:
        self.array.append(block)

    def sync(self) -> None:
        self.array.flush()  # the carray's own last, partly filled chunk too

    def mark(self, complete: bool) -> None:
        self.array.attrs[COMPLETE_ATTRIBUTE] = complete

    def release(self) -> None:
        """Nothing to do: bcolz holds no handle between writes."""

    def set_root_attrs(self, attrs: Mapping[str, str]) -> None:
        for key, value in attrs.items():
            self.array.attrs[key] = value


class BcolzBackend(StorageBackend):
    """bcolz carrays: one array per directory, so arrays need no key."""

    name = "bcolz"
    reserved_options = frozenset({"array", "rootdir", "mode", "dtype"})
    request_options = frozenset({"chunklen", "cparams", "expectedlen"})

    def open(self, path: Path, key: str | None, root: Root | None) -> BcolzSource:
        return BcolzSource(path, confine_to=root)

    def chunk_rows(self, source: Any) -> int | None:
        return int(source.chunklen)

    def read_rows(
        self, source: Any, rows: npt.NDArray[np.intp], trailing: tuple[Any, ...] = ()
    ) -> npt.NDArray[Any]:
        # bcolz answers an index array followed by later keys with no rows: apply those after.
        read = np.asarray(source[rows])
        return read[(slice(None), *trailing)] if trailing else read

    def location(self, source: Any) -> tuple[Hashable, ...]:
        return (source.rootdir,)

    def check_content(self, path: Path, key: str | None, root: Root) -> None:
        check_tree(root, path)

    def default_options(
        self, batch_size: int, element_shape: tuple[int, ...], length: int | None
    ) -> dict[str, Any]:
        import bcolz

        return {
            "cparams": bcolz.cparams(clevel=5, shuffle=bcolz.SHUFFLE, cname="lz4"),
            "expectedlen": batch_size if length is None else length,
        }

    def options_from_json(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """As the default, and a ``cparams`` object becomes ``bcolz.cparams(**cparams)``."""
        kwargs = super().options_from_json(options)
        if isinstance(kwargs.get("cparams"), dict):
            import bcolz

            kwargs["cparams"] = bcolz.cparams(**kwargs["cparams"])
        return kwargs

    def create(
        self,
        path: str,
        name: str | None,
        element_shape: tuple[int, ...],
        dtype: np.dtype[Any],
        append: bool,
        options: dict[str, Any],
    ) -> _BcolzTarget:
        import bcolz

        if append and os.path.exists(path):
            carray = bcolz.open(path, mode="a")
            if not isinstance(carray, bcolz.carray):
                raise TypeError(
                    f"Expected save_path to hold a bcolz carray. Got {type(carray).__name__}."
                )
        else:
            empty = np.empty((0, *element_shape), dtype=dtype)
            carray = bcolz.carray(empty, rootdir=path, mode="w", **options)
        check_existing("bcolz carray", carray, element_shape, dtype)
        return _BcolzTarget(carray)

    def array_location(self, container: str, name: str) -> tuple[str, str | None]:
        """One carray per directory: ``container/name``, with no key."""
        return os.path.join(container, name), None

    def new_container(self, container: str) -> None:
        """Replace ``container`` with an empty directory for the carrays to be written in it."""
        shutil.rmtree(container, ignore_errors=True)
        os.makedirs(container)

    def holds(self, path: str) -> bool:
        return os.path.isdir(path)

    def is_complete(self, path: str, array_name: str | None) -> bool:
        import bcolz

        carray_dir = path if array_name is None else os.path.join(path, array_name)
        if not os.path.isdir(os.path.join(carray_dir, "meta")):
            return False
        try:
            return bool(
                bcolz.open(carray_dir, mode="r").attrs.getall().get(COMPLETE_ATTRIBUTE, False)
            )
        except UNREADABLE:
            return False

    def is_container_complete(self, container: str) -> bool:
        """Whether every carray in ``container`` (at least one) is complete."""
        if not os.path.isdir(container):
            return False
        names = os.listdir(container)
        return bool(names) and all(self.is_complete(container, name) for name in names)


BACKEND = BcolzBackend()

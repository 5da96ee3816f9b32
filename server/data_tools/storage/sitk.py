"""The SimpleITK storage backend: medical images (NIfTI, MetaImage, NRRD), read confined.

SimpleITK opens files by name, and a MetaImage (``ElementDataFile``) or NRRD (``data
file``) header may name its data in other files, anywhere. So the header is opened
confined first (``data_tools.storage.confine``), the data files it names are read from that very
descriptor, each is opened confined too, and SimpleITK is handed only pinned names
(:class:`~data_tools.storage.confine.PinnedFiles`) that resolve to those verified descriptors:
a data file outside the root (by an absolute name, ``..`` or a symlink) is refused, and a
file swapped for a symlink after the check is never what SimpleITK reads.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data_tools.errors import ConfinementError
from data_tools.storage.base import FORMATS, StorageBackend
from data_tools.storage.confine import PinnedFiles, Root

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterator

    import numpy.typing as npt

__all__ = [
    "BACKEND",
    "IMAGE_SUFFIXES",
    "SitkBackend",
    "SitkImage",
    "describe_image",
    "image_spacing",
    "load_sitk",
    "read_image",
    "read_sitk_image",
]

IMAGE_SUFFIXES = FORMATS["sitk"].suffixes
# A header names its data files within this many bytes, and at most this many of them.
MAX_HEADER_BYTES = 1 << 20
MAX_DATA_FILES = 256
# A numbered file pattern "name%03d.raw first last step [subdimension]": one "%d" with at
# most two digits of width, so a name can never be made huge ("%999999999d").
_PATTERN = re.compile(r"([^%\s]*%0?\d?\d?d[^%\s]*)\s+(-?\d+)\s+(-?\d+)\s+(-?\d+)(\s+\d+)?")


def describe_image(path: Path, root: Root) -> tuple[int, ...]:
    """The shape of the image at ``path`` as read (z, y, x[, components]), from its header.

    Raises:
        ConfinementError: The image or a data file it names lies outside ``root``.
        ValueError: The header names more data files than allowed, or no data file.
        RuntimeError, OSError: SimpleITK cannot read it.
    """
    with _pinned(path, root) as pinned:
        reader = load_sitk().ImageFileReader()
        reader.SetFileName(str(pinned))
        reader.ReadImageInformation()
        shape = tuple(int(n) for n in reversed(reader.GetSize()))
        components = int(reader.GetNumberOfComponents())
    return shape if components == 1 else (*shape, components)


def image_spacing(path: Path, root: Root) -> tuple[float, ...]:
    """The voxel spacing (x, y, z) of the image at ``path``, from its header.

    Raises as ``describe_image``.
    """
    with _pinned(path, root) as pinned:
        reader = load_sitk().ImageFileReader()
        reader.SetFileName(str(pinned))
        reader.ReadImageInformation()
        return tuple(float(s) for s in reader.GetSpacing())


def read_sitk_image(path: Path, root: Root) -> Any:
    """The image at ``path`` as a SimpleITK image (with its geometry); raises as
    ``describe_image``."""
    with _pinned(path, root) as pinned:
        return load_sitk().ReadImage(str(pinned))


def read_image(path: Path, root: Root) -> npt.NDArray[Any]:
    """The image at ``path`` as a (z, y, x[, components]) array; raises as ``describe_image``."""
    return np.asarray(load_sitk().GetArrayFromImage(read_sitk_image(path, root)))


@contextlib.contextmanager
def _pinned(path: Path, root: Root) -> Iterator[Path]:
    """The image's header and data files, pinned; yields the header's pinned name."""
    with PinnedFiles(root) as files:
        header = files.add(path, path.name)  # pinned first: the names are read from it
        with header.open("rb") as file:
            text = file.read(MAX_HEADER_BYTES + 1).decode("latin-1")
        names = [posixpath.normpath(name) for name in _data_files(path.name.lower(), text)]
        if any(posixpath.isabs(name) for name in names):
            raise root.refuse(path, "a data file named by an absolute path")
        # Lay the names out around the header as they are around the original, with the
        # header deep enough in the private directory for their leading "..".
        depth = max((_ups(name) for name in names), default=0)
        if depth:
            deeper = files.directory.joinpath(*["up"] * depth, path.name)
            deeper.parent.mkdir(parents=True)
            header = header.rename(deeper)
        for name in dict.fromkeys(names):
            ups = _ups(name)
            if name == "." or ups == len(name.split("/")):
                raise ValueError(f"Expected a data file name. Got {name!r} instead.")
            pinned = posixpath.join(*["up"] * (depth - ups), *name.split("/")[ups:])
            try:
                files.add(path.parent / name, pinned)
            except ConfinementError:
                raise root.refuse(path, f"a data file {name!r} that resolves outside it") from None
        yield header


def _ups(name: str) -> int:
    parts = name.split("/")
    return next((i for i, part in enumerate(parts) if part != ".."), len(parts))


def _data_files(name: str, text: str) -> list[str]:
    """The data file names a header names (none: the data follows the header).

    ``text`` is the header file's first ``MAX_HEADER_BYTES + 1`` bytes. A LIST runs to the
    end of the file, so the whole file must be in ``text``, and every word of it counts as
    a name: whatever SimpleITK may take for one is checked.
    """
    lines = text.splitlines()
    if name.endswith((".mha", ".mhd")):
        for number, line in enumerate(lines):
            key, sep, value = line.partition("=")
            if sep and key.strip().lower() == "elementdatafile":
                return _expand(value.strip(), lines[number + 1 :], text, local="local")
        raise ValueError(
            f"Expected a MetaImage header naming its ElementDataFile within its first "
            f"{MAX_HEADER_BYTES} bytes. Got none in {name!r} instead."
        )
    if name.endswith(".nrrd"):
        for number, line in enumerate(lines):
            if not line.strip():
                break  # the header ends at the first blank line
            key, sep, value = line.partition(":")
            if sep and not value.startswith("=") and key.strip().lower() in _NRRD_DATA_KEYS:
                return _expand(value.strip(), lines[number + 1 :], text, local=None)
    return []


_NRRD_DATA_KEYS = ("data file", "datafile")


def _expand(value: str, following: list[str], text: str, *, local: str | None) -> list[str]:
    """A data file field's names: one name, a LIST of the following lines, or a pattern."""
    if local is not None and value.lower() == local:
        return []
    if value.split(maxsplit=1)[:1] == ["LIST"]:
        if len(text) > MAX_HEADER_BYTES:
            raise ValueError(
                f"Expected a header listing its data files within {MAX_HEADER_BYTES} bytes. "
                "Got a longer one instead."
            )
        names = [word for line in following for word in line.split()]
    elif match := _PATTERN.fullmatch(value):
        first, last, step = (int(match.group(i)) for i in (2, 3, 4))
        numbers = range(first, last + 1, step) if step else range(0)
        _check_count(len(numbers))
        names = [match.group(1) % number for number in numbers]
    else:
        names = [value]
    _check_count(len(names))
    if not all(names):
        raise ValueError("Expected data file names. Got an empty name instead.")
    return names


def _check_count(count: int) -> None:
    if count > MAX_DATA_FILES:
        raise ValueError(
            f"Expected at most {MAX_DATA_FILES} data files per image (each is held open "
            f"while it is read). Got {count} instead."
        )


def load_sitk() -> Any:
    """The SimpleITK module, or an ImportError saying how to install it."""
    try:
        import SimpleITK
    except ImportError as error:  # pragma: no cover - a dependency of data-tools
        raise ImportError(
            "Reading medical images needs SimpleITK, a dependency of data-tools: "
            "pip install SimpleITK."
        ) from error
    return SimpleITK


class SitkImage:
    """A medical image named by its path, read whole with SimpleITK in each process; picklable.

    ``shape`` comes from the header; the first read (``dtype``, indexing) reads the image
    and keeps its array in this process. Pickling keeps only the path and root.

    Args:
        path: The image file (its header, for a MetaImage or NRRD with separate data).
        root: The directory the image and the data files its header names must lie in.
            Default None: the image's own directory.
    """

    def __init__(self, path: str | os.PathLike[str], root: Root | None = None) -> None:
        self.path = Path(path)
        self.root = root or Root(self.path.parent, "image's directory")
        self._array: npt.NDArray[Any] | None = None
        self._pid: int | None = None

    def __repr__(self) -> str:
        return f"SitkImage({str(self.path)!r})"

    def _read(self) -> npt.NDArray[Any]:
        if self._array is None or self._pid != os.getpid():
            self._array, self._pid = read_image(self.path, self.root), os.getpid()
        return self._array

    @property
    def shape(self) -> tuple[int, ...]:
        """The image's shape as read: (z, y, x[, components])."""
        if self._array is not None:
            return tuple(self._array.shape)
        return describe_image(self.path, self.root)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The image's dtype (reads the image)."""
        return self._read().dtype

    @property
    def ndim(self) -> int:
        """The image's number of dimensions."""
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> Any:
        return self._read()[key]

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "root": self.root}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["root"])  # type: ignore[misc]


class SitkBackend(StorageBackend):
    """Medical images read with SimpleITK: one image per file, decoded whole (one chunk)."""

    name = "sitk"

    def open(self, path: Path, key: str | None, root: Root | None) -> SitkImage:
        """The image at ``path`` (``key`` is ignored); its header is checked here."""
        image = SitkImage(path, root)
        image.shape  # noqa: B018 - the header is read (and confined) at the opening
        return image

    def chunk_rows(self, source: Any) -> int | None:
        return len(source)

    def location(self, source: Any) -> tuple[Hashable, ...]:
        return (os.path.abspath(source.path),)

    def check_content(self, path: Path, key: str | None, root: Root) -> None:
        with _pinned(path, root):
            pass


BACKEND = SitkBackend()

"""The exception hierarchy of data_tools.

Every class subclasses the builtin a caller would catch for that failure, so
``except IndexError`` keeps working, and the data node maps each class to one gRPC
status in a single table (``data_node/rpc/status.py``).
"""

from __future__ import annotations

__all__ = [
    "ConfinementError",
    "DataLossError",
    "DataToolsError",
    "SourceChangedError",
    "UnsupportedIndexError",
    "ViewIndexError",
    "WorkerError",
    "WriterClosedError",
    "WriterError",
    "WriterOverflowError",
]


class DataToolsError(Exception):
    """Base class of every error data_tools raises on purpose."""


class ViewIndexError(DataToolsError, IndexError):
    """An index is out of range for a view, as numpy's IndexError."""


class UnsupportedIndexError(DataToolsError, IndexError):
    """An index views do not accept: ``None``, a second Ellipsis, a float, a 2-D index array..."""


class SourceChangedError(DataToolsError, OSError):
    """A source file changed or vanished while open, so what was read from it is suspect."""


class ConfinementError(DataToolsError, PermissionError):
    """A file's name or content would read from outside the root it is confined to.

    The message names the file relative to that root, never by an absolute server path.
    """


class DataLossError(DataToolsError, OSError):
    """Stored data is gone or damaged: a chunk of an array written complete is missing."""


class WriterError(DataToolsError, RuntimeError):
    """A writer could not write, flush or finish its array."""


class WriterClosedError(WriterError):
    """A write was attempted after the writer was closed."""


class WriterOverflowError(DataToolsError, ValueError):
    """More elements were written than a fixed-length writer holds."""


class WorkerError(DataToolsError, RuntimeError):
    """A pipeline worker failed or died; the message carries the original traceback text."""

"""Defaults both ends of the wire share, so that node and client agree without importing each other.

Hand-written (the rest of data_wire is generated).
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_ADDRESS", "DEFAULT_MAX_MESSAGE_BYTES"]

DEFAULT_ADDRESS: Final = "127.0.0.1:50051"
"""Where a node listens (``node.listen``) and the CLIs dial, unless told otherwise."""

DEFAULT_MAX_MESSAGE_BYTES: Final = 512 * 1024 * 1024
"""Largest message either way, in bytes (one Batch is one message): the node's
``limits.max_message_bytes`` and ``DataNodeClient(max_message_bytes=...)``."""

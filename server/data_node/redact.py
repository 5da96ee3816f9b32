"""Messages that leave the node name no server path and carry no traceback.

Every error message a client can read (a call's status details, a job's error) passes
through a :class:`PathRedactor`: a path under one of the node's roots (``data_root``,
``output_root``, ``state_dir``) is named relative to its root, as requests name it; any
other absolute path becomes ``<server path>``; a traceback (a worker's, quoted in a
message) is cut off, as it names the node's files. The node's log keeps the full text.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from data_node.config import NodeConfig

__all__ = ["HIDDEN_PATH", "PathRedactor"]

HIDDEN_PATH = "<server path>"
# An absolute path of two or more parts whose first part has no dot (which leaves RPC names
# such as /data_wire.v1.DataNode/StreamBatches alone), not inside a word, number or URL.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/[\w~+-]+(?:/[^\s'\"/,;:()\[\]]+)+/?")
_TRACEBACK = re.compile(
    r"\s*(?:Worker traceback:|Traceback \(most recent call last\):).*", re.DOTALL
)


class PathRedactor:
    """Rewrites messages for clients: root-relative paths, no other server path, no traceback.

    Args:
        roots: Directories whose paths are named relative to them (the longest first wins).
    """

    def __init__(self, roots: Iterable[Path]) -> None:
        prefixes = set()
        for root in roots:
            for form in (os.path.abspath(root), os.path.realpath(root)):
                prefixes.add(form.rstrip("/"))
        ordered = sorted((p for p in prefixes if p), key=len, reverse=True)
        self._roots = (
            re.compile("|".join(rf"{re.escape(p)}(?:/|(?=[\s'\",;:)\]]|$))" for p in ordered))
            if ordered
            else None
        )

    @classmethod
    def from_config(cls, config: NodeConfig) -> PathRedactor:
        """The redactor of a node's data, output and state directories."""
        return cls((config.data_root, config.output_root, config.state_dir))

    def __call__(self, message: str) -> str:
        """``message`` for a client: relative paths, nothing else of the server's files."""
        text = _TRACEBACK.sub(" (traceback in the node's log)", message)
        if self._roots is not None:
            text = self._roots.sub(_relative, text)
        return _ABSOLUTE_PATH.sub(HIDDEN_PATH, text)


def _relative(match: re.Match[str]) -> str:
    """A root followed by "/" disappears; the root itself alone becomes "."."""
    return "" if match.group().endswith("/") else "."

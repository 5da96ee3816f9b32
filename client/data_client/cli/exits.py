"""The exit statuses of both command lines (``data-client`` and ``data-node``), in one place.

| status | meaning |
|---|---|
| 0 | done; a job that was waited for succeeded; ``data-node serve`` stopped by SIGTERM or Ctrl-C |
| 1 | the node refused or failed the request (any gRPC status: the message names it and its likely cause), no node could be reached, or a job waited for failed or was cancelled |
| 2 | usage: invalid flags or values, an unreadable local file, a job id prefix that names several jobs |
| 130 | interrupted (Ctrl-C; not ``data-node serve``); the one line printed says what keeps running on the node |
"""

from __future__ import annotations

from typing import Final

__all__ = ["FAILED", "INTERRUPTED", "OK", "USAGE", "Interrupted"]

OK: Final = 0
FAILED: Final = 1
USAGE: Final = 2  # also argparse's status for bad arguments
INTERRUPTED: Final = 130


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with the line that says what keeps running on the node."""

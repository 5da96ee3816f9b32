"""The library's argument checks, public for the data node: ``parse_*`` and ``did_you_mean``.

Each ``parse_*`` validates one value at the edge and raises TypeError or ValueError with a
message of the form "Expected X. Got Y instead.", naming the argument.
"""

from __future__ import annotations

from data_tools._parse import (
    MAX_SUGGESTED_CHARS,
    did_you_mean,
    parse_non_negative_int,
    parse_positive_int,
)

__all__ = [
    "MAX_SUGGESTED_CHARS",
    "did_you_mean",
    "parse_non_negative_int",
    "parse_positive_int",
]

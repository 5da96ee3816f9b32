"""Checks of the client's arguments, so that a mistake fails before any network traffic.

Messages read "Expected <argument> to be <what it accepts>. Got <value> instead.", as the
library's do (the client cannot import it; this is the client's one copy of such checks).
"""

from __future__ import annotations

import difflib
import math
import numbers
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "MAX_SUGGESTED_CHARS",
    "did_you_mean",
    "is_int",
    "parse_int",
    "parse_name",
    "parse_option",
    "parse_positive_float",
]


# The longest value a suggestion is sought for (the library's and node's cap too).
MAX_SUGGESTED_CHARS = 64


def is_int(value: Any) -> bool:
    """``value`` is an integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def parse_name(argument: str, value: Any) -> str:
    """``value`` if it is a non-empty string, else TypeError naming ``argument``."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"Expected {argument} to be a non-empty string. Got {value!r} instead.")
    return value


def parse_int(argument: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum], else TypeError/ValueError naming ``argument``."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Expected {argument} to be an integer. Got {value!r} instead.")
    result = int(value)
    if result < minimum or (maximum is not None and result > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"Expected {argument} to be an integer {bounds}. Got {result} instead.")
    return result


def parse_positive_float(argument: str, value: Any) -> float:
    """``value`` as a finite float > 0, else TypeError/ValueError naming ``argument``."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected {argument} to be a number. Got {value!r} instead.")
    result = float(value)
    if not (math.isfinite(result) and result > 0):
        raise ValueError(f"Expected {argument} to be a finite number > 0. Got {value!r} instead.")
    return result


def parse_option(argument: str, value: Any, options: Iterable[str]) -> str:
    """``value`` if it is one of ``options``, else ValueError naming ``argument`` (with a hint)."""
    choices = sorted(options)
    if isinstance(value, str) and value in choices:
        return value
    hint = did_you_mean(value, choices) if isinstance(value, str) else ""
    raise ValueError(f"Expected {argument} to be one of {choices}. Got {value!r} instead.{hint}")


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """ " Did you mean 'x'?" naming the choice closest to ``value``, or "" if none is close.

    Only a value of at most ``MAX_SUGGESTED_CHARS`` characters gets a suggestion: matching
    costs time quadratic in the lengths, and no choice is close to a longer one anyway.
    """
    if len(value) > MAX_SUGGESTED_CHARS:
        return ""
    close = difflib.get_close_matches(value, sorted(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""

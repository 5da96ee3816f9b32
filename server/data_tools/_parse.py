"""Argument checks for the public API: validate once at the edge, in one message style.

Messages read "Expected <argument> to be <what it accepts>. Got <value> instead." so
that every error names the argument and what would have been accepted.
"""

from __future__ import annotations

import difflib
import numbers
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "MAX_SUGGESTED_CHARS",
    "did_you_mean",
    "parse_bool",
    "parse_dtype",
    "parse_int",
    "parse_non_negative_int",
    "parse_option",
    "parse_path",
    "parse_positive_int",
    "parse_shape",
]

MAX_SUGGESTED_CHARS = 64
"""Longest name that gets a "did you mean" suggestion (see ``did_you_mean``)."""


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def parse_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """Return ``value`` as an int, or raise TypeError/ValueError naming ``name``."""
    if not _is_integer(value):
        raise TypeError(f"Expected {name} to be an integer. Got {value!r} instead.")
    result = int(value)
    if minimum is not None and result < minimum:
        raise ValueError(f"Expected {name} to be an integer >= {minimum}. Got {result} instead.")
    return result


def parse_positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an int >= 1, or raise naming ``name``."""
    return parse_int(name, value, minimum=1)


def parse_non_negative_int(name: str, value: Any) -> int:
    """Return ``value`` as an int >= 0, or raise naming ``name``."""
    return parse_int(name, value, minimum=0)


def parse_shape(name: str, value: Any) -> tuple[int, ...]:
    """Return ``value`` (an int or a sequence of ints >= 0) as a shape tuple."""
    if _is_integer(value):
        value = (value,)
    if not isinstance(value, Sequence | np.ndarray) or isinstance(value, str | bytes):
        raise TypeError(
            f"Expected {name} to be a shape (a sequence of integers >= 0). Got {value!r} instead."
        )
    return tuple(parse_non_negative_int(f"{name}[{i}]", v) for i, v in enumerate(value))


def parse_dtype(name: str, value: Any) -> np.dtype[Any]:
    """Return ``value`` as a numpy dtype, or raise TypeError naming ``name``."""
    try:
        dtype: np.dtype[Any] = np.dtype(value)
    except TypeError as error:
        raise TypeError(f"Expected {name} to be a numpy dtype. Got {value!r} instead.") from error
    return dtype


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """ " Did you mean 'x'?" naming the choice closest to ``value``, or "" if none is close.

    Only a name of at most ``MAX_SUGGESTED_CHARS`` characters gets a suggestion: matching
    costs time quadratic in the lengths, and no choice is close to a longer one anyway.
    """
    if len(value) > MAX_SUGGESTED_CHARS:
        return ""
    close = difflib.get_close_matches(value, sorted(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def parse_option(name: str, value: Any, options: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``options``; else raise ValueError with a suggestion."""
    choices = sorted(options)
    if isinstance(value, str) and value in choices:
        return value
    hint = did_you_mean(value, choices) if isinstance(value, str) else ""
    raise ValueError(f"Expected {name} to be one of {choices}. Got {value!r} instead.{hint}")


def parse_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool (Python or numpy), or raise TypeError naming ``name``."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"Expected {name} to be True or False. Got {value!r} instead.")
    return bool(value)


def parse_path(name: str, value: Any) -> str:
    """Return ``value`` (a non-empty str or os.PathLike) as a str, or raise naming ``name``."""
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise TypeError(
            f"Expected {name} to be a non-empty path (str or os.PathLike). Got {value!r} instead."
        )
    return os.fsdecode(value)

"""Checks of request fields shared by the request parsers, in the node's message style."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from data_node.errors import RequestError
from data_tools.parsing import MAX_SUGGESTED_CHARS, did_you_mean

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["bounded", "choice", "field_first", "not_one_of", "shown"]


def bounded(field: str, value: int, low: int, high: int | None) -> int:
    """``value`` if it lies in [low, high] (no upper end when None).

    Raises:
        RequestError: "<field>: Expected an integer in [low, high]. Got <value> instead."
    """
    if value < low or (high is not None and value > high):
        accepted = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
        raise RequestError(f"{field}: Expected {accepted}. Got {value} instead.")
    return value


def choice(field: str, value: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``: the node's one "did you mean" check.

    Raises:
        RequestError: The message of :func:`not_one_of`.
    """
    if value in choices:
        return value
    raise RequestError(not_one_of(field, value, choices))


def field_first(message: str, fields: Mapping[str, str]) -> str:
    """A library message "Expected <keyword> to be <what>" as "<field>: Expected <what>".

    The library names its keyword arguments, a request its own fields: ``fields`` maps the
    keywords to reword to the request's names. Any other message is returned unchanged.
    """
    found = re.fullmatch(r"Expected (\w+) to be (.*)", message, re.DOTALL)
    if found is None or found.group(1) not in fields:
        return message
    return f"{fields[found.group(1)]}: Expected {found.group(2)}"


def not_one_of(field: str, value: str, choices: Sequence[str], kind: str = "") -> str:
    """The message for ``value`` not among ``choices``, naming ``field``.

    "<field>: Expected one of <kind> [...]. Got 'x' instead.", then " Did you mean 'y'?"
    when a choice is close (``kind``, optional, says what the choices are).
    """
    return (
        f"{field}: Expected one of {kind + ' ' if kind else ''}{list(choices)}. "
        f"Got {shown(value)} instead."
        f"{did_you_mean(value, choices)}"
    )


def shown(value: str) -> str:
    """``value`` quoted for a message, cut short: a message never echoes a huge string."""
    if len(value) <= MAX_SUGGESTED_CHARS:
        return repr(value)
    return f"{value[:MAX_SUGGESTED_CHARS]!r}... ({len(value)} characters)"

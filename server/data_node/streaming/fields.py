"""Checks of request fields shared by the request parsers, in the node's message style."""

from __future__ import annotations

from data_node.errors import RequestError

__all__ = ["bounded"]


def bounded(field: str, value: int, low: int, high: int | None) -> int:
    """``value`` if it lies in [low, high] (no upper end when None).

    Raises:
        RequestError: "<field>: Expected an integer in [low, high]. Got <value> instead."
    """
    if value < low or (high is not None and value > high):
        accepted = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
        raise RequestError(f"{field}: Expected {accepted}. Got {value} instead.")
    return value

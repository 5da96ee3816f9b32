"""The one parser of a node's ``HOST:PORT`` address, shared by the client, its CLI and the
node's ``node.listen`` (hand-written, like ``defaults``).

gRPC reads a bare host as port 443 and an unbracketed IPv6 address as host and port, so both
are refused here rather than silently dialled.
"""

from __future__ import annotations

from typing import Any

__all__ = ["split_address"]


def split_address(address: Any, field: str, *, min_port: int = 1) -> tuple[str, int]:
    """(host, port) of ``HOST:PORT`` or ``[IPV6]:PORT``, the host without brackets.

    Args:
        address: The address to parse.
        field: The name the error messages give it (a parameter, a flag, a config key).
        min_port: The lowest port accepted. Default 1 (0, "any free port", only to listen).

    Raises:
        TypeError: ``address`` is not a string.
        ValueError: It names no host, no port in [min_port, 65535], or an IPv6 host
            without brackets (the message names ``field``).
    """
    if not isinstance(address, str):
        raise TypeError(f"{field}: Expected a 'HOST:PORT' string. Got {address!r} instead.")
    host, _, port = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if ":" in host and not host.startswith("["):
        raise ValueError(
            f"{field}: Expected an IPv6 host in brackets: write '[{address}]:PORT'. "
            f"Got {address!r} instead."
        )
    host = host[1:-1] if bracketed else host
    if not host or "[" in host or not port.isdigit() or not min_port <= int(port) <= 65535:
        raise ValueError(
            f"{field}: Expected HOST:PORT with a port in [{min_port}, 65535] (without one "
            f"gRPC would dial port 443). Got {address!r} instead."
        )
    return host, int(port)

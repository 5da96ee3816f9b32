"""Which nodes a client reads from: addresses as given, or every address of one DNS name."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from data_wire.addresses import split_address

__all__ = ["GetAddrInfo", "parse_addresses", "resolve_nodes"]

GetAddrInfo: TypeAlias = Callable[..., Sequence[tuple[Any, ...]]]
"""The signature of ``socket.getaddrinfo``."""


def resolve_nodes(target: str, *, getaddrinfo: GetAddrInfo = socket.getaddrinfo) -> list[str]:
    """Every address a DNS name resolves to, each with the target's port: one per node.

    A headless Kubernetes service (``clusterIP: None``) resolves to one A/AAAA record per
    ready pod, so ``DataNodeClient(resolve_nodes("data-node.ns.svc.cluster.local:50051"))``
    reads from every node of the service. The name is resolved once, now: a pod that comes
    up later is not used by this client (a node that goes away is failed over).

    With TLS, the node certificates name the service, not the pod IPs: pass
    ``options=[("grpc.ssl_target_name_override", "<service name>")]`` to the client.

    Args:
        target: ``host:port``; ``host`` a DNS name or an IP address (IPv6 in brackets,
            ``[::1]:50051``), ``port`` in [1, 65535].
        getaddrinfo: The resolver, called as ``socket.getaddrinfo(host, port,
            type=socket.SOCK_STREAM)``. Default ``socket.getaddrinfo`` (tests pass a fake).

    Returns:
        ``ip:port`` strings (``[ip]:port`` for IPv6) in the resolver's order, each once.

    Raises:
        TypeError: ``target`` is not a string.
        ValueError: ``target`` is not ``host:port`` with a valid port (IPv6 in brackets).
        OSError: The name does not resolve (``socket.gaierror``).
    """
    host, port = split_address(target, "target")
    found: list[str] = []
    for family, _, _, _, sockaddr in getaddrinfo(host, port, type=socket.SOCK_STREAM):
        ip = str(sockaddr[0])
        address = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
        if address not in found:
            found.append(address)
    if not found:
        raise OSError(f"{host!r} resolved to no address.")
    return found


def parse_addresses(address: str | Sequence[str]) -> tuple[str, ...]:
    """One node's ``host:port`` address, or several distinct ones, as a non-empty tuple.

    Raises:
        TypeError: ``address`` is neither a string nor a sequence of strings.
        ValueError: The sequence is empty, holds an empty string, or repeats an address, or
            an address is not ``host:port`` with a port in [1, 65535] (IPv6 in brackets).
    """
    if isinstance(address, str):
        addresses: tuple[Any, ...] = (address,)
    elif isinstance(address, Sequence):
        addresses = tuple(address)
    else:
        raise TypeError(
            "Expected address to be a 'host:port' string or a sequence of them. "
            f"Got {address!r} instead."
        )
    if not addresses or not all(isinstance(a, str) and a for a in addresses):
        raise ValueError(
            f"Expected address to hold one or more non-empty strings. Got {address!r} instead."
        )
    repeated = sorted({a for a in addresses if addresses.count(a) > 1})
    if repeated:
        raise ValueError(
            "Expected distinct node addresses (each node gets its own part of every epoch). "
            f"Got {', '.join(repeated)} more than once instead."
        )
    for one in addresses:
        split_address(one, "address")
    return addresses

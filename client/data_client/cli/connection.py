"""The connection flags both command lines share, and what a failed connection means.

Every command that talks to a node takes the same flags: ``--address HOST:PORT`` (repeat it
for several nodes; the port is required), ``--resolve``, ``--ca``/``--cert``/``--key``
(TLS and mutual TLS), ``--tls`` and a bearer token from ``--token-file FILE`` or
``--token-env VAR``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from data_client.client import DataNodeClient, TlsConfig
from data_client.nodes import resolve_nodes
from data_wire.addresses import split_address
from data_wire.defaults import DEFAULT_ADDRESS

__all__ = [
    "DEFAULT_ADDRESS",
    "add_connection_arguments",
    "connect",
    "node_address",
    "node_addresses",
    "read_token",
]


def node_address(text: str) -> str:
    """An argparse type: ``HOST:PORT`` or ``[IPV6]:PORT`` with a port in [1, 65535].

    A bare host is refused: gRPC would silently dial port 443.
    """
    try:
        split_address(text, "--address")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the connection flags to ``parser`` (read them back with :func:`connect`)."""
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--address",
        action="append",
        type=node_address,
        metavar="HOST:PORT",
        help=f"a node; repeat for several nodes (default {DEFAULT_ADDRESS})",
    )
    group.add_argument(
        "--resolve", action="store_true", help="use every address each --address name resolves to"
    )
    group.add_argument("--ca", type=Path, metavar="PEM", help="CA bundle the node must chain to")
    group.add_argument("--cert", type=Path, metavar="PEM", help="client certificate (mutual TLS)")
    group.add_argument("--key", type=Path, metavar="PEM", help="the client certificate's key")
    group.add_argument("--tls", action="store_true", help="TLS with gRPC's bundled roots")
    token = group.add_mutually_exclusive_group()
    token.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="bearer token: the first word of FILE's first line that is not a # comment",
    )
    token.add_argument("--token-env", metavar="VAR", help="bearer token: environment variable")


def read_token(path: Path) -> str:
    """The first word of the first line of ``path`` that is neither blank nor a # comment.

    Raises:
        OSError: The file cannot be read.
        ValueError: It holds no token.
    """
    for line in path.read_text().splitlines():
        words = line.split()
        if words and not words[0].startswith("#"):
            return words[0]
    raise ValueError(f"--token-file: Expected a token. {str(path)!r} holds none.")


def node_addresses(args: argparse.Namespace) -> list[str]:
    """The nodes ``args`` names: each --address, or every address it resolves to (--resolve).

    Raises:
        OSError: A --resolve name does not resolve.
    """
    addresses: list[str] = args.address or [DEFAULT_ADDRESS]
    if args.resolve:
        addresses = [address for name in addresses for address in resolve_nodes(name)]
    return addresses


def connect(
    args: argparse.Namespace,
    *,
    addresses: list[str] | None = None,
    timeout: float | None = 30.0,
    token: bool = True,
) -> DataNodeClient:
    """A client of the nodes, TLS and token that ``args`` names.

    Args:
        args: The parsed connection flags.
        addresses: The nodes to connect to. Default None: ``node_addresses(args)``.
        timeout: Seconds allowed to each unary call. Default 30.
        token: Send the bearer token the flags name. Default True.

    Raises:
        OSError: A PEM or token file cannot be read, or a --resolve name does not resolve.
        ValueError: --cert without --key (or the reverse), no token where one is named.
    """
    if addresses is None:
        addresses = node_addresses(args)
    tls: TlsConfig | bool = args.tls
    if args.ca or args.cert or args.key:
        tls = TlsConfig(ca=args.ca, cert=args.cert, key=args.key)
    bearer = None
    if token and args.token_file is not None:
        bearer = read_token(args.token_file)
    elif token and args.token_env is not None:
        bearer = os.environ.get(args.token_env)
        if not bearer:
            raise ValueError(
                f"--token-env: Expected the environment variable {args.token_env} to hold the "
                "node's bearer token. It is unset or empty."
            )
    return DataNodeClient(addresses, bearer, tls, timeout=timeout)

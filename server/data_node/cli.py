"""The ``data-node`` command: the node's own life: ``serve`` a config, check its ``health``,
write the ``demo-data``.

What a remote user does (datasets, streams, build jobs) is the ``data-client`` command's.
Both share the connection flags (``data_client.cli.connection``) and the exit statuses
(``data_client.cli.exits``): 0 done (``serve``: stopped by SIGTERM or Ctrl-C), 1 the node
refused or is not serving, 2 invalid arguments or config, 130 ``health`` or ``demo-data``
interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from data_client.cli._arguments import Parser
from data_client.cli.connection import add_connection_arguments, connect, node_addresses
from data_client.cli.exits import FAILED, INTERRUPTED, OK, USAGE
from data_client.errors import failure_cause
from data_node.config import load
from data_node.errors import ConfigError, PathOutsideRootError
from data_tools.parsing import parse_non_negative_int, parse_positive_int

__all__ = ["main"]

_DEMO_FILE = "disks.h5"

_DESCRIPTION = """\
The data node's own life: serve a config, check a node's health, write the demo dataset.
What a remote user does (datasets, streams, build jobs) is data-client's.

exit status: 0 done (health: every node SERVING; serve: stopped by SIGTERM or Ctrl-C, which
end its calls cleanly); 1 a node is not serving or cannot be reached; 2 invalid arguments,
or a config that cannot be served; 130 health or demo-data interrupted (Ctrl-C)."""

_EXAMPLES = """\
examples:
  data-node serve --config node.toml
  data-node health --address 127.0.0.1:50051
  data-node health --address node:50051 --ca ca.pem --cert client.pem --key client.key
  data-node demo-data data/"""


def _command(commands: Any, name: str, summary: str, examples: str) -> argparse.ArgumentParser:
    return commands.add_parser(  # type: ignore[no-any-return]
        name,
        help=summary,
        description=f"{summary}.",
        epilog=f"examples:\n{examples}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="data-node",
        description=_DESCRIPTION,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = _command(
        commands,
        "serve",
        "serve the datasets of a config file until SIGTERM or Ctrl-C (then exit 0)",
        "  data-node serve --config node.toml\n"
        "  DATA_NODE_NODE__LISTEN=0.0.0.0:50051 data-node serve --config node.toml",
    )
    serve.add_argument("--config", type=Path, required=True, help="the node's TOML file")
    serve.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    health = _command(
        commands,
        "health",
        "exit 0 if every node at --address reports SERVING (sends no token)",
        "  data-node health --address 127.0.0.1:50051\n"
        "  data-node health --address node:50051 --ca ca.pem --cert c.pem --key c.key",
    )
    add_connection_arguments(health)
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    _add_demo_data_parser(commands)
    return parser


def _add_demo_data_parser(commands: Any) -> None:
    demo = _command(
        commands,
        "demo-data",
        f"write the demo dataset DIR/{_DEMO_FILE} (noisy disks: arrays image and mask)",
        "  data-node demo-data data/\n  data-node demo-data data/ --images 2048 --overwrite",
    )
    demo.add_argument("directory", type=Path, help="where to write it (created if missing)")
    demo.add_argument("--images", type=int, default=512, help="number of images (512)")
    demo.add_argument("--size", type=int, default=128, help="image edge, in pixels (128)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated data (0)")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing file")


def _demo_data(args: argparse.Namespace) -> int:
    """Write ``disks.h5`` into ``args.directory`` unless it exists (or with --overwrite).

    The file is written under a temporary name and renamed, so a node never opens half of it.
    """
    from data_node.demo import make_disks  # imported here for the reason given in main()

    images = parse_positive_int("--images", args.images)
    size = parse_positive_int("--size", args.size)
    seed = parse_non_negative_int("--seed", args.seed)
    path = args.directory / _DEMO_FILE
    if path.exists() and not args.overwrite:
        print(f"{path} exists; kept it (--overwrite replaces it)")
        return 0
    args.directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{_DEMO_FILE}.partial")
    make_disks(partial, images, size, seed)
    partial.replace(path)
    print(f"wrote {path}: {images} images of {size}x{size} (arrays image and mask)")
    return 0


def _health(args: argparse.Namespace) -> int:
    """Ask each node's health service; 0 if every one reports SERVING."""
    status = OK
    for address in node_addresses(args):
        with connect(args, addresses=[address], timeout=args.timeout, token=False) as client:
            check = client.channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            try:
                response = check(health_pb2.HealthCheckRequest(service=""), timeout=args.timeout)
            except grpc.RpcError as error:
                details = error.details() or ""
                cause = failure_cause(error.code(), details)
                print(f"{address}: {error.code().name}: {details}", file=sys.stderr)
                if cause:
                    print(f"{address}: {cause}", file=sys.stderr)
                status = FAILED
                continue
        serving = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        print(f"{address}: {serving}")
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            status = FAILED
    return status


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (see ``data_client.cli.exits``)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "health":
            return _health(args)
        if args.command == "demo-data":
            return _demo_data(args)
    except (TypeError, ValueError, OSError) as error:
        print(f"data-node {args.command}: {error}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print(f"data-node {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    # Imported here, not at the top: the image's HEALTHCHECK runs `data-node health` every few
    # seconds, and the server's imports (the whole library, h5py, zarr) would triple its cost.
    from data_node.server import serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        config = load(args.config, os.environ)
        serve(config)
    except (ConfigError, PathOutsideRootError, RuntimeError) as error:
        # RuntimeError: the address cannot be bound, or the TLS certificate and key differ.
        print(f"data-node: cannot serve {str(args.config)!r}: {error}", file=sys.stderr)
        return USAGE
    return OK

"""The ``data-node`` command: ``serve`` a config, or check a node's ``health``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from data_node.config import load
from data_node.errors import ConfigError, PathOutsideRootError
from data_node.server import serve

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="data-node", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve the datasets of a config file")
    serve_parser.add_argument("--config", type=Path, required=True, help="the node's TOML file")
    serve_parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    health_parser = commands.add_parser(
        "health", help="exit 0 if the node at --address reports SERVING"
    )
    health_parser.add_argument("--address", default="127.0.0.1:50051", help="host:port")
    health_parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    return parser


def _health(address: str, timeout: float) -> int:
    with grpc.insecure_channel(address) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            response = check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as error:
            print(f"{address}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{address}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "health":
        return _health(args.address, args.timeout)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        config = load(args.config, os.environ)
        serve(config)
    except (ConfigError, PathOutsideRootError) as error:
        print(f"data-node: invalid config {str(args.config)!r}: {error}", file=sys.stderr)
        return 2
    return 0

"""The ``data-client`` command: everything a remote user does with data nodes.

Datasets (``datasets``, ``describe``, ``register``, ``remove``), streams (``stream``,
``preview``) and build jobs (``build``, ``import``, ``jobs``, ``watch``, ``cancel``), each
with the same connection flags (``connection.add_connection_arguments``). The node's own
life (``serve``, ``health``, ``demo-data``) is the ``data-node`` command's.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from data_client.cli._arguments import Parser
from data_client.cli._datasets import add_dataset_commands
from data_client.cli._jobs import add_job_commands
from data_client.cli._stream import add_stream_commands
from data_client.cli.exits import FAILED, INTERRUPTED, USAGE, Interrupted
from data_client.errors import DataNodeError, failure_cause

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

_DESCRIPTION = """\
Everything a remote user does with data nodes: list and describe datasets, stream one,
preview it, register files as one, and run build jobs. Every command takes the same
connection flags: --address HOST:PORT (repeat it for several nodes), --ca/--cert/--key
(TLS, mutual TLS), --token-file FILE or --token-env VAR (the bearer token).

exit status: 0 done; 1 the node refused or failed the request, no node could be reached, or
a job waited for failed or was cancelled; 2 invalid arguments; 130 interrupted (Ctrl-C: one
line says what keeps running on the node)."""

_EXAMPLES = """\
examples:
  data-client datasets --address node:50051
  data-client describe brains --address node:50051
  data-client stream --dataset brains --batch-size 32 --epochs 2 --sample-random
  data-client preview --dataset brains --out grid.png --augmentation '{"x_array": "image"}'
  data-client build --output patches --patchsize 32 --volume brain.h5:image --detach
  data-client jobs
  data-client watch 3f2a9c1e
  data-client cancel 3f2a9c1e"""


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="data-client",
        description=_DESCRIPTION,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_dataset_commands(commands)
    add_stream_commands(commands)
    add_job_commands(commands)
    return parser


def report_failure(program: str, error: DataNodeError) -> None:
    """Print a node's refusal on stderr, with its likely cause when gRPC's details hide it."""
    cause = failure_cause(error.code, error.details)
    print(f"{program}: {error}" + (f"\n{program}: {cause}" if cause else ""), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see ``data_client.cli.exits``)."""
    args = _parser().parse_args(argv)
    program = f"data-client {args.command}"
    reconnects = logging.getLogger("data_client.reconnect")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{program}: %(message)s"))
    reconnects.addHandler(handler)
    reconnects.setLevel(logging.INFO)
    try:
        status: int = args.run(args)
    except Interrupted as interrupted:
        print(f"{program}: {interrupted}", file=sys.stderr)
        return INTERRUPTED
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except DataNodeError as error:
        report_failure(program, error)
        return FAILED
    except (TypeError, ValueError, OSError) as error:
        print(f"{program}: {error}", file=sys.stderr)
        return USAGE
    finally:
        reconnects.removeHandler(handler)
    return status

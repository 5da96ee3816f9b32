"""Argparse types and the help layout every ``data-client`` subcommand shares."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

__all__ = ["Parser", "add_command", "count", "json_object", "say", "say_each"]


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose refusal of an underscored flag names its hyphenated spelling."""

    def error(self, message: str) -> NoReturn:
        flags = [word for word in message.split() if word.startswith("--") and "_" in word]
        if message.startswith("unrecognized arguments:") and flags:
            spelled = ", ".join(flag.replace("_", "-") for flag in flags)
            message += f" (flags are spelled with '-': {spelled})"
        super().error(message)


def add_command(
    commands: Any, name: str, summary: str, examples: str, details: str = ""
) -> argparse.ArgumentParser:
    """A subcommand whose help shows ``details`` and then ``examples``, one per line."""
    return commands.add_parser(  # type: ignore[no-any-return]
        name,
        help=summary,
        description=f"{summary}.\n\n{details}".rstrip(),
        epilog=f"examples:\n{examples}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(
            f"Expected a JSON object. Got {text!r} ({error})."
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"Expected a JSON object. Got {text!r} instead.")
    return value


def count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"Expected an integer >= 0. Got {text!r} instead.")
    return value


def say(line: str) -> None:
    """Print one line of output, flushed: in a container stdout is a pipe."""
    print(line, flush=True)


def say_each(lines: list[str], empty: str) -> None:
    """Print each line; none: say ``empty`` on stderr, so stdout stays empty for scripts."""
    for line in lines:
        say(line)
    if not lines:
        print(empty, file=sys.stderr)

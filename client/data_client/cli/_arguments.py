"""Argparse types and the help layout every ``data-client`` subcommand shares."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

__all__ = ["Parser", "add_command", "count", "json_object", "say", "say_each"]


# Flags once spelled otherwise: refused, naming the flag that replaced them.
_RENAMED_FLAGS = {"--batchsize": "--batch-size"}


def _spelled(flag: str) -> str | None:
    """The spelling of ``flag`` (``--name`` or ``--name=value``) this CLI takes, if it was
    misspelled: underscores for hyphens, or a renamed flag; else None."""
    name = flag.partition("=")[0]
    if name in _RENAMED_FLAGS:
        return _RENAMED_FLAGS[name]
    return name.replace("_", "-") if "_" in name else None


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose refusal of a misspelled flag (an underscored or a renamed one)
    names the flag this CLI takes."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            flags = [_spelled(word) for word in message.split() if word.startswith("--")]
            named = ", ".join(flag for flag in flags if flag is not None)
            if named:
                message += f" (did you mean {named}?)"
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

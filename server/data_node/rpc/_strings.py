"""Length bounds of a request's strings, checked before any other work on the request.

Every string field of every request (dataset and array names, paths, keys, preprocessor
names, cursor fingerprints, ...) holds at most :data:`MAX_STRING_CHARS` characters (the
longest path Linux accepts), so no later check, lookup or message spends time or memory in
proportion to a huge string a client sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from google.protobuf.descriptor import FieldDescriptor

from data_node.errors import RequestError

if TYPE_CHECKING:
    from google.protobuf.message import Message

__all__ = ["LONGER_FIELDS", "MAX_STRING_CHARS", "check_string_lengths"]

MAX_STRING_CHARS: Final = 4096
#: Fields that may be longer, by full name, with their bound: a build's writer options are
#: JSON (filters, chunk shapes), stored and listed with its job.
LONGER_FIELDS: Final = {"data_wire.v1.SubmitBuildJobRequest.writer_options": 64 << 10}

_TEXT = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)


def check_string_lengths(message: Message, prefix: str = "") -> None:
    """Check every string and bytes field of ``message``, nested messages included.

    Raises:
        RequestError: A field is longer than ``MAX_STRING_CHARS``; the message names it
            (e.g. ``augmentation.x_array`` or ``arrays[2].name``), or than its bound in
            ``LONGER_FIELDS``.
    """
    for field, value in message.ListFields():
        is_text = field.type in _TEXT
        if not is_text and field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        name = f"{prefix}{field.name}"
        if field.is_repeated:
            items = [(f"{name}[{index}]", each) for index, each in enumerate(value)]
        else:
            items = [(name, value)]
        limit = LONGER_FIELDS.get(field.full_name, MAX_STRING_CHARS)
        for where, each in items:
            if not is_text:
                check_string_lengths(each, f"{where}.")
            elif len(each) > limit:
                raise RequestError(
                    f"{where}: Expected at most {limit} characters. Got {len(each)} instead."
                )

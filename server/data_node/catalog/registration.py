"""RegisterDataset requests: checked into the dataset config a config file would give.

A request carries what a ``[datasets.NAME]`` table holds (arrays of sources under the data
root, ``class_list``, ``maxlen``) and is checked by the same code (``config.parse_dataset``),
so a registered dataset behaves exactly as a configured one. Sizes are bounded before any
path is resolved; errors name the request field ("arrays.image[0].path: ...").
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

from data_node.config import parse_dataset
from data_node.errors import ConfigError, RequestError

if TYPE_CHECKING:
    from pathlib import Path

    from data_node.config import DatasetConfig
    from data_wire.v1 import data_node_pb2

__all__ = [
    "MAX_ARRAYS",
    "MAX_SOURCES",
    "parse_register_request",
    "parse_remove_request",
]

MAX_ARRAYS: Final = 64
"""Most arrays a registered dataset may have."""
MAX_SOURCES: Final = 4096
"""Most sources one array may combine (each is a file opened when the dataset is)."""
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _parse_name(field: str, name: str) -> str:
    """Check a dataset name given in a request.

    Raises:
        RequestError: Not 1-128 letters, digits and "._-" starting with a letter or digit.
    """
    if not _NAME.fullmatch(name):
        shown = name if len(name) <= 64 else f"{name[:64]}... ({len(name)} characters)"
        raise RequestError(
            f"{field}: Expected 1 to 128 letters, digits and '._-', starting with a letter "
            f"or digit. Got {shown!r} instead."
        )
    return name


def parse_remove_request(request: data_node_pb2.RemoveDatasetRequest) -> str:
    """The name a RemoveDataset request names (any registered name: a build job's
    ``register_as`` may hold characters a RegisterDataset name may not).

    Raises:
        RequestError: An empty name (its length is bounded for every request:
            ``data_node.rpc._strings``).
    """
    if not request.dataset:
        raise RequestError("dataset: Expected the name of a registered dataset. Got none.")
    return request.dataset


def parse_register_request(
    request: data_node_pb2.RegisterDatasetRequest, data_root: Path, output_root: Path
) -> DatasetConfig:
    """The dataset a RegisterDataset request describes, its sources confined to ``data_root``
    and outside ``output_root`` (job outputs are served by the jobs that write them).

    Raises:
        RequestError: A field is invalid (named in the message).
        PathOutsideRootError: A source resolves outside ``data_root``.
    """
    name = _parse_name("dataset", request.dataset)
    if not 1 <= len(request.arrays) <= MAX_ARRAYS:
        raise RequestError(
            f"arrays: Expected 1 to {MAX_ARRAYS} arrays. Got {len(request.arrays)} instead."
        )
    arrays: dict[str, list[dict[str, Any]]] = {}
    for i, array in enumerate(request.arrays):
        field = f"arrays[{i}]"
        if not array.name or len(array.name) > 128 or array.name in arrays:
            raise RequestError(
                f"{field}.name: Expected a name of 1 to 128 characters no other array has. "
                f"Got {array.name[:128]!r} instead."
            )
        if not 1 <= len(array.sources) <= MAX_SOURCES:
            raise RequestError(
                f"{field}.sources: Expected 1 to {MAX_SOURCES} sources. "
                f"Got {len(array.sources)} instead."
            )
        arrays[array.name] = [
            _source(f"{field}.sources[{j}]", s) for j, s in enumerate(array.sources)
        ]
    raw: dict[str, Any] = {"arrays": arrays}
    if request.class_list:
        raw["class_list"] = list(request.class_list)
    if request.HasField("maxlen"):
        raw["maxlen"] = request.maxlen
    try:
        return parse_dataset(name, raw, data_root, output_root=output_root, prefix="")
    except ConfigError as error:
        raise RequestError(str(error)) from error


def _source(field: str, source: data_node_pb2.RegisteredSource) -> dict[str, Any]:
    raw: dict[str, Any] = {"path": source.path}
    if source.key:
        raw["key"] = source.key
    if source.format:
        raw["format"] = source.format
    return raw

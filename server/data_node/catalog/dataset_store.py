"""Registered datasets persisted in one JSON file in the node's state dir, written atomically.

The file (``<state_dir>/datasets.json``) holds each registered dataset's arrays, sources and
options. A source's path is stored relative to the root it lies in (``data_root`` or
``output_root``, the innermost when they nest) and resolved, with the same confinement as
a config file's sources, when the node loads it; so the roots may move between runs.
A write goes to a temporary file in the same directory, is flushed to disk and renamed over
the old file (then the directory is synced): a crash leaves the old or the new file, never
a half-written one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import TYPE_CHECKING, Any

from data_node.config import ArrayConfig, DatasetConfig, SourceConfig, resolve_inside
from data_node.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

__all__ = ["FILE_NAME", "DatasetStore"]

FILE_NAME = "datasets.json"
# Bump when the layout changes; a file of another version is refused (never overwritten).
_VERSION = 1


class DatasetStore:
    """Loads and saves the registered datasets of one node; not thread-safe (the registry locks)."""

    def __init__(self, state_dir: Path, roots: Mapping[str, Path]) -> None:
        """Keep registrations in ``state_dir``.

        Args:
            state_dir: The node's state dir (created on the first save).
            roots: The roots sources may lie in, by the config key naming them
                (``{"data_root": ..., "output_root": ...}``), resolved.
        """
        self.path = state_dir / FILE_NAME
        self._roots = dict(roots)

    def load(self) -> list[dict[str, Any]]:
        """The stored entries (one dict per dataset, in registration order); [] without a file.

        Raises:
            ConfigError: The file is not a registry this node can read (names the file).
        """
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(
                f"{self.path}: Expected the node's registered datasets as JSON. "
                f"Got an unreadable file ({error}) instead; move it away to start afresh."
            ) from error
        if not isinstance(raw, dict) or raw.get("version") != _VERSION:
            raise ConfigError(
                f"{self.path}: Expected a registry of version {_VERSION}. "
                f"Got {raw.get('version') if isinstance(raw, dict) else raw!r} instead."
            )
        entries = raw.get("datasets")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ConfigError(f"{self.path}: Expected a list of datasets. Got {entries!r}.")
        return entries

    def save(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """Replace the file with ``entries``, atomically.

        Raises:
            OSError: The state dir cannot be written (the old file is left as it was).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"version": _VERSION, "datasets": list(entries)}, indent=1)
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{FILE_NAME}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def dump_entry(self, config: DatasetConfig) -> dict[str, Any]:
        """The stored form of a registered dataset.

        Raises:
            ConfigError: A source lies in none of the roots.
        """
        return {
            "name": config.name,
            "arrays": [
                {"name": array.name, "sources": [self._dump_source(s) for s in array.sources]}
                for array in config.arrays
            ],
            "class_list": None if config.class_list is None else list(config.class_list),
            "maxlen": config.maxlen,
        }

    def parse_entry(self, entry: Mapping[str, Any]) -> DatasetConfig:
        """The dataset an entry stores, its sources resolved and confined to their roots.

        Raises:
            ConfigError: The entry is malformed or names an unknown root.
            PathOutsideRootError: A source now resolves outside its root.
        """
        try:
            return DatasetConfig(
                name=str(entry["name"]),
                arrays=tuple(
                    ArrayConfig(
                        str(array["name"]),
                        tuple(self._parse_source(source) for source in array["sources"]),
                    )
                    for array in entry["arrays"]
                ),
                class_list=(
                    None
                    if entry["class_list"] is None
                    else tuple(int(v) for v in entry["class_list"])
                ),
                maxlen=None if entry["maxlen"] is None else int(entry["maxlen"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(
                f"{self.path}: Expected entries of name, arrays, class_list and maxlen. "
                f"Got {dict(entry)!r} instead ({type(error).__name__}: {error})."
            ) from error

    def _dump_source(self, source: SourceConfig) -> dict[str, Any]:
        inside = [
            (key, root) for key, root in self._roots.items() if source.path.is_relative_to(root)
        ]
        if not inside:
            raise ConfigError(
                f"Expected every source inside one of {sorted(self._roots)}. "
                f"Got {str(source.path)!r} instead."
            )
        key, root = max(inside, key=lambda pair: len(pair[1].parts))
        return {
            "root": key,
            "path": source.path.relative_to(root).as_posix(),
            "format": source.format,
            "key": source.key,
        }

    def _parse_source(self, raw: Mapping[str, Any]) -> SourceConfig:
        root_key = raw["root"]
        if root_key not in self._roots:
            raise ConfigError(
                f"{self.path}: Expected a source root among {sorted(self._roots)}. "
                f"Got {root_key!r} instead."
            )
        path = resolve_inside(self._roots[root_key], raw["path"], field_name=f"{root_key} source")
        key = raw["key"]
        return SourceConfig(path, str(raw["format"]), None if key is None else str(key))

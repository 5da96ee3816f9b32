"""Cursors: where a resumed stream starts, and the fingerprint that ties a cursor to a stream.

The fingerprint is computed over what a request means, not over its bytes: the node digests
the checked, normalized values the stream is produced from (defaults applied, a single
``zoom_range`` z read as the pair (1 - z, 1 + z), weights as the probabilities they
normalize to, fields that cannot change the output reset). So two requests that yield the
same batches fingerprint alike, whoever wrote the client, and a cursor of one resumes the
other. Fields that do not change which batches come out (``seed``, checked on its own;
``sharing``, ``lane``, ``resume``, ``codec``, the worker counts, ``epochs``,
``loop_forever``, ``start_epoch``) are left out, so a resumed stream may change them.
Fields added later (``cases``, ``shuffle_window``) are digested only when set, so the
cursors of streams without them stay valid; a cursor of one ``shuffle_window`` is refused
by a stream of another (or of the exact permutation).

Every cursor field is range-checked before use: ``seed`` in [0, 2**32), ``epoch`` in
[0, MAX_EPOCHS), ``batch_index`` from 0 (its upper end, the batches of one epoch, is
checked against the plan by ``streams.py``).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import TYPE_CHECKING, Any

from data_node.errors import RequestError
from data_node.fields import bounded
from data_tools.io import SEED_LIMIT

if TYPE_CHECKING:
    from collections.abc import Mapping

    from data_wire.v1 import data_node_pb2

__all__ = ["FINGERPRINT_VERSION", "MAX_EPOCHS", "fingerprint", "parse_start"]

#: Epochs a stream may span, and the bound of a cursor's epoch: every position
#: (epoch * batches per epoch + batch index) then fits a cursor's int64 fields for any
#: epoch of fewer than 2**31 batches.
MAX_EPOCHS = 1 << 32
#: Bumped whenever what the fingerprint covers changes (old cursors are then refused).
FINGERPRINT_VERSION = 2


def fingerprint(meaning: Mapping[str, Any]) -> str:
    """The fingerprint of a stream of ``meaning``: 32 hex digits of SHA-256.

    Args:
        meaning: JSON-serializable values that fix which batches the stream yields.
    """
    text = json.dumps(
        {"version": FINGERPRINT_VERSION, **meaning},
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def parse_start(
    request: data_node_pb2.StreamRequest, dataset_name: str, digest: str
) -> tuple[int, int, int]:
    """The seed and the (epoch, batch index) to start at; the cursor checked field by field.

    Without a cursor a stream starts at batch 0 of ``start_epoch`` (default 0).

    Raises:
        RequestError: The seed or a cursor field is out of range, or the cursor belongs to
            another dataset, seed or stream (another fingerprint).
    """
    seed = request.seed if request.HasField("seed") else None
    if seed is not None and seed >= SEED_LIMIT:
        raise RequestError(f"seed: Expected an integer in [0, {SEED_LIMIT}). Got {seed} instead.")
    start_epoch = bounded("start_epoch", request.start_epoch, 0, MAX_EPOCHS - 1)
    if not request.HasField("resume"):
        return (secrets.randbelow(SEED_LIMIT) if seed is None else seed), start_epoch, 0
    if start_epoch:
        raise RequestError(
            f"start_epoch: Expected 0 with resume (the cursor says where to start). "
            f"Got {start_epoch} instead."
        )
    cursor = request.resume
    bounded("resume.seed", cursor.seed, 0, SEED_LIMIT - 1)
    bounded("resume.epoch", cursor.epoch, 0, MAX_EPOCHS - 1)
    bounded("resume.batch_index", cursor.batch_index, 0, None)
    if cursor.dataset != dataset_name:
        raise RequestError(
            f"resume.dataset: Expected a cursor of dataset {dataset_name!r}. "
            f"Got one of {cursor.dataset!r} instead."
        )
    if seed is not None and cursor.seed != seed:
        raise RequestError(
            f"resume.seed: Expected the request's seed {seed}. Got {cursor.seed} instead."
        )
    if cursor.fingerprint != digest:
        raise RequestError(
            "resume.fingerprint: the cursor comes from a stream with other sampling, shard, "
            "augmentation or preprocessor fields; it cannot continue this one."
        )
    return cursor.seed, cursor.epoch, cursor.batch_index

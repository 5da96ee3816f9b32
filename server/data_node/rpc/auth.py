"""Who gets in: bearer tokens and roles, checked by data_node.rpc.admission's interceptor.

Every RPC but the gRPC health service (``/grpc.health.v1.Health/``: load balancers and
``data-node health`` probe it without credentials) needs ``authorization: Bearer <token>``
metadata naming a token of the node's ``[auth]`` config:

* no token, another scheme, or a token the node does not know: UNAUTHENTICATED;
* a "read" token on a job RPC or RegisterDataset / RemoveDataset (``ROLE_NEEDED``): PERMISSION_DENIED naming the role needed;
  a "build" token may call everything;
* server reflection needs a valid token too (any role): it is a service like any other.

The check runs before the request is parsed and before any servicer code, so the servicer
knows nothing of tokens. A token is never logged, put in a status message or kept in a
repr; the node compares SHA-256 digests of tokens with ``hmac.compare_digest``, against
every known token, so neither the time taken nor an early exit tells how close a guess was.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Final

from data_node.errors import RoleError, TokenError
from data_wire.methods import METHODS, SERVICE_NAME

if TYPE_CHECKING:
    from collections.abc import Sequence

    from data_node.config import BearerToken

__all__ = ["MAX_TOKEN_CHARS", "OPEN_PREFIX", "ROLE_NEEDED", "TokenChecker", "check_role"]

OPEN_PREFIX: Final = "/grpc.health.v1.Health/"
"""Methods under this prefix (the health service) need no token."""

ROLE_NEEDED: Final = {method.path: method.role for method in METHODS.values()}
"""The role each DataNode RPC needs (the proto's ``role`` option, read by data_wire.methods);
any other service's method (reflection) takes any valid token."""

MAX_TOKEN_CHARS: Final = 1024
"""Longest bearer token looked at; a longer one is refused before it is hashed."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


class TokenChecker:
    """Finds the configured token a call's metadata carries, in constant time."""

    def __init__(self, tokens: Sequence[BearerToken]) -> None:
        """Keep the digests of ``tokens`` (the node's ``auth.tokens``)."""
        self._known = [(_digest(token.value), token) for token in tokens]

    def identify(self, metadata: Sequence[tuple[str, str | bytes]]) -> BearerToken:
        """The token of a call's ``authorization: Bearer <token>`` metadata.

        Raises:
            TokenError: No such metadata, another form, or a token the node does not know.
        """
        values = [value for key, value in metadata if key == "authorization"]
        if len(values) != 1:
            raise TokenError(
                "Expected one 'authorization: Bearer <token>' metadata entry. "
                f"Got {len(values)} instead."
            )
        value = values[0].decode("latin-1") if isinstance(values[0], bytes) else values[0]
        if len(value) > MAX_TOKEN_CHARS:
            raise TokenError(
                f"Expected an authorization metadata value of at most {MAX_TOKEN_CHARS} "
                f"characters. Got {len(value)} instead."
            )
        scheme, _, presented = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise TokenError(
                "Expected the authorization metadata to be 'Bearer <token>'. "
                "Got another form instead (not shown)."
            )
        digest = _digest(presented.strip())
        found = None
        for known, token in self._known:  # no early exit: every call compares every token
            if hmac.compare_digest(known, digest):
                found = token
        if found is None:
            raise TokenError(
                "Expected a bearer token this node accepts. Got another one (not shown)."
            )
        return found


def check_role(token: BearerToken, method: str) -> None:
    """Check that ``token`` may call ``method`` (a full "/service/Method" name).

    Raises:
        RoleError: The method needs the "build" role and the token has "read".
    """
    needed = ROLE_NEEDED.get(method, "build" if method.startswith(f"/{SERVICE_NAME}/") else "read")
    if needed == "build" and token.role != "build":
        name = method.rsplit("/", 1)[-1]
        raise RoleError(
            f"{name}: Expected a token with role 'build'. Got one with role {token.role!r}."
        )

"""data_node.rpc.auth in-process: token checks and roles (the interceptor: test_admission.py).

Matrix: TokenChecker x {the right token (str and bytes metadata; scheme in any case; extra
spaces), no entry, two entries, another scheme, no token after the scheme, an unknown
token, a prefix of a known token, non-ASCII} with every message free of what was sent;
ROLE_NEEDED covers every DataNode RPC and check_role x {read, build} x {read, build RPC,
a DataNode RPC missing from the table (needs build), reflection}; a metadata value beyond
MAX_TOKEN_CHARS is refused before it is hashed.
"""

from __future__ import annotations

import pytest

from data_node.config import BearerToken
from data_node.errors import RoleError, TokenError
from data_node.rpc.auth import MAX_TOKEN_CHARS, ROLE_NEEDED, TokenChecker, check_role
from data_wire.v1 import data_node_pb2

READ = BearerToken("r3ad-token", "read", "auth.tokens_file line 1")
BUILD = BearerToken("bu1ld-token", "build", "auth.tokens_env entry 1")
SERVICE = data_node_pb2.DESCRIPTOR.services_by_name["DataNode"]


@pytest.fixture
def checker():
    return TokenChecker([READ, BUILD])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Bearer r3ad-token", READ),
        (b"Bearer bu1ld-token", BUILD),
        ("bearer bu1ld-token", BUILD),
        ("BEARER   r3ad-token  ", READ),
    ],
)
def test_known_tokens_are_identified(checker, value, expected):
    assert checker.identify([("other", "x"), ("authorization", value)]) is expected


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([], "Got 0 instead"),
        ([("authorization", "Bearer r3ad-token")] * 2, "Got 2 instead"),
        ([("authorization", "Basic r3ad-token")], "'Bearer <token>'. Got another form"),
        ([("authorization", "Bearer ")], "'Bearer <token>'. Got another form"),
        ([("authorization", "r3ad-token")], "'Bearer <token>'. Got another form"),
        ([("authorization", "Bearer s3cret-guess")], "accepts. Got another one"),
        ([("authorization", "Bearer r3ad-toke")], "accepts. Got another one"),
        ([("authorization", "Bearer r3ad-token-")], "accepts. Got another one"),
        ([("authorization", "Bearer s3cr\u00e9t")], "accepts. Got another one"),
        ([("Authorization-bin", b"Bearer r3ad-token")], "Got 0 instead"),
    ],
)
def test_anything_else_is_a_token_error_that_quotes_nothing(checker, metadata, message):
    with pytest.raises(TokenError, match=message) as caught:
        checker.identify(metadata)
    for secret in ("r3ad", "bu1ld", "s3cr", "Basic"):
        assert secret not in str(caught.value)


def test_every_data_node_rpc_has_a_role():
    assert set(ROLE_NEEDED) == {f"/{SERVICE.full_name}/{m.name}" for m in SERVICE.methods}
    reads = {m.rsplit("/", 1)[1] for m, role in ROLE_NEEDED.items() if role == "read"}
    assert reads == {"ListDatasets", "DescribeDataset", "StreamBatches"}


FUTURE_RPC = f"/{SERVICE.full_name}/FutureRpc"


@pytest.mark.parametrize("method", [*sorted(ROLE_NEEDED), FUTURE_RPC, "/grpc.reflection.X/Info"])
def test_check_role(method):
    check_role(BUILD, method)
    if ROLE_NEEDED.get(method) == "build" or method == FUTURE_RPC:
        name = method.rsplit("/", 1)[1]
        with pytest.raises(RoleError, match=f"^{name}: Expected a token with role 'build'"):
            check_role(READ, method)
    else:
        check_role(READ, method)


def test_a_huge_authorization_value_is_refused_unread(checker):
    value = "Bearer " + "x" * MAX_TOKEN_CHARS
    with pytest.raises(TokenError, match=f"at most {MAX_TOKEN_CHARS} characters. Got {len(value)}"):
        checker.identify([("authorization", value)])

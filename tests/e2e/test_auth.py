"""Bearer tokens and roles end to end: a real node with [auth], raw calls and the client.

Matrix: every DataNode RPC x {no token, a wrong token, another scheme, two authorization
entries} -> UNAUTHENTICATED, the details never quoting what was sent; every job RPC x a
"read" token -> PERMISSION_DENIED naming the role needed; every RPC x a "build" token (from
the file, role defaulted) and the read RPCs x "read" tokens (file and environment) -> past
the check (the RPC's own answer); health without or with a wrong token -> SERVING;
reflection without a token -> UNAUTHENTICATED, with one -> served; the client's typed
errors; max_open_streams_per_token (RESOURCE_EXHAUSTED naming it and its value, per token,
freed on close); no token in the node's log records (caplog) nor in ``data-node serve``'s
stderr at DEBUG.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from node_support import make_data, wait_for_idle, write_config

from data_client import DataNodeClient
from data_client.errors import (
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
)
from data_node.config import load
from data_node.rpc.auth import ROLE_NEEDED
from data_node.server import build_server

READ = "read-token.AAAA~1234"
BUILD = "build-token_BBBB/5678=="
ENV_READ = "env-read-token-CCCC"
WRONG = "wrong-token-DDDD"
SECRETS = (READ, BUILD, ENV_READ, WRONG)
ENV = {"NODE_TOKENS": f"{ENV_READ} read"}
TOKENS_FILE = f"# tokens of the test node\n\n{READ} read\n{BUILD}\n"
STREAM = "/data_wire.v1.DataNode/StreamBatches"
WATCH = "/data_wire.v1.DataNode/WatchJob"
AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def auth_config(root, **limits):
    make_data(root)
    config = write_config(root, **limits)
    (root / "tokens.txt").write_text(TOKENS_FILE)
    auth = '\n[auth]\ntokens_file = "tokens.txt"\ntokens_env = "NODE_TOKENS"\n'
    config.write_text(config.read_text() + auth)
    return config


@pytest.fixture(scope="module")
def auth_node(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth_node")
    config = auth_config(root, max_open_streams=5, max_open_streams_per_token=2)
    server, port = build_server(load(config, ENV), "127.0.0.1:0")
    server.start()
    yield server, port
    server.stop(None)


@pytest.fixture
def channel(auth_node):
    _, port = auth_node
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel


def call(channel, method, metadata=()):
    """Call ``method`` with an empty request; return its status code and details."""
    streaming = method in (STREAM, WATCH)
    multicallable = (channel.unary_stream if streaming else channel.unary_unary)(method)
    try:
        answer = multicallable(b"", metadata=metadata, timeout=10)
        if streaming:
            next(answer, None)
            answer.cancel()
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def bearer(token):
    return (("authorization", f"Bearer {token}"),)


METHODS = sorted(ROLE_NEEDED)
JOB_METHODS = [m for m in METHODS if ROLE_NEEDED[m] == "build"]
READ_METHODS = [m for m in METHODS if ROLE_NEEDED[m] == "read"]
BAD_METADATA = {
    "none": (),
    "wrong": bearer(WRONG),
    "scheme": (("authorization", f"Basic {BUILD}"),),
    "twice": (*bearer(BUILD), *bearer(WRONG)),
    "bare": (("authorization", BUILD),),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("metadata", sorted(BAD_METADATA))
def test_no_valid_token_is_unauthenticated(channel, method, metadata):
    code, details = call(channel, method, BAD_METADATA[metadata])
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert details.startswith("Expected")
    assert not any(secret in details for secret in SECRETS)


@pytest.mark.parametrize("method", JOB_METHODS)
@pytest.mark.parametrize("token", [READ, ENV_READ])
def test_a_read_token_may_not_call_job_rpcs(channel, method, token):
    code, details = call(channel, method, bearer(token))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    name = method.rsplit("/", 1)[1]
    assert details == f"{name}: Expected a token with role 'build'. Got one with role 'read'."


@pytest.mark.parametrize("method", METHODS)
def test_a_build_token_calls_everything(channel, method):
    code, _ = call(channel, method, (("authorization", f"bearer  {BUILD} "),))
    assert code not in AUTH_CODES


@pytest.mark.parametrize("method", READ_METHODS)
@pytest.mark.parametrize("token", [READ, ENV_READ])
def test_read_tokens_call_the_read_rpcs(channel, method, token):
    code, _ = call(channel, method, bearer(token))
    assert code not in AUTH_CODES


@pytest.mark.parametrize("metadata", [(), bearer(WRONG)])
def test_health_needs_no_token(channel, metadata):
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    response = check(health_pb2.HealthCheckRequest(), metadata=metadata, timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_needs_a_token(channel):
    reflect = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with pytest.raises(grpc.RpcError) as caught:
        list(reflect(iter([request]), timeout=10))
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    (answer,) = reflect(iter([request]), metadata=bearer(READ), timeout=10)
    assert "data_wire.v1.DataNode" in {s.name for s in answer.list_services_response.service}


def test_the_client_raises_typed_errors(auth_node):
    _, port = auth_node
    address = f"127.0.0.1:{port}"
    with DataNodeClient(address, timeout=10) as client:
        with pytest.raises(UnauthenticatedError):
            client.datasets()
        with pytest.raises(UnauthenticatedError):
            next(client.stream("toy", 8))
    with DataNodeClient(address, READ, timeout=10) as client:
        assert [d.name for d in client.datasets()] == ["classes", "toy"]
        assert len(list(client.stream("toy", 8))) == 5
        with pytest.raises(PermissionDeniedError, match="role 'build'"):
            client.jobs()
    with DataNodeClient(address, BUILD, timeout=10) as client:
        assert client.jobs() == []


def test_streams_per_token_are_limited(auth_node):
    server, port = auth_node
    address = f"127.0.0.1:{port}"
    with DataNodeClient(address, READ) as reader, DataNodeClient(address, BUILD) as builder:
        held = [reader.stream("toy", 4, loop_forever=True) for _ in range(2)]
        for stream in held:
            next(stream)
        with pytest.raises(ResourceExhaustedError) as caught:
            next(reader.stream("toy", 4, loop_forever=True))
        assert caught.value.details.startswith(
            "max_open_streams_per_token: one token may hold at most 2 streams at once"
        )
        other = builder.stream("toy", 4, loop_forever=True)  # another token's count
        next(other)
        held[0].close()
        deadline = time.monotonic() + 5
        while True:  # the node frees the slot once the cancel reaches it
            try:
                next(reader.stream("toy", 4, epochs=1))
                break
            except ResourceExhaustedError:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        for stream in (*held, other):
            stream.close()
    wait_for_idle(server)


def test_tokens_never_reach_the_log(channel, caplog):
    caplog.set_level("DEBUG")
    for metadata in (bearer(WRONG), bearer(READ), bearer(BUILD), bearer(ENV_READ), ()):
        for method in METHODS:
            call(channel, method, metadata)
    assert "refused /data_wire.v1.DataNode/SubmitBuildJob" in caplog.text
    assert not any(secret in caplog.text for secret in SECRETS)


def test_tokens_never_reach_the_serve_stderr(tmp_path):
    config = auth_config(tmp_path, max_open_streams_per_token=1)
    tests = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        **ENV,
        "DATA_NODE_NODE__LISTEN": "127.0.0.1:0",
        "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]),
    }
    log = tmp_path / "node.log"
    command = [sys.executable, "-m", "data_node", "serve", "--config", str(config)]
    with log.open("wb") as output:
        node = subprocess.Popen(
            [*command, "--log-level", "DEBUG"], env=env, stdout=output, stderr=output
        )
    try:
        port = wait_for_port(node, log)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for metadata in (bearer(WRONG), bearer(READ), bearer(BUILD), ()):
                for method in METHODS:
                    call(channel, method, metadata)
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=30) == 0
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    text = log.read_text()
    assert "1 read and 1 build token(s)" not in text  # the env token makes it 2 read
    assert "2 read and 1 build token(s)" in text
    assert "refused /data_wire.v1.DataNode/ListJobs" in text
    assert not any(secret in text for secret in SECRETS)


def wait_for_port(node, log, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if "on port " in line:
                return int(line.rsplit(" ", 1)[1])
        assert node.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(log.read_text())

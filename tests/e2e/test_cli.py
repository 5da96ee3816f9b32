"""Both command lines as a user runs them: subprocesses against real node processes.

Matrix. A node with [auth] (a build token) and a 3-D volume: the token from --token-file
and from --token-env (exit 0), none (exit 1, UNAUTHENTICATED and its cause); `build
--detach` prints only the job id; Ctrl-C (SIGINT) in `build` and in `watch JOB_PREFIX` of
a job that keeps running (a Dask job whose scheduler is unreachable): exit 130, one line
naming the job and how to cancel it, no traceback, the job still running; `cancel` with the
8-character prefix the progress bar shows; Ctrl-C in a `stream --loop-forever`: exit 130,
one line; a stream of 2 epochs with --augmentation, --preprocessor and worker flags: the
batch counted within its epoch, stall_s <= seconds. A mutual-TLS node with no dataset:
`datasets` and `jobs` say the lists are empty (exit 0), `data-node health` with
--ca/--cert/--key. Retries on stderr, each with its cause: a refused connection, a plaintext
client at a TLS node, a TLS client at a plaintext node (exit 1 once they run out). Help:
examples one per line. Ctrl-C stops `data-node serve` with exit 0, as its help says. Two
nodes alike (two --address): a seeded stream from both is the stream from one (the same
indices in order); a job on the second is listed with node=ADDRESS, and watch and cancel by
its prefix act on that node.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from node_support import (
    NUM_SAMPLES,
    make_data,
    node_environment,
    start_node_process,
    write_config,
)
from tls_support import write_pki

from data_client import DataNodeClient, TlsConfig
from data_client.jobs import FileArray

TOKEN = "cli-build-token"
# A terminal gives a command Ctrl-C's default action; a shell's background job (how a
# runner may start this suite) ignores SIGINT, and its children would inherit that.
_TERMINAL = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
CLIENT = _TERMINAL + "from data_client.cli import main; sys.exit(main())"
NODE = _TERMINAL + "from data_node.cli import main; sys.exit(main())"
TIMEOUT = 120
# A build that stays RUNNING: its Dask scheduler never answers, its process waits idle.
BLOCKED_BUILD = [
    "build", "--output", "blocked", "--patchsize", "3", "--volume", "vol.h5:image",
    "--file-format", "zarr", "--executor", "dask", "--scheduler-address", "tcp://127.0.0.1:1",
]  # fmt: skip


def run(program, *argv, env=None):
    """Run ``data-client`` (or ``data-node``) with ``argv``; return the finished process."""
    return subprocess.run(
        [sys.executable, "-c", program, *argv],
        env=node_environment(**(env or {})),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def start(program, *argv):
    """Start ``data-client`` with ``argv``; stdout and stderr are pipes."""
    return subprocess.Popen(
        [sys.executable, "-c", program, *argv],
        env=node_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(stream, pattern):
    """Lines of ``stream`` up to the first that matches ``pattern``; that line's match."""
    seen = []
    for line in iter(stream.readline, ""):
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found
    raise AssertionError(f"no line matched {pattern!r}: {''.join(seen)}")


def interrupt(process):
    """SIGINT (Ctrl-C) to ``process``; its exit status, stdout and stderr once it exits."""
    process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()  # it ignored Ctrl-C: fail without leaving it to the next tests
        process.communicate()
        raise
    return process.returncode, out, err


def start_auth_node(root):
    """A node process with [auth] (TOKEN builds) serving make_data's datasets and vol.h5;
    its process and address."""
    make_data(root)
    config = write_config(root)
    with h5py.File(root / "data" / "vol.h5", "w") as file:
        file["image"] = np.random.default_rng(3).random((4, 12, 10), dtype=np.float32)
    (root / "tokens.txt").write_text(f"{TOKEN} build\n")
    (root / "token").write_text(f"# the build token\n{TOKEN}\n")
    config.write_text(config.read_text() + '\n[auth]\ntokens_file = "tokens.txt"\n')
    process, port = start_node_process(config, root / "node.log")
    return process, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def auth_node(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_node")
    process, address = start_auth_node(root)
    yield address, root / "token"
    process.terminate()
    assert process.wait(timeout=TIMEOUT) == 0


@pytest.fixture(scope="module")
def second_node(tmp_path_factory):
    """Another node like auth_node, for the commands given two --address."""
    process, address = start_auth_node(tmp_path_factory.mktemp("cli_node_2"))
    yield address
    process.terminate()
    assert process.wait(timeout=TIMEOUT) == 0


@pytest.fixture
def connection(auth_node):
    address, token_file = auth_node
    return ["--address", address, "--token-file", str(token_file)]


@pytest.fixture
def client(auth_node):
    with DataNodeClient(auth_node[0], TOKEN) as client:
        yield client


@pytest.fixture(scope="module")
def mtls_node(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_mtls")
    pki = write_pki(root)
    (root / "data").mkdir()
    (root / "tokens.txt").write_text(f"{TOKEN} build\n")
    (root / "node.toml").write_text(
        textwrap.dedent(
            """
            [node]
            listen = "127.0.0.1:0"
            data_root = "data"
            [tls]
            cert = "server.pem"
            key = "server.key"
            ca = "ca.pem"
            [auth]
            tokens_file = "tokens.txt"
            """
        )
    )
    process, port = start_node_process(root / "node.toml", root / "node.log")
    flags = ["--ca", str(pki / "ca.pem")]
    flags += ["--cert", str(pki / "client.pem"), "--key", str(pki / "client.key")]
    yield f"127.0.0.1:{port}", flags
    process.terminate()
    assert process.wait(timeout=TIMEOUT) == 0


def test_the_token_comes_from_a_file_or_a_variable(auth_node, connection):
    done = run(CLIENT, "datasets", *connection)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].startswith("toy: 40 samples; image float32 (1, 16, 16)")
    done = run(CLIENT, "describe", "toy", *connection[:2], "--token-env", "T", env={"T": TOKEN})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == ["toy: 40 samples", "  image: float32 (40, 1, 16, 16)"]
    refused = run(CLIENT, "datasets", *connection[:2])
    assert refused.returncode == 1
    first, cause = refused.stderr.splitlines()
    assert first.startswith("data-client datasets: UNAUTHENTICATED: ")
    assert (
        cause == "data-client datasets: unauthenticated: the node needs a bearer token it accepts"
    )


def test_detach_prints_only_the_job_id(connection, client):
    build = ["build", "--output", "detached", "--patchsize", "3", "--volume", "vol.h5:image"]
    done = run(CLIENT, *build, "--detach", *connection)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"[0-9a-f]{32}\n", done.stdout), done.stdout
    assert client.job(done.stdout.strip()).wait(progress=False, timeout=TIMEOUT).output


def test_ctrl_c_leaves_the_job_running_and_says_so(connection, client):
    build = start(CLIENT, *BLOCKED_BUILD, *connection)
    job_id = read_until(build.stderr, r"^job (\w+) submitted$").group(1)
    status, _, err = interrupt(build)
    assert status == 130
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        f"data-client build: interrupted; job {job_id} keeps running on the node "
        f"(data-client cancel {job_id[:8]})"
    )
    assert not client.job(job_id).status().state.ended

    watch = start(CLIENT, "watch", job_id[:8], *connection)
    read_until(watch.stderr, rf"job {job_id[:8]}")  # the progress bar is drawn: it waits
    status, _, err = interrupt(watch)
    assert status == 130
    assert "Traceback" not in err
    assert err.splitlines()[-1].endswith(
        f"interrupted; job {job_id} keeps running on the node (data-client cancel {job_id[:8]})"
    )
    assert not client.job(job_id).status().state.ended

    cancelled = run(CLIENT, "cancel", job_id[:8], *connection)
    assert cancelled.returncode == 0, cancelled.stderr
    assert re.match(rf"{job_id} cancelled ", cancelled.stdout), cancelled.stdout
    assert client.job(job_id).status().state.value == "cancelled"


def test_a_stream_reports_batches_within_epochs_and_stall_within_seconds(connection):
    augmentation = '{"x_array": "image", "y_array": "mask", "rotation_range": 10}'
    done = run(
        CLIENT,
        "stream", "--dataset", "toy", "--batch-size", "16", "--epochs", "2", "--sample-random",
        "--seed", "3", "--report-every", "1", "--augmentation", augmentation,
        "--preprocessor", "scale", "--nb-io-workers", "2", "--nb-proc-workers", "1",
        *connection,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    reports = [line.split(":")[0] for line in done.stdout.splitlines()[1:]]
    assert reports == [
        *("epoch 0 batch 1", "epoch 0 batch 2", "epoch 0 batch 3", "epoch 0 done"),
        *("epoch 1 batch 1", "epoch 1 batch 2", "epoch 1 batch 3", "epoch 1 done"),
        "summary",
    ]
    fields = dict(item.split("=") for item in done.stdout.splitlines()[-1].split()[1:])
    assert (fields["epochs"], fields["batches"], fields["samples"]) == ("2", "6", "80")
    assert 0 < float(fields["stall_s"]) <= float(fields["seconds"])
    assert float(fields["stall_fraction"]) <= 1


def test_a_stream_from_two_nodes_is_the_stream_from_one(connection, second_node, tmp_path):
    argv = ["stream", "--dataset", "toy", "--batch-size", "8", "--sample-random", "--seed", "5"]
    one = run(CLIENT, *argv, "--indices-out", str(tmp_path / "one.txt"), *connection)
    assert one.returncode == 0, one.stderr
    both = [*connection, "--address", second_node]
    two = run(CLIENT, *argv, "--indices-out", str(tmp_path / "two.txt"), *both)
    assert two.returncode == 0, two.stderr
    first_address = connection[connection.index("--address") + 1]
    assert f"from {first_address}, {second_node}: " in two.stdout.splitlines()[0]
    fields = dict(item.split("=") for item in two.stdout.splitlines()[-1].split()[1:])
    assert fields["samples"] == fields["distinct"] == str(NUM_SAMPLES)
    # The same seed gives the same samples in the same order from two nodes as from one.
    assert (tmp_path / "two.txt").read_text() == (tmp_path / "one.txt").read_text()


def test_job_commands_over_two_nodes_act_where_the_job_is(connection, second_node):
    with DataNodeClient(second_node, TOKEN) as other:
        job = other.submit_build("on_second", 3, FileArray("vol.h5", "image"))
        assert job.wait(progress=False, timeout=TIMEOUT).state.value == "succeeded"
    first_address = connection[connection.index("--address") + 1]
    both = [*connection, "--address", second_node]
    listed = run(CLIENT, "jobs", *both)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert f"{job.job_id} succeeded" in "\n".join(lines)
    nodes = {line.split()[0]: line.split()[-1] for line in lines}
    assert nodes[job.job_id] == f"node={second_node}"
    assert set(nodes.values()) <= {f"node={first_address}", f"node={second_node}"}
    # The prefix is looked up on both nodes and the job followed on the one that has it.
    for command in ("watch", "cancel"):
        done = run(CLIENT, command, job.job_id[:8], *both)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{job.job_id} succeeded"), done.stdout


def test_ctrl_c_ends_a_stream_in_one_line(connection):
    argv = ["stream", "--dataset", "toy", "--batch-size", "4", "--loop-forever"]
    stream = start(CLIENT, *argv, "--report-every", "1", *connection)
    read_until(stream.stdout, r"^epoch 0 batch 1: ")
    status, _, err = interrupt(stream)
    assert status == 130
    line = "interrupted; the stream is cancelled (the node stops it, nothing keeps running)"
    assert err.splitlines() == [f"data-client stream: {line}"]


def test_a_mutual_tls_node_with_empty_lists(mtls_node):
    address, flags = mtls_node
    tls = TlsConfig(*flags[1::2])
    with DataNodeClient(address, TOKEN, tls) as client:
        assert client.datasets() == []
    for command, message in (("datasets", "the node serves no dataset"), ("jobs", "no jobs")):
        done = run(
            CLIENT, command, "--address", address, *flags, "--token-env", "T", env={"T": TOKEN}
        )
        assert (done.returncode, done.stdout) == (0, ""), done.stderr
        assert message in done.stderr
    health = run(NODE, "health", "--address", address, *flags)
    assert (health.returncode, health.stdout) == (0, f"{address}: SERVING\n"), health.stderr


def unused_address():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.parametrize(
    ("target", "tls", "cause"),
    [
        ("unused", False, "connection refused: is a node listening at that address?"),
        ("mtls", False, "the node closed the connection: it may require TLS"),
        ("plain", True, "TLS handshake failed: the node serves plaintext"),
    ],
)
def test_retries_show_on_stderr_with_their_cause(
    auth_node, mtls_node, tmp_path, target, tls, cause
):
    address = {"unused": unused_address(), "mtls": mtls_node[0], "plain": auth_node[0]}[target]
    argv = ["stream", "--dataset", "toy", "--batch-size", "4", "--max-reconnects", "2"]
    if tls:
        argv += mtls_node[1]
    done = run(CLIENT, *argv, "--address", address, "--token-file", str(auth_node[1]))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    retries = [line for line in lines if ": node unavailable (" in line]
    assert [line.split("; ")[-1].split(" in ")[0] for line in retries] == [
        "reconnect 1 of 2",
        "reconnect 2 of 2",
    ]
    for line in retries:
        assert line.startswith(f"data-client stream: node unavailable ({cause}")
    assert lines[-2].startswith("data-client stream: UNAVAILABLE: ")
    assert "gave up after 2 reconnect attempts" in lines[-2]
    assert lines[-1].startswith(f"data-client stream: {cause}")


@pytest.mark.parametrize("program", [CLIENT, NODE])
def test_help_shows_one_example_per_line(program):
    done = run(program, "--help")
    assert done.returncode == 0
    examples = done.stdout.split("examples:\n", 1)[1].splitlines()
    name = "data-client" if program == CLIENT else "data-node"
    assert len(examples) >= 3
    assert all(line.startswith(f"  {name} ") for line in examples), examples
    build_help = run(CLIENT, "build", "--help").stdout
    assert "\n  J=$(data-client build " in build_help


def test_ctrl_c_stops_serve_cleanly_with_status_0_as_its_help_says(tmp_path):
    help_text = " ".join(run(NODE, "--help").stdout.split())
    assert "serve: stopped by SIGTERM or Ctrl-C" in help_text
    assert "130 health or demo-data interrupted" in help_text
    make_data(tmp_path)
    config = write_config(tmp_path)
    command = [sys.executable, "-c", NODE, "serve", "--config", str(config)]
    node, _ = start_node_process(command, tmp_path / "node.log")
    status, _, _ = interrupt(node)
    assert status == 0
    assert "received SIGINT; stopping" in (tmp_path / "node.log").read_text()


def test_a_port_less_address_is_refused(tmp_path):
    done = run(CLIENT, "datasets", "--address", "localhost")
    assert done.returncode == 2
    assert "Expected HOST:PORT with a port in [1, 65535]" in done.stderr
    (tmp_path / "data").mkdir()
    (tmp_path / "node.toml").write_text('[node]\nlisten = "127.0.0.1"\ndata_root = "data"\n')
    served = run(NODE, "serve", "--config", str(tmp_path / "node.toml"))
    assert served.returncode == 2
    assert "node.listen: Expected HOST:PORT" in served.stderr

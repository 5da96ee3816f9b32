"""docker/: the node image and the compose file, checked without a Docker engine.

Matrix. Statically: hadolint passes docker/Dockerfile with no finding at any level (and fails a
bad one); the Dockerfile is multi-stage from one tag-pinned slim Python 3.11 image, its final
stage installs nothing, copies the builder's venv, runs as a non-root uid, declares the four
volumes, exposes the gRPC and metrics ports, probes health with ``data-node health`` and runs
``data-node serve --config /config/node.toml``; .dockerignore sends every path the Dockerfile
copies and nothing else; compose.yaml builds that Dockerfile from the repository root for every
service, fills the data volume with a one-shot service the node waits for, mounts node.toml
read-only at /config, starts two trainers (same dataset and seed, world size 2, ranks 0 and 1,
valid data-client arguments) once the node is healthy, and puts a Dask scheduler and a worker
(sharing the node's outputs volume at its path) behind the "dask" profile; the ports agree
across node.toml, EXPOSE, the healthcheck, the trainers and the published ports.

Then every command the image and compose run, outside Docker: container paths become temp
dirs and service names 127.0.0.1 with real ports. The demo-data service writes the dataset
(and keeps it on a rerun); the node serves it with the image's ENTRYPOINT/CMD, the compose
environment and node.toml; its metrics endpoint answers; the HEALTHCHECK command exits 0 while
it serves and non-zero once it is stopped; both trainer commands run at once, print their
throughput and receive disjoint halves of every epoch whose union is the epoch; the Dask
scheduler and worker commands run a build job the node sends to the scheduler named by the
compose environment, written to the shared outputs directory.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tomllib
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
import zarr
from leak_check import descendants, live_pids
from node_support import start_node_process

from data_client.cli import _parser as data_client_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
HADOLINT = Path(sys.executable).parent / "hadolint"
VOLUMES = ("/config", "/data", "/state", "/outputs")
GRPC_PORT, METRICS_PORT, DASK_PORT = 50051, 9400, 8786
TRAINERS = ("trainer-0", "trainer-1")
DASK_SERVICES = ("dask-scheduler", "dask-worker")


# ---------------------------------------------------------------- reading the files


def instructions(text):
    """The Dockerfile's (INSTRUCTION, arguments) pairs, continuation lines joined."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            pairs.append((keyword.upper(), " ".join(arguments.split())))
    return pairs


def stages(pairs):
    """The instructions before the first FROM, then those of each stage (from its FROM)."""
    found = [[]]
    for keyword, arguments in pairs:
        if keyword == "FROM":
            found.append([])
        found[-1].append((keyword, arguments))
    return found


def only(pairs, keyword):
    values = [arguments for key, arguments in pairs if key == keyword]
    assert len(values) == 1, f"{keyword}: {values}"
    return values[0]


def exec_form(arguments):
    """The JSON array of an exec-form ENTRYPOINT/CMD (shell form would need a shell)."""
    value = json.loads(arguments)
    assert isinstance(value, list), arguments
    assert all(isinstance(word, str) for word in value)
    return value


@pytest.fixture(scope="module")
def dockerfile():
    return stages(instructions((DOCKER / "Dockerfile").read_text()))


@pytest.fixture(scope="module")
def image(dockerfile):
    """What a container of the final stage runs: entrypoint, cmd and healthcheck."""
    final = dockerfile[-1]
    options, _, probe = only(final, "HEALTHCHECK").partition("CMD ")
    return {
        "entrypoint": exec_form(only(final, "ENTRYPOINT")),
        "cmd": exec_form(only(final, "CMD")),
        "healthcheck": exec_form(probe),
        "healthcheck_options": options.split(),
    }


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def service_argv(image, service):
    """A compose service's command line, as Docker combines it with the image's."""
    for key in ("entrypoint", "command"):
        assert isinstance(service.get(key, []), list), f"{key}: exec form, no shell"
    if "entrypoint" in service:  # a new entrypoint drops the image's CMD
        return [*service["entrypoint"], *service.get("command", [])]
    return [*image["entrypoint"], *service.get("command", image["cmd"])]


def node_toml():
    return tomllib.loads((DOCKER / "node.toml").read_text())


def port_of(address):
    return int(address.rpartition(":")[2])


# ---------------------------------------------------------------- the Dockerfile


def hadolint(path):
    return subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_hadolint_finds_nothing_in_the_dockerfile():
    result = hadolint(DOCKER / "Dockerfile")
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_fails_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc && pip install numpy\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # "latest"


def test_dockerfile_is_two_slim_stages_and_runs_the_node_unprivileged(dockerfile, image):
    preamble, builder, final = dockerfile
    assert preamble == [("ARG", "PYTHON_IMAGE=python:3.11-slim-bookworm")]
    assert only(builder, "FROM") == "${PYTHON_IMAGE} AS builder"
    assert only(final, "FROM") == "${PYTHON_IMAGE}"
    # The builder makes the venv without a pip cache; the final stage installs nothing at all.
    build = only(builder, "RUN")
    assert "python -m venv /opt/venv" in build
    assert "pip install --no-cache-dir" in build
    runtime = " ".join(arguments for keyword, arguments in final if keyword == "RUN")
    for tool in ("apt-get", "apk", "pip", "gcc", "build-essential", "make"):
        assert tool not in runtime.split(), tool
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in final
    assert "PATH=/opt/venv/bin:$PATH" in only(final, "ENV")
    user = only(final, "USER").split(":")
    assert user[0].isdigit()
    assert int(user[0]) != 0
    assert "useradd" in runtime
    assert f"--uid {user[0]}" in runtime
    assert sorted(json.loads(only(final, "VOLUME"))) == sorted(VOLUMES)
    assert only(final, "EXPOSE").split() == [str(GRPC_PORT), str(METRICS_PORT)]
    assert image["entrypoint"] == ["data-node"]
    assert image["cmd"] == ["serve", "--config", "/config/node.toml"]
    assert image["healthcheck"][:2] == ["data-node", "health"]
    assert "--start-period=30s" in image["healthcheck_options"]


def dockerignore_allows(path, patterns):
    """Whether the build context keeps ``path`` (Docker's rules: the last match wins)."""
    kept = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            kept = negated
    return kept


def test_dockerignore_sends_what_the_dockerfile_copies_and_no_more(dockerfile):
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        word
        for stage in dockerfile
        for keyword, arguments in stage
        if keyword == "COPY" and not arguments.startswith("--from")
        for word in arguments.split()[:-1]
    ]
    assert copied == [
        "pyproject.toml",
        "README.md",
        "server",
        "client",
        "protos",
        "docker/node.toml",
    ]
    for path in copied:
        assert (ROOT / path).exists(), path
        assert dockerignore_allows(path, patterns), path
    assert dockerignore_allows("server/data_node/cli.py", patterns)
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_docker.py",
        "benchmarks",
        "docker/compose.yaml",
        "server/data_node/__pycache__/cli.cpython-311.pyc",
    ):
        assert not dockerignore_allows(path, patterns), path


# ---------------------------------------------------------------- compose.yaml


def test_compose_builds_one_image_for_every_service(compose):
    services = compose["services"]
    assert sorted(services) == sorted(["demo-data", "node", *TRAINERS, *DASK_SERVICES])
    builds = {json.dumps([s["image"], s["build"]], sort_keys=True) for s in services.values()}
    assert len(builds) == 1
    build = services["node"]["build"]
    assert (DOCKER / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"
    # Only the node has the image's healthcheck (it probes a node on 127.0.0.1).
    assert "healthcheck" not in services["node"]
    for name, service in services.items():
        if name != "node":
            assert service["healthcheck"] == {"disable": True}, name
    assert sorted(compose["volumes"]) == ["data", "outputs", "state"]


def test_compose_node_reads_the_demo_data_and_its_config(compose, image):
    services = compose["services"]
    init, node = services["demo-data"], services["node"]
    assert service_argv(image, init) == ["data-node", "demo-data", "/data"]
    assert "data:/data" in init["volumes"]
    assert node["depends_on"] == {"demo-data": {"condition": "service_completed_successfully"}}
    assert service_argv(image, node) == ["data-node", "serve", "--config", "/config/node.toml"]
    assert sorted(node["volumes"]) == sorted(
        ["./node.toml:/config/node.toml:ro", "data:/data:ro", "state:/state", "outputs:/outputs"]
    )
    assert (DOCKER / "node.toml").is_file()
    config = node_toml()
    assert [config["node"][key] for key in ("data_root", "state_dir", "output_root")] == [
        "/data",
        "/state",
        "/outputs",
    ]
    listen, metrics = config["node"]["listen"], config["metrics"]["listen"]
    assert [port_of(listen), port_of(metrics)] == [GRPC_PORT, METRICS_PORT]
    assert listen.startswith("0.0.0.0:")  # reachable from the other containers
    assert node["ports"] == [f"{GRPC_PORT}:{GRPC_PORT}", f"{METRICS_PORT}:{METRICS_PORT}"]
    probe = data_node_address(image["healthcheck"])
    assert probe == f"127.0.0.1:{GRPC_PORT}"


def data_node_address(argv):
    return argv[argv.index("--address") + 1]


def test_compose_trainers_share_one_partitioned_stream_once_the_node_is_healthy(compose, image):
    services = compose["services"]
    parsed = []
    for name in TRAINERS:
        service = services[name]
        assert service["depends_on"] == {"node": {"condition": "service_healthy"}}
        argv = service_argv(image, service)
        assert argv[:2] == ["data-client", "stream"]
        parsed.append(data_client_parser().parse_args(argv[1:]))
    assert [args.rank for args in parsed] == [0, 1]
    for args in parsed:
        assert args.address == [f"node:{GRPC_PORT}"]
        assert args.world_size == 2
        assert args.report_every > 0
        assert args.sharing in (None, "partitioned")
        assert args.dataset in node_toml()["datasets"]
    same = ("dataset", "batch_size", "epochs", "sample_random", "seed")
    assert {tuple(getattr(args, key) for key in same) for args in parsed} == {
        tuple(getattr(parsed[0], key) for key in same)
    }
    assert parsed[0].seed is not None


def test_compose_dask_profile_shares_the_outputs_volume(compose):
    services = compose["services"]
    for name, service in services.items():
        assert service.get("profiles") == (["dask"] if name in DASK_SERVICES else None), name
    scheduler, worker, node = (services[n] for n in (*DASK_SERVICES, "node"))
    address = f"tcp://dask-scheduler:{DASK_PORT}"
    assert scheduler["entrypoint"] == worker["entrypoint"] == ["dask"]
    assert scheduler["command"][:1] == ["scheduler"]
    assert str(DASK_PORT) in scheduler["command"]
    assert worker["command"][:2] == ["worker", address]
    assert worker["depends_on"] == ["dask-scheduler"]
    assert node["environment"] == {"DATA_NODE_JOBS__SCHEDULER_ADDRESS": address}
    outputs = [v for v in node["volumes"] if v.startswith("outputs:")]
    assert worker["volumes"] == outputs


# ---------------------------------------------------------------- every command, for real


def localize(arguments, root, ports):
    """Container paths to dirs under ``root``; service names and ports to loopback ones."""
    hosts = {
        f"node:{GRPC_PORT}": f"127.0.0.1:{ports['node']}",
        f"127.0.0.1:{GRPC_PORT}": f"127.0.0.1:{ports['node']}",
        f"dask-scheduler:{DASK_PORT}": f"127.0.0.1:{ports['dask']}",
        "0.0.0.0": "127.0.0.1",
    }
    out = []
    for argument in arguments:
        if argument == str(DASK_PORT):
            argument = str(ports["dask"])
        for old, new in hosts.items():
            argument = argument.replace(old, new)
        out.append(
            re.sub(
                r"(?<![\w./-])/(config|data|state|outputs)\b",
                lambda match: str(root / match.group(1)),
                argument,
            )
        )
    return out


def local_argv(argv):
    """``argv`` with its program run by this interpreter: a console script of pyproject.toml
    through its entry point (the venv may predate a new script), anything else from the venv."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    program, *rest = argv
    if program in scripts:
        module, function = scripts[program].split(":")
        code = f"import sys; from {module} import {function}; sys.exit({function}())"
        return [sys.executable, "-c", code, *rest]
    path = Path(sys.executable).parent / program
    assert path.is_file(), f"{program} is not installed"
    return [str(path), *rest]


def subprocess_env(root, extra=()):
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "DASK_TEMPORARY_DIRECTORY": str(root / "dask-tmp"),  # not /tmp/dask-scratch-space
        **dict(extra),
    }


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def processes():
    """Start processes with ``start(argv, log, env)``; every one and its children end after."""
    started = []

    def start(argv, log, env):
        with log.open("w") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        started.append(process)
        return process

    try:
        yield start, started
    finally:
        for process in started:
            stop(process)


def stop(process, grace=10.0):
    """SIGTERM ``process`` (SIGKILL after ``grace`` s), then SIGKILL what it started and left."""
    children = descendants(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pid in children & live_pids():
        os.kill(pid, signal.SIGKILL)


def run(argv, env, timeout=60):
    result = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    return result.returncode, result.stdout + result.stderr


def summary(text):
    lines = [line for line in text.splitlines() if line.startswith("summary: ")]
    assert len(lines) == 1, text
    return dict(field.split("=", 1) for field in lines[0].split()[1:])


def write_volume(path):
    """A small 3D volume and mask for a build job (the demo images are 4D)."""
    rng = np.random.default_rng(5)
    with h5py.File(path, "w") as file:
        file["image"] = rng.random((4, 12, 12), dtype=np.float32)
        file["mask"] = (file["image"][()] > 0.5).astype(np.uint8)


def test_every_command_of_the_image_and_compose_runs_against_a_real_node(
    compose, image, tmp_path, monkeypatch
):
    services = compose["services"]
    root = tmp_path
    for volume in VOLUMES:
        (root / volume.lstrip("/")).mkdir()
    ports = {"node": GRPC_PORT, "dask": free_port()}  # the node's is known once it runs
    env = subprocess_env(root)

    (root / "config" / "node.toml").write_text(
        localize([(DOCKER / "node.toml").read_text()], root, ports)[0]
    )
    write_volume(root / "data" / "volume.h5")
    with processes() as (start, started):
        # The Dask profile starts first: its imports take the longest.
        dask = {
            name: start(
                local_argv(localize(service_argv(image, services[name]), root, ports)),
                root / f"{name}.log",
                env,
            )
            for name in DASK_SERVICES
        }
        # demo-data: writes the dataset once; a rerun (compose up again) keeps it.
        init = local_argv(localize(service_argv(image, services["demo-data"]), root, ports))
        code, out = run(init, env)
        assert code == 0, out
        with h5py.File(root / "data" / "disks.h5", "r") as file:
            length = file["image"].shape[0]
            assert file["mask"].shape[0] == length
        rerun = start(init, root / "rerun.log", env)
        # The node: the image's command, the compose environment, ports of our choosing.
        for key, value in services["node"]["environment"].items():
            monkeypatch.setenv(key, localize([value], root, ports)[0])
        monkeypatch.setenv("DATA_NODE_NODE__LISTEN", "127.0.0.1:0")
        monkeypatch.setenv("DATA_NODE_METRICS__LISTEN", "127.0.0.1:0")
        node_log = root / "node.log"
        node, ports["node"] = start_node_process(
            local_argv(localize(service_argv(image, services["node"]), root, ports)), node_log
        )
        started.append(node)
        metrics = re.search(r"http://\S+/metrics", node_log.read_text()).group(0)
        assert rerun.wait(30) == 0
        assert "kept" in (root / "rerun.log").read_text()

        probe = local_argv(localize(image["healthcheck"], root, ports))
        code, out = run(probe, env)
        assert (code, out.strip()) == (0, f"127.0.0.1:{ports['node']}: SERVING")

        # Both trainers at once, each recording the (epoch, index) of every sample it gets.
        trainers = {}
        for name in TRAINERS:
            argv = localize(service_argv(image, services[name]), root, ports)
            argv += ["--indices-out", str(root / f"{name}.indices")]
            trainers[name] = start(local_argv(argv), root / f"{name}.log", env)
        for name, process in trainers.items():
            assert process.wait(60) == 0, (root / f"{name}.log").read_text()
        epochs = data_client_parser().parse_args(services["trainer-0"]["command"]).epochs
        received = {}
        for name in TRAINERS:
            out = (root / f"{name}.log").read_text()
            assert re.search(r"epoch \d+ batch \d+: .* batches/s, .* samples/s, .* MB/s", out), out
            fields = summary(out)
            assert int(fields["samples"]) == epochs * length // 2
            assert length // 2 <= int(fields["distinct"]) <= length  # a new half each epoch
            assert float(fields["MB/s"]) > 0
            received[name] = np.loadtxt(root / f"{name}.indices", dtype=np.int64, ndmin=2)
        for epoch in range(epochs):
            halves = [set(r[r[:, 0] == epoch, 1].tolist()) for r in received.values()]
            assert halves[0].isdisjoint(halves[1]), epoch
            assert halves[0] | halves[1] == set(range(length)), epoch
        # The metrics port of node.toml (EXPOSEd, published) counted every batch sent.
        with urllib.request.urlopen(metrics, timeout=30) as response:
            scraped = response.read().decode()
        sent = re.search(
            r'^data_node_batches_total\{dataset="disks"\} (\S+)$', scraped, re.MULTILINE
        )
        batches = sum(int(summary((root / f"{n}.log").read_text())["batches"]) for n in TRAINERS)
        assert float(sent.group(1)) == batches

        # A build job on the Dask profile's cluster: the node's default scheduler comes from
        # the compose environment, the worker writes into the shared outputs directory.
        build = [
            "data-client", "build", "--address", f"127.0.0.1:{ports['node']}",
            "--output", "dask-patches", "--patchsize", "3", "--volume", "volume.h5:image",
            "--mask", "volume.h5:mask", "--class-list", "0", "1", "--batch-size", "8",
            "--file-format", "zarr", "--executor", "dask",
        ]  # fmt: skip
        code, out = run(local_argv(build), env)
        assert code == 0, out + "".join((root / f"{n}.log").read_text() for n in dask)
        group = zarr.open_group(str(root / "outputs" / "dask-patches" / "patches.zarr"), mode="r")
        assert sorted(name for name, _ in group.arrays()) == ["class_0", "class_1"]
        assert all(process.poll() is None for process in dask.values())

        # SIGTERM (docker stop): the node drains and exits 0; the probe then fails.
        node.send_signal(signal.SIGTERM)
        assert node.wait(30) == 0, node_log.read_text()
        code, out = run(probe, env)
        assert code != 0, out

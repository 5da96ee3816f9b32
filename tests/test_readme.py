"""README.md runs as written.

Matrix: the first code block is exactly the two commands, and each command's bullet names the
install `make -n` shows it runs (the demo's the light install, no extra; the tests' the dev
extra) and the demo's bullet its first-batch time and steady rate; the extras the README names
are pyproject's; every ``##`` section's ```python
blocks, concatenated in order, exit 0 in a fresh interpreter in an empty directory; the client
section runs against a node started the README's way (its data-writing code, its node.toml (the
node section's first TOML block), its ``data-node serve`` line, the address replaced by the real
port), after its ``data-node health`` line reports SERVING; then its ``data-client build`` line
builds (exit 0) and its ``data-client jobs`` line lists that job, and the node exits 0 on SIGTERM.
Security: the node section's second TOML block ([tls], [auth]) with its tokens file (the
section's text block), PEM stand-ins and the variable it names loads into the TLS paths and the
tokens with their roles; the roles table lists each DataNode RPC under the role it needs.
Walkthrough: its first python block writes the NIfTI cases, its TOML block is the node's
config, its bash block's ``data-node serve`` line starts the node and every other line (import,
preview, stream) exits 0 against it; preview.png decodes with both the overlay colours; then
its other python blocks (the torch loop, the client) exit 0 against that node.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import SimpleITK as sitk  # noqa: N813
from make_support import make_dry_run

from data_node.config import TlsConfig, load
from data_node.rpc.auth import ROLE_NEEDED

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
NODE_SECTION = "The data node"
CLIENT_SECTION = "The client: data_client"
WALKTHROUGH_SECTION = "Walkthrough: NIfTI cases to a segmentation training loop"
NODE_SECTIONS = (CLIENT_SECTION, WALKTHROUGH_SECTION)  # their python blocks need a node
README_ADDRESS = "127.0.0.1:50051"
TIMEOUT = 120  # a hang guard: sections run for tens of seconds on a loaded machine


def code_blocks() -> list[tuple[str, str, str]]:
    """(## section title, language, code) of every fenced block, in README order."""
    blocks, section, fence = [], "", None
    for line in README.read_text().splitlines(keepends=True):
        if fence is not None:
            if line.rstrip() == "```":
                blocks.append((section, fence[0], "".join(fence[1])))
                fence = None
            else:
                fence[1].append(line)
        elif line.startswith("```"):
            fence = (line[3:].strip(), [])
        elif line.startswith("## "):
            section = line[3:].strip()
    assert fence is None, "README.md has an unclosed code block"
    return blocks


def section_code(language: str) -> dict[str, str]:
    """Each section's blocks of ``language``, concatenated in order."""
    code: dict[str, str] = {}
    for section, block_language, block in code_blocks():
        if block_language == language:
            code[section] = code.get(section, "") + block
    return code


def section_blocks(section: str, language: str) -> list[str]:
    """The blocks of ``language`` in ``section``, in order."""
    return [
        code
        for block_section, block_language, code in code_blocks()
        if block_section == section and block_language == language
    ]


def node_blocks(language: str) -> list[str]:
    """The node section's blocks of ``language``, in order."""
    return section_blocks(NODE_SECTION, language)


def shell_lines(block: str) -> list[list[str]]:
    """The argv of each command of a bash block (continuations joined, comments and & dropped)."""
    commands = block.replace("\\\n", " ").splitlines()
    return [words for line in commands if (words := shlex.split(line, comments=True))]


def run_python(code: str, cwd: Path) -> None:
    """Run ``code`` in a fresh interpreter in ``cwd``; fail with its output unless it exits 0."""
    paths = [str(ROOT / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "TMPDIR": str(cwd)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def readme_command(verb: str, program: str = "data-node") -> tuple[dict[str, str], list[str]]:
    """The environment and argv of the node section's first ``<program> <verb>`` line."""
    for line in section_code("bash")[NODE_SECTION].splitlines():
        words = shlex.split(line, comments=True)
        env = {}
        while words and "=" in words[0]:
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        if words[:2] == [program, verb]:
            return env, [str(BIN / program), *words[1:]]
    raise AssertionError(f"README.md has no `{program} {verb}` line in {NODE_SECTION!r}")


def wait_for_port(node: subprocess.Popen[bytes], log: Path) -> int:
    """The port a starting node logs, once it serves."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        found = re.search(r"serving \d+ dataset\(s\) on port (\d+)", log.read_text())
        if found:
            return int(found.group(1))
        assert node.poll() is None, f"the node exited with {node.returncode}:\n{log.read_text()}"
        time.sleep(0.05)
    raise AssertionError(f"the node did not start within {TIMEOUT} s:\n{log.read_text()}")


def run_cli(verb: str, address: str) -> subprocess.CompletedProcess[str]:
    """Run the node section's ``data-client <verb>`` line against the node at ``address``."""
    env, argv = readme_command(verb, "data-client")
    return subprocess.run(
        [*argv, "--address", address],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_the_first_code_block_is_the_two_commands():
    title, blank, *rest = README.read_text().splitlines()
    assert (title, blank) == ("# data-tools", "")
    assert rest[:4] == ["```", "make demo", "make test", "```"]


def command_bullet(target):
    """The README's bullet saying what ``make <target>`` does, on one line."""
    found = re.search(
        rf"^- `make {target}` (.*?)(?=^- |^$)", README.read_text(), re.MULTILINE | re.DOTALL
    )
    assert found, target
    return " ".join(found.group(1).split())


@pytest.mark.parametrize(("target", "installs"), [("demo", ["."]), ("test", [".", "'.[dev]'"])])
def test_each_command_installs_what_the_readme_says(target, installs, tmp_path):
    dry_run = "\n".join(make_dry_run(target, tmp_path / ".venv"))
    assert re.findall(r"pip install --quiet -e (\S+)$", dry_run, re.MULTILINE) == installs
    bullet = command_bullet(target)
    assert f"`pip install -e {installs[-1]}`" in bullet
    assert ("no extra" in bullet) == (target == "demo")


def test_the_demo_bullet_names_the_first_batch_and_the_steady_rate():
    bullet = command_bullet("demo")
    assert "time to the first batch" in bullet
    assert "steady rate" in bullet


def test_the_readme_names_the_extras_of_pyproject():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    named = set(re.findall(r"`data-tools\[(\w+)\]`", README.read_text()))
    assert named == set(extras)


SECTIONS = sorted(section_code("python"))


def test_the_node_and_client_sections_have_examples():
    assert {NODE_SECTION, CLIENT_SECTION} <= set(SECTIONS)
    assert README_ADDRESS in section_code("python")[CLIENT_SECTION]


@pytest.mark.parametrize("section", [s for s in SECTIONS if s not in NODE_SECTIONS])
def test_section_runs(section, tmp_path):
    run_python(section_code("python")[section], tmp_path)


def test_client_section_runs_against_the_readme_node(tmp_path):
    python = section_code("python")
    run_python(python[NODE_SECTION], tmp_path)
    (tmp_path / "node.toml").write_text(node_blocks("toml")[0])
    serve_env, serve = readme_command("serve")
    # Port 0 through the documented override: a fixed port could be taken on a shared machine.
    env = {**os.environ, **serve_env, "DATA_NODE_NODE__LISTEN": "127.0.0.1:0"}
    log = tmp_path / "node.log"
    with log.open("wb") as output:
        node = subprocess.Popen(serve, cwd=tmp_path, env=env, stdout=output, stderr=output)
    try:
        address = f"127.0.0.1:{wait_for_port(node, log)}"
        health_env, health = readme_command("health")
        checked = subprocess.run(
            [word.replace(README_ADDRESS, address) for word in health],
            env={**os.environ, **health_env},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert (checked.returncode, checked.stdout) == (0, f"{address}: SERVING\n")
        run_python(python[CLIENT_SECTION].replace(README_ADDRESS, address), tmp_path)
        built = run_cli("build", address)
        assert built.returncode == 0, built.stderr
        job_id = re.fullmatch(r"job (\w+) submitted", built.stderr.splitlines()[0]).group(1)
        assert built.stdout.startswith(f"{job_id} succeeded"), built.stdout
        listed = run_cli("jobs", address)
        assert listed.returncode == 0, listed.stderr
        line = rf"^{job_id} succeeded 100.0% .* output='scan_cli' "
        assert re.search(line, listed.stdout, re.MULTILINE), listed.stdout
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=TIMEOUT) == 0, log.read_text()
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()


def test_the_walkthrough_runs(tmp_path):
    setup, *training = section_blocks(WALKTHROUGH_SECTION, "python")
    run_python(setup, tmp_path)
    (config,) = section_blocks(WALKTHROUGH_SECTION, "toml")
    (tmp_path / "walkthrough.toml").write_text(config)
    serve, *commands = shell_lines(section_blocks(WALKTHROUGH_SECTION, "bash")[0])
    assert serve == ["data-node", "serve", "--config", "walkthrough.toml", "&"]
    env = {**os.environ, "DATA_NODE_NODE__LISTEN": "127.0.0.1:0"}
    log = tmp_path / "node.log"
    with log.open("wb") as output:
        node = subprocess.Popen(
            [str(BIN / "data-node"), *serve[1:-1]],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=output,
        )
    try:
        address = f"127.0.0.1:{wait_for_port(node, log)}"
        for program, *arguments in commands:
            done = subprocess.run(
                [str(BIN / program), *arguments, "--address", address],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
            assert done.returncode == 0, f"{program} {arguments[0]}:\n{done.stdout}\n{done.stderr}"
        png = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "preview.png")))
        colours = {tuple(pixel) for pixel in png.reshape(-1, 3).tolist()}
        assert any(r > g and r > b for r, g, b in colours)  # the organ (1): red
        assert any(g > r and g > b for r, g, b in colours)  # the lesion (2): green
        run_python("".join(training).replace(README_ADDRESS, address), tmp_path)
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=TIMEOUT) == 0, log.read_text()
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()


def test_the_security_example_loads(tmp_path):
    _, security = node_blocks("toml")
    (tokens_file,) = node_blocks("text")
    raw = tomllib.loads(security)
    (tmp_path / "pki").mkdir()
    for key in ("cert", "key", "ca"):
        # A stand-in: loading checks only the PEM marker (test_tls.py covers real certificates).
        (tmp_path / raw["tls"][key]).write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / raw["auth"]["tokens_file"]).write_text(tokens_file)
    config_file = tmp_path / "node.toml"
    (tmp_path / "data").mkdir()
    config_file.write_text('[node]\ndata_root = "data"\n' + security)
    environ = {
        raw["auth"]["tokens_env"]: "TOKEN_A read,TOKEN_B",
        "DATA_NODE_LIMITS__MAX_OPEN_STREAMS_PER_TOKEN": "4",
    }
    config = load(config_file, environ)
    pki = tmp_path.resolve() / "pki"
    assert config.tls == TlsConfig(pki / "server.pem", pki / "server.key", pki / "ca.pem")
    assert config.auth is not None
    assert [(token.source, token.role) for token in config.auth.tokens] == [
        ("auth.tokens_file line 2", "read"),
        ("auth.tokens_file line 4", "build"),
        ("auth.tokens_env entry 1", "read"),
        ("auth.tokens_env entry 2", "build"),
    ]
    assert config.limits.max_open_streams_per_token == 4


def test_the_roles_table_matches_the_node():
    rows = dict(re.findall(r"^\| `(read|build)` \| (.*) \|$", README.read_text(), re.MULTILINE))
    assert set(rows) == {"read", "build"}
    for method, role in ROLE_NEEDED.items():
        listed = [row for row, calls in rows.items() if f"`{method.rsplit('/', 1)[1]}`" in calls]
        assert listed == [role], method

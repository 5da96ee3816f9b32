"""The data-node command line: unservable configs, health without a node, its commands.

Matrix: `serve` on an address that cannot be bound and on an invalid config (exit 2,
message); `health` against nothing listening (exit 1) and with an unreadable --token-file it
does not need; the commands moved to data-client (build, import, register, remove, jobs,
watch, cancel) are not data-node's; an underscored flag is refused naming the hyphenated one.
"""

from __future__ import annotations

import socket

import pytest
from node_support import make_data, write_config

from data_node.cli import _parser, main


def test_moved_commands_are_data_clients(capsys):
    for command in ("build", "import", "register", "remove", "jobs", "watch", "cancel"):
        with pytest.raises(SystemExit) as exit_info:
            _parser().parse_args([command])
        assert exit_info.value.code == 2
        assert "invalid choice" in capsys.readouterr().err


def test_serve_reports_an_unbindable_address(tmp_path, monkeypatch, capsys):
    make_data(tmp_path)
    config = write_config(tmp_path)
    monkeypatch.setenv("DATA_NODE_NODE__LISTEN", "256.0.0.1:1")
    assert main(["serve", "--config", str(config)]) == 2
    assert "cannot bind" in capsys.readouterr().err


def test_serve_reports_an_invalid_config(tmp_path, capsys):
    (tmp_path / "node.toml").write_text("[node]\nlissen = 1\n")
    assert main(["serve", "--config", str(tmp_path / "node.toml")]) == 2
    assert "node.lissen" in capsys.readouterr().err


def test_health_of_nothing_listening_needs_no_token(tmp_path, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    missing = tmp_path / "no-such-token-file"
    status = main(
        [
            "health",
            "--address",
            f"127.0.0.1:{port}",
            "--timeout",
            "0.5",
            "--token-file",
            str(missing),
        ]
    )
    assert status == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_an_underscored_flag_is_refused_naming_the_hyphenated_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--config", "node.toml", "--log_level", "DEBUG"])
    assert exit_info.value.code == 2
    assert "(did you mean --log-level?)" in capsys.readouterr().err

"""The data-client command line, against the fake node (10 samples in order, see conftest).

Matrix: `datasets` prints each dataset's length, arrays and classes; `stream` sends the
request its flags describe (rank, world size, seed, sample_random, epochs, sharing, codec),
prints a line every --report-every batches (none with 0; the batch counted within its epoch) and per epoch, then a summary (samples,
distinct indices, bytes, rates, stall), and --indices-out records (epoch, index) of every
sample: two ranks get disjoint halves covering each epoch; --resolve with an IP address;
--token-env sends the token (unset: exit 2; wrong: exit 1 UNAUTHENTICATED). Exit 1 with the
node's status for NOT_FOUND, INVALID_ARGUMENT and an unreachable node (stream and datasets);
exit 2 for bad arguments (argparse's, the client's checks, a repeated address, an unwritable
--indices-out, a port-less --address, an underscored flag: its hyphenated name shown); 130 on
Ctrl-C. Against a node with jobs: a unique id prefix names its job (an exact id wins over a
longer id it prefixes), an ambiguous one exits 2 naming the candidates, an unknown one 1
(NOT_FOUND); an empty job list says so on stderr. --token-file's token; failure_cause for each
UNAVAILABLE detail gRPC gives. pyproject.toml's console script names main.
"""

from __future__ import annotations

import inspect
import re
import socket
import tomllib
from pathlib import Path

import grpc
import numpy as np
import pytest

from data_client import DataNodeClient
from data_client.cli import _stream, main
from data_client.cli.connection import read_token
from data_client.errors import failure_cause
from data_wire.v1 import data_node_pb2, tensor_pb2

ROOT = Path(__file__).resolve().parents[2]
BYTES_PER_SAMPLE = 6 * 4 + 6 * 1 + 8  # image float32 (2, 3), mask uint8 (2, 3), label int64


def summary(out):
    lines = [line for line in out.splitlines() if line.startswith("summary: ")]
    assert len(lines) == 1, out
    return dict(field.split("=", 1) for field in lines[0].split()[1:])


def unused_address():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def stream_args(address, *extra):
    return ["stream", "--address", address, "--dataset", "toy", "--batch-size", "3", *extra]


def test_console_script_is_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["data-client"] == "data_client.cli:main"


def test_datasets_lists_lengths_arrays_and_classes(fake_node, capsys):
    assert main(["datasets", "--address", fake_node.address]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{name}: 10 samples; image float32 (2, 3), mask uint8 (2, 3), label int64 (); "
        "classes [0, 10, 20]"
        for name in ("other", "toy")
    ]


def test_stream_reports_throughput_and_a_summary(fake_node, tmp_path, capsys):
    indices = tmp_path / "indices.txt"
    argv = stream_args(fake_node.address, "--epochs", "2", "--rank", "1", "--world-size", "2")
    argv += ["--seed", "5", "--sample-random", "--codec", "lz4", "--report-every", "1"]
    assert main([*argv, "--indices-out", str(indices)]) == 0
    request = fake_node.requests[-1]
    assert (request.dataset, request.batch_size, request.epochs, request.seed) == ("toy", 3, 2, 5)
    assert (request.shard.rank, request.shard.world_size) == (1, 2)
    assert request.sample_random
    assert request.sharing == data_node_pb2.SHARING_PARTITIONED
    assert request.codec == tensor_pb2.CODEC_LZ4

    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[0]
        == f"streaming 'toy' from {fake_node.address}: rank 1 of 2, batch size 3, 2 epoch(s)"
    )
    rate = r"[\d.]+ batches/s, [\d.]+ samples/s, [\d.]+ MB/s"
    expected = [
        rf"epoch 0 batch 1: 1 batches, 3 samples in [\d.]+ s: {rate}",
        rf"epoch 0 batch 2: 1 batches, 2 samples in [\d.]+ s: {rate}",
        rf"epoch 0 done: 2 batches, 5 samples in [\d.]+ s: {rate}",
        rf"epoch 1 batch 1: 1 batches, 3 samples in [\d.]+ s: {rate}",
        rf"epoch 1 batch 2: 1 batches, 2 samples in [\d.]+ s: {rate}",
        rf"epoch 1 done: 2 batches, 5 samples in [\d.]+ s: {rate}",
    ]
    assert len(lines) == 1 + len(expected) + 1
    for line, pattern in zip(lines[1:-1], expected, strict=True):
        assert re.fullmatch(pattern, line), line
    fields = summary("\n".join(lines))
    assert {key: fields[key] for key in ("rank", "world_size", "epochs", "batches")} == {
        "rank": "1",
        "world_size": "2",
        "epochs": "2",
        "batches": "4",
    }
    assert (int(fields["samples"]), int(fields["distinct"])) == (10, 5)
    assert int(fields["bytes"]) == 10 * BYTES_PER_SAMPLE
    assert float(fields["seconds"]) > 0
    assert float(fields["samples/s"]) > 0
    assert 0 <= float(fields["stall_s"]) <= float(fields["seconds"])
    assert 0 <= float(fields["stall_fraction"]) <= 1
    assert (int(fields["decoded_bytes"]), float(fields["read_amplification"])) == (0, 0.0)
    received = np.loadtxt(indices, dtype=np.int64)
    expected_rows = [(epoch, index) for epoch in (0, 1) for index in (1, 3, 5, 7, 9)]
    assert received.tolist() == [list(row) for row in expected_rows]


def test_stream_help_lists_the_summary_fields_in_order(fake_node, capsys):
    assert main(stream_args(fake_node.address)) == 0
    printed = list(summary(capsys.readouterr().out))
    assert printed == list(_stream.SUMMARY_FIELDS)
    with pytest.raises(SystemExit):
        main(["stream", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"key=value fields: {' '.join(printed)}. seconds runs" in help_text


def test_report_every_zero_prints_only_epochs(fake_node, capsys):
    assert main(stream_args(fake_node.address, "--epochs", "2")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[1:]] == ["epoch 0 done", "epoch 1 done", "summary"]
    assert summary("\n".join(lines))["samples"] == "20"


def test_two_ranks_receive_disjoint_halves_of_each_epoch(fake_node, tmp_path):
    files = [tmp_path / f"rank{rank}.txt" for rank in (0, 1)]
    for rank, path in enumerate(files):
        argv = stream_args(fake_node.address, "--epochs", "2", "--world-size", "2", "--seed", "1")
        assert main([*argv, "--rank", str(rank), "--indices-out", str(path)]) == 0
    received = [np.loadtxt(path, dtype=np.int64) for path in files]
    for epoch in (0, 1):
        halves = [set(r[r[:, 0] == epoch, 1].tolist()) for r in received]
        assert halves[0].isdisjoint(halves[1])
        assert halves[0] | halves[1] == set(range(10))


def test_shuffle_window_reaches_the_request(fake_node, capsys):
    argv = stream_args(fake_node.address, "--sample-random", "--seed", "1", "--shuffle-window", "6")
    assert main(argv) == 0
    assert [request.shuffle_window for request in fake_node.requests] == [6]


def test_resolve_reads_from_every_address_of_a_name(fake_node, capsys):
    address = f"127.0.0.1:{fake_node.port}"
    assert main(stream_args(address, "--resolve")) == 0
    assert f"from {address}:" in capsys.readouterr().out


def test_token_env_sends_the_token(fake_node, monkeypatch, capsys):
    fake_node.required_token = "s3cret-token"
    monkeypatch.setenv("TRAINER_TOKEN", "s3cret-token")
    assert main(stream_args(fake_node.address, "--token-env", "TRAINER_TOKEN")) == 0
    assert fake_node.metadata[-1]["authorization"] == "Bearer s3cret-token"
    monkeypatch.setenv("TRAINER_TOKEN", "wrong")
    assert main(["datasets", "--address", fake_node.address, "--token-env", "TRAINER_TOKEN"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    monkeypatch.delenv("TRAINER_TOKEN")
    assert main(stream_args(fake_node.address, "--token-env", "TRAINER_TOKEN")) == 2
    assert "--token-env: Expected the environment variable TRAINER_TOKEN" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        (["--dataset", "nope"], "NOT_FOUND"),
        (["--batch-size", "101"], "INVALID_ARGUMENT"),
    ],
)
def test_node_errors_exit_1_with_the_status(fake_node, capsys, extra, status):
    assert main([*stream_args(fake_node.address), *extra]) == 1
    assert capsys.readouterr().err.startswith(f"data-client stream: {status}: ")


def test_an_unreachable_node_exits_1(capsys):
    address = unused_address()
    assert main([*stream_args(address), "--max-reconnects", "0"]) == 1
    assert "data-client stream: UNAVAILABLE" in capsys.readouterr().err
    assert main(["datasets", "--address", address]) == 1
    assert "data-client datasets: UNAVAILABLE" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rank", "2", "--world-size", "2"], "rank"),
        (["--batch-size", "0"], "batch_size"),
        (["--epochs", "0"], "epochs"),
        (["--address", "127.0.0.1:1"], "distinct"),  # the same address twice
        (["--indices-out", "no/such/dir/indices.txt"], "no/such/dir"),
    ],
)
def test_invalid_values_exit_2(fake_node, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    address = "127.0.0.1:1" if "127.0.0.1:1" in extra else fake_node.address
    assert main([*stream_args(address), *extra]) == 2
    error = capsys.readouterr().err
    assert error.startswith("data-client stream: ")
    assert message in error
    assert not fake_node.requests


@pytest.mark.parametrize(
    "argv",
    [
        ["stream", "--dataset", "toy"],  # no --batch-size
        ["stream", "--dataset", "toy", "--batch-size", "x"],
        ["stream", "--dataset", "toy", "--batch-size", "1", "--report-every", "-1"],
        ["stream", "--dataset", "toy", "--batch-size", "1", "--sharing", "shared"],
        ["stream", "--dataset", "toy", "--batch-size", "1", "--codec", "gzip"],
        ["fetch"],
    ],
)
def test_argparse_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: data-client" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["stream", "--dataset", "toy", "--batch-size", "1"], "--augmentation"),
        (["build", "--output", "o", "--patchsize", "3", "--volume", "v.h5"], "--writer-options"),
        (["import", "--output", "o", "--case", "a.nii.gz"], "--writer-options"),
    ],
)
@pytest.mark.parametrize(
    ("value", "detail"),
    [("{'level': 1}", "Expecting property name"), ("[1, 2]", "instead"), ("3", "instead")],
)
def test_json_flags_take_a_json_object_naming_the_flag(capsys, argv, flag, value, detail):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, flag, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith(f"data-client {argv[0]}: error: argument {flag}: Expected a JSON ")
    assert f"Got {value!r}" in error
    assert detail in error


def test_interrupt_exits_130(monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(_stream, "_stream", interrupted)
    assert main(stream_args("127.0.0.1:1")) == 130


JOB_IDS = ["3f2a0000aa", "3f2a0000bb", "77c10000cc", "77c1"]


@pytest.mark.parametrize("command", ["watch", "cancel"])
def test_a_unique_id_prefix_names_the_job(fake_jobs_node, capsys, command):
    fake_jobs_node.job_ids = JOB_IDS
    assert main([command, "3f2a0000a", "--address", fake_jobs_node.address]) == 0
    assert capsys.readouterr().out.startswith("3f2a0000aa succeeded")
    # An id that is also the prefix of another id is that job.
    assert main([command, "77c1", "--address", fake_jobs_node.address]) == 0
    assert capsys.readouterr().out.startswith("77c1 succeeded")


@pytest.mark.parametrize("command", ["watch", "cancel"])
def test_an_ambiguous_id_prefix_is_refused_naming_the_candidates(fake_jobs_node, capsys, command):
    fake_jobs_node.job_ids = JOB_IDS
    assert main([command, "3f2a", "--address", fake_jobs_node.address]) == 2
    err = capsys.readouterr().err
    assert f"data-client {command}: JOB: Expected an id prefix that names one job." in err
    assert "2 jobs start with '3f2a': 3f2a0000aa, 3f2a0000bb." in err
    assert main([command, "9", "--address", fake_jobs_node.address]) == 1
    assert "NOT_FOUND: job_id: no job '9'" in capsys.readouterr().err


def test_watching_an_unknown_job_draws_no_progress_bar(fake_jobs_node, capsys):
    assert main(["watch", "zzzz", "--address", fake_jobs_node.address]) == 1
    err = capsys.readouterr().err
    assert err == "data-client watch: NOT_FOUND: job_id: no job 'zzzz'\n", err


def test_jobs_lists_every_nodes_jobs_naming_the_node(fake_jobs_node, other_jobs_node, capsys):
    fake_jobs_node.job_ids = ["3f2a0000aa"]
    other_jobs_node.job_ids = ["77c10000cc", "9b000000dd"]
    nodes = ["--address", fake_jobs_node.address, "--address", other_jobs_node.address]
    assert main(["jobs", *nodes]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [(line.split()[0], line.split()[-1]) for line in lines] == [
        ("3f2a0000aa", f"node={fake_jobs_node.address}"),
        ("77c10000cc", f"node={other_jobs_node.address}"),
        ("9b000000dd", f"node={other_jobs_node.address}"),
    ]
    fake_jobs_node.job_ids = other_jobs_node.job_ids = []
    assert main(["jobs", *nodes]) == 0
    assert capsys.readouterr() == ("", "the nodes have no jobs\n")


@pytest.mark.parametrize("command", ["watch", "cancel"])
def test_watch_and_cancel_act_on_the_node_that_has_the_job(
    fake_jobs_node, other_jobs_node, capsys, command
):
    fake_jobs_node.job_ids = ["3f2a0000aa"]
    other_jobs_node.job_ids = ["77c10000cc"]
    nodes = ["--address", fake_jobs_node.address, "--address", other_jobs_node.address]
    assert main([command, "77c1", *nodes]) == 0
    assert capsys.readouterr().out.startswith("77c10000cc succeeded")
    # The same id prefix on both nodes is ambiguous: the message names both nodes.
    other_jobs_node.job_ids = ["3f2a0000bb"]
    assert main([command, "3f2a", *nodes]) == 2
    assert (
        f"2 jobs start with '3f2a': 3f2a0000aa (node {fake_jobs_node.address}), "
        f"3f2a0000bb (node {other_jobs_node.address})."
    ) in capsys.readouterr().err


@pytest.mark.parametrize("command", ["watch", "cancel", "jobs"])
def test_a_node_that_is_down_leaves_the_others_jobs(other_jobs_node, capsys, command):
    other_jobs_node.job_ids = ["77c10000cc"]
    nodes = ["--address", unused_address(), "--address", other_jobs_node.address]
    argv = [command, *nodes] if command == "jobs" else [command, "77c1", *nodes]
    assert main(argv) == (1 if command == "jobs" else 0)  # jobs: the node that failed
    out, err = capsys.readouterr()
    assert out.startswith("77c10000cc succeeded")
    assert ("UNAVAILABLE" in err) is (command == "jobs")
    assert main([command, "0000", *nodes] if command != "jobs" else argv) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err  # the job may be on the node that is down


def test_empty_lists_say_so(fake_jobs_node, capsys):
    assert main(["jobs", "--address", fake_jobs_node.address]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("", "the node has no jobs\n")


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1", "[::1]", "node:", "node:0"])
def test_an_address_without_a_port_is_refused(capsys, address):
    with pytest.raises(SystemExit) as exit_info:
        main(["datasets", "--address", address])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--address: Expected HOST:PORT with a port in [1, 65535] (without one gRPC" in err


def test_an_unbracketed_ipv6_address_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["datasets", "--address", "::1"])
    assert exit_info.value.code == 2
    assert "--address: Expected an IPv6 host in brackets: write '[::1]:PORT'" in (
        capsys.readouterr().err
    )


def test_token_file_first_word_skipping_comments(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text("# the team's token\n\n  s3cret-token read\nother\n")
    assert read_token(path) == "s3cret-token"
    path.write_text("# nothing here\n\n")
    with pytest.raises(ValueError, match="--token-file: Expected a token"):
        read_token(path)


def test_an_underscored_flag_is_refused_naming_the_hyphenated_one(capsys):
    argv = ["register", "x", "--array", "image=a.h5:image", "--class_list", "0"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --class_list 0 (did you mean --class-list?)" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["build", "--output", "o", "--patchsize", "3", "--volume", "v.h5"],
        ["import", "--output", "o", "--case", "a.nii.gz"],
        ["stream", "--dataset", "toy", "--batch-size", "1"],
    ],
)
@pytest.mark.parametrize("flag", [["--batchsize", "8"], ["--batchsize=8"]])
def test_batchsize_is_refused_naming_batch_size(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, *flag])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.endswith(f"unrecognized arguments: {' '.join(flag)} (did you mean --batch-size?)")


@pytest.mark.parametrize(
    ("command", "method"),
    [
        (["build", "--output", "o", "--patchsize", "3", "--volume", "v.h5"], "submit_build"),
        (["import", "--output", "o", "--case", "a.nii.gz"], "submit_import"),
    ],
)
def test_build_and_import_take_batch_size(fake_jobs_node, monkeypatch, command, method):
    submitted = {}
    signature = inspect.signature(getattr(DataNodeClient, method))

    def submit(*args, **kwargs):
        submitted.update(signature.bind(*args, **kwargs).arguments)
        raise KeyboardInterrupt  # stop before any call

    monkeypatch.setattr(DataNodeClient, method, submit)
    node = ["--address", fake_jobs_node.address, "--batch-size", "8"]
    assert main([*command, *node]) == 130
    assert submitted["batchsize"] == 8


@pytest.mark.parametrize(
    ("code", "details", "cause"),
    [
        (
            "UNAVAILABLE",
            "ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused",
            "connection refused",
        ),
        (
            "UNAVAILABLE",
            "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL",
            "TLS handshake failed",
        ),
        ("UNAVAILABLE", "ipv4:127.0.0.1:5: Socket closed", "the node closed the connection"),
        ("UNAVAILABLE", "errors resolving nosuchhost.invalid:5", "the address does not resolve"),
        ("UNAUTHENTICATED", "", "unauthenticated: the node needs a bearer token"),
        ("UNAVAILABLE", "node is restarting", ""),
        ("NOT_FOUND", "Connection refused", ""),
    ],
)
def test_failure_cause_names_what_grpc_details_hide(code, details, cause):
    found = failure_cause(grpc.StatusCode[code], details)
    assert found.startswith(cause) if cause else found == ""

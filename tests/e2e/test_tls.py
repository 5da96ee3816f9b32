"""TLS and mutual TLS end to end, with certificates generated at run time (EC P-256).

Matrix: a TLS node ([tls] with paths relative to the config file) x clients: CA bundle as
a path, as bytes and as TlsConfig (lists, describes, streams), plaintext (UNAVAILABLE), an
untrusted CA (UNAVAILABLE), gRPC's bundled roots (UNAVAILABLE). A mutual-TLS node
(ca, plus [auth] tokens) x clients: no client certificate, a certificate from
another CA (both UNAVAILABLE), the right certificate (works). The ``data-node health``
command against the mutual-TLS node: with --ca/--cert/--key and no token (SERVING, exit
0), without a client certificate (exit 1); ``data-client jobs`` with --token-file (exit 0)
and without (exit 1, UNAUTHENTICATED). A certificate and key that do not match: build_server names tls.
TlsConfig checks its fields (types; cert and key together) and never shows the key.
"""

from __future__ import annotations

import textwrap

import pytest
from node_support import make_data, write_config
from tls_support import write_pki

from data_client import DataNodeClient, TlsConfig
from data_client.cli import main as client_main
from data_client.errors import UnavailableError
from data_node.cli import main
from data_node.config import load
from data_node.server import build_server

TOKEN = "build-token-for-the-tls-node"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """PEM files: a CA, a server and a client certificate from it, and another CA's client."""
    return write_pki(tmp_path_factory.mktemp("pki"))


def start_node(root, pki, extra):
    make_data(root)
    config = write_config(root)
    tls = f'[tls]\ncert = "pki/server.pem"\nkey = "pki/server.key"\n{extra}'
    config.write_text(config.read_text() + "\n" + textwrap.dedent(tls))
    (root / "pki").symlink_to(pki)
    server, port = build_server(load(config), "127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory, pki):
    server, port = start_node(tmp_path_factory.mktemp("tls_node"), pki, "")
    yield port
    server.stop(None)


@pytest.fixture(scope="module")
def mtls_node(tmp_path_factory, pki):
    root = tmp_path_factory.mktemp("mtls_node")
    (root / "tokens.txt").write_text(f"{TOKEN} build\n")
    extra = 'ca = "pki/ca.pem"\n[auth]\ntokens_file = "tokens.txt"\n'
    server, port = start_node(root, pki, extra)
    yield port
    server.stop(None)


def names(client):
    return [d.name for d in client.datasets()]


@pytest.mark.parametrize("form", ["path", "bytes", "config"])
def test_a_client_trusting_the_ca_is_served(tls_node, pki, form):
    ca = pki / "ca.pem"
    tls = {"path": str(ca), "bytes": ca.read_bytes(), "config": TlsConfig(ca=ca)}[form]
    with DataNodeClient(f"localhost:{tls_node}", tls=tls, timeout=10) as client:
        assert names(client) == ["classes", "toy"]
        assert client.describe("toy").length == 40
        assert len(list(client.stream("toy", 16))) == 3


@pytest.mark.parametrize("tls", [None, "other_ca", True], ids=["plaintext", "untrusted", "roots"])
def test_other_clients_are_refused(tls_node, pki, tls):
    if tls == "other_ca":
        tls = pki / "other_ca.pem"
    with DataNodeClient(f"127.0.0.1:{tls_node}", tls=tls, timeout=30) as client:
        with pytest.raises(UnavailableError):
            client.datasets()
        with pytest.raises(UnavailableError):
            next(client.stream("toy", 16, max_reconnects=0))


@pytest.mark.parametrize(
    ("cert", "key"),
    [(None, None), ("other_client.pem", "other_client.key")],
    ids=["no-client-certificate", "other-ca-certificate"],
)
def test_mutual_tls_refuses_clients_without_a_trusted_certificate(mtls_node, pki, cert, key):
    tls = TlsConfig(
        ca=pki / "ca.pem",
        cert=None if cert is None else pki / cert,
        key=None if key is None else pki / key,
    )
    with (
        DataNodeClient(f"127.0.0.1:{mtls_node}", TOKEN, tls, timeout=30) as client,
        pytest.raises(UnavailableError),
    ):
        client.datasets()


def test_mutual_tls_serves_a_client_with_a_trusted_certificate(mtls_node, pki):
    tls = TlsConfig(
        ca=(pki / "ca.pem").read_bytes(),
        cert=(pki / "client.pem").read_bytes(),
        key=(pki / "client.key").read_bytes(),
    )
    assert "key" not in repr(tls)
    with DataNodeClient(f"127.0.0.1:{mtls_node}", TOKEN, tls, timeout=10) as client:
        assert names(client) == ["classes", "toy"]
        assert len(list(client.stream("toy", 20, epochs=2))) == 4
        assert client.jobs() == []


def test_the_cli_reaches_a_mutual_tls_node(mtls_node, pki, tmp_path, capsys):
    address = f"127.0.0.1:{mtls_node}"
    tls_flags = ["--ca", str(pki / "ca.pem")]
    cert_flags = ["--cert", str(pki / "client.pem"), "--key", str(pki / "client.key")]
    assert main(["health", "--address", address, *tls_flags, *cert_flags]) == 0
    assert capsys.readouterr().out == f"{address}: SERVING\n"
    assert main(["health", "--address", address, *tls_flags, "--timeout", "5"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    jobs = ["jobs", "--address", address, *tls_flags, *cert_flags]
    assert client_main([*jobs, "--token-file", str(token_file)]) == 0
    assert client_main(jobs) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert main(["health", "--address", address, "--cert", str(pki / "client.pem")]) == 2
    assert "TlsConfig.cert and TlsConfig.key together" in capsys.readouterr().err


def test_a_certificate_and_key_that_do_not_match_are_named(tmp_path, pki):
    make_data(tmp_path)
    config = write_config(tmp_path)
    tls = f'[tls]\ncert = "{pki / "server.pem"}"\nkey = "{pki / "client.key"}"\n'
    config.write_text(config.read_text() + "\n" + tls)
    with pytest.raises(RuntimeError, match=r"tls\.cert and tls\.key do not match"):
        build_server(load(config), "127.0.0.1:0")


def test_tls_config_checks_its_fields():
    with pytest.raises(ValueError, match="Got cert without key"):
        TlsConfig(cert=b"pem")
    with pytest.raises(ValueError, match="Got key without cert"):
        TlsConfig(key=b"pem")
    with pytest.raises(TypeError, match=r"TlsConfig\.ca .* Got 3 of type int"):
        TlsConfig(ca=3)
    with pytest.raises(TypeError, match=r"TlsConfig\.key .* Got a value of type list") as caught:
        TlsConfig(cert=b"pem", key=["s3cret"])
    assert "s3cret" not in str(caught.value)
    assert repr(TlsConfig("ca.pem", "c.pem", b"s3cret")) == "TlsConfig(ca='ca.pem', cert='c.pem')"

"""Test support for TLS: a CA, server and client certificates generated at run time (EC P-256).

``write_pki(directory)`` writes ca.pem, server.pem/.key (names localhost and 127.0.0.1),
client.pem/.key, and other_ca.pem with other_client.pem/.key (a client of another CA).
"""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(subject, key, issuer=None, issuer_key=None, *, ca=False, server=False):
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    certificate = builder.sign(issuer_key or key, hashes.SHA256())
    return certificate, certificate.public_bytes(serialization.Encoding.PEM)


def write_pki(directory):
    """Write PEM files into ``directory``: a CA, a server (localhost, 127.0.0.1) and a client
    certificate from it, and another CA with its own client certificate; return it."""
    files = {}
    for authority in ("ca", "other_ca"):
        ca_key = _key()
        ca_cert, files[f"{authority}.pem"] = _certificate(authority, ca_key, ca=True)
        for role in ("server", "client") if authority == "ca" else ("client",):
            key = _key()
            _, pem = _certificate(role, key, ca_cert, ca_key, server=role == "server")
            prefix = role if authority == "ca" else f"other_{role}"
            files[f"{prefix}.pem"], files[f"{prefix}.key"] = pem, _pem_key(key)
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return directory

"""The lab's certificate authority.

Each lab run makes its own CA and one server certificate naming every emulated
HTTPS/TLS name, so the emulated services present real, verifiable TLS. The
probe trusts this CA only in lab mode (the state file's `ca_cert`), never the
system store's stand-ins, so a lab certificate can never be trusted by accident
outside the lab. Keys are ECDSA P-256: fast to make, accepted by every TLS 1.2/1.3
stack.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Short lives: a lab lasts minutes; a leaked lab CA should be useless soon.
CA_LIFETIME = dt.timedelta(days=7)
# Backdate against small clock differences between namespaces' processes (same
# clock here, but OpenSSL rejects a notBefore even a second in the future).
BACKDATE = dt.timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class LabCertificates:
    ca_cert: Path
    server_cert: Path  # leaf, then the CA: the chain a server presents
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wallwatch lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_lab_certificates(directory: Path, names: Iterable[str], *, run_id: str = "") -> LabCertificates:
    """Write `ca.pem`, `server.pem` (chain) and `server-key.pem` under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"wallwatch lab CA {run_id}".strip())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_names = sorted(set(names))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(server_names[0]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in server_names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    paths = LabCertificates(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    paths.ca_cert.write_bytes(ca_pem)
    paths.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
    _write_private(paths.server_key, _pem_key(server_key))
    # The CA key is not needed after signing: not writing it means nothing
    # else can ever be signed by this CA.
    return paths

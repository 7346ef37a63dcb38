"""The mTLS certificate helpers, checked with cryptography's X.509 path validation."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import stat
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store

from vault.errors import ConfigError
from vault.pki import (
    CertificateAuthority,
    create_ca,
    issue_client_certificate,
    issue_server_certificate,
    load_ca,
    write_certificate,
    write_private_key,
)

SPIFFE_ID = "spiffe://tokenvault.dev/gateway"
ExtensionT = TypeVar("ExtensionT", bound=x509.ExtensionType)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return create_ca("Tokenvault test CA", days=30)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _extension(certificate: x509.Certificate, kind: type[ExtensionT]) -> ExtensionT:
    return certificate.extensions.get_extension_for_class(kind).value


# -- CA --------------------------------------------------------------------------------------


def test_ca_extensions(ca: CertificateAuthority) -> None:
    certificate = ca.certificate
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = _extension(certificate, x509.KeyUsage)

    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature
    assert _extension(certificate, x509.SubjectKeyIdentifier).digest
    assert certificate.subject == certificate.issuer
    certificate.verify_directly_issued_by(certificate)


def test_ca_key_is_p256(ca: CertificateAuthority) -> None:
    assert isinstance(ca.private_key.curve, ec.SECP256R1)
    assert ca.certificate.signature_hash_algorithm is not None
    assert ca.certificate.signature_hash_algorithm.name == "sha256"


def test_ca_validity(ca: CertificateAuthority) -> None:
    lifetime = ca.certificate.not_valid_after_utc - ca.certificate.not_valid_before_utc

    assert dt.timedelta(days=30) <= lifetime <= dt.timedelta(days=30, minutes=6)


def test_days_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1 day"):
        create_ca("bad", days=0)


# -- server certificates ---------------------------------------------------------------------


def test_server_certificate_verifies(ca: CertificateAuthority) -> None:
    issued = issue_server_certificate(ca, hosts=["localhost", "127.0.0.1"])

    issued.certificate.verify_directly_issued_by(ca.certificate)
    verifier = (
        PolicyBuilder().store(Store([ca.certificate])).build_server_verifier(DNSName("localhost"))
    )
    chain = verifier.verify(issued.certificate, [])
    assert chain[-1] == ca.certificate
    ip_verifier = (
        PolicyBuilder()
        .store(Store([ca.certificate]))
        .build_server_verifier(IPAddress(ipaddress.ip_address("127.0.0.1")))
    )
    ip_verifier.verify(issued.certificate, [])


def test_server_certificate_rejected_by_other_ca(ca: CertificateAuthority) -> None:
    other = create_ca("Other CA", days=1)
    issued = issue_server_certificate(other, hosts=["localhost"])

    with pytest.raises(ValueError):
        issued.certificate.verify_directly_issued_by(ca.certificate)


def test_server_certificate_rejected_by_same_name_ca(ca: CertificateAuthority) -> None:
    impostor = create_ca("Tokenvault test CA", days=1)
    issued = issue_server_certificate(impostor, hosts=["localhost"])

    with pytest.raises(InvalidSignature):
        issued.certificate.verify_directly_issued_by(ca.certificate)


def test_server_certificate_sans(ca: CertificateAuthority) -> None:
    issued = issue_server_certificate(ca, hosts=["localhost", "vault.internal", "127.0.0.1", "::1"])
    names = _extension(issued.certificate, x509.SubjectAlternativeName)

    assert names.get_values_for_type(x509.DNSName) == ["localhost", "vault.internal"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    common_name = issued.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert common_name[0].value == "localhost"


def test_server_certificate_usage(ca: CertificateAuthority) -> None:
    issued = issue_server_certificate(ca, hosts=["localhost"])
    certificate = issued.certificate

    assert list(_extension(certificate, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not _extension(certificate, x509.BasicConstraints).ca
    assert _extension(certificate, x509.KeyUsage).digital_signature
    assert (
        _extension(certificate, x509.AuthorityKeyIdentifier).key_identifier
        == _extension(ca.certificate, x509.SubjectKeyIdentifier).digest
    )
    assert isinstance(issued.private_key.curve, ec.SECP256R1)


def test_serial_numbers_random(ca: CertificateAuthority) -> None:
    first = issue_server_certificate(ca, hosts=["localhost"])
    second = issue_server_certificate(ca, hosts=["localhost"])

    assert first.certificate.serial_number != second.certificate.serial_number
    assert first.certificate.serial_number.bit_length() > 64


@pytest.mark.parametrize("hosts", [[], ["bad host"], ["-leading.example"], ["ünicode.example"]])
def test_invalid_hosts_rejected(ca: CertificateAuthority, hosts: list[str]) -> None:
    with pytest.raises(ValueError):
        issue_server_certificate(ca, hosts=hosts)


def test_leaf_capped_at_ca_expiry(ca: CertificateAuthority) -> None:
    issued = issue_server_certificate(ca, hosts=["localhost"], days=3650)

    assert issued.certificate.not_valid_after_utc == ca.certificate.not_valid_after_utc


# -- client certificates ---------------------------------------------------------------------


def test_client_certificate_spiffe_id(ca: CertificateAuthority) -> None:
    issued = issue_client_certificate(
        ca, common_name="gateway", spiffe_id=SPIFFE_ID, dns_names=["gateway.internal"]
    )
    certificate = issued.certificate
    names = _extension(certificate, x509.SubjectAlternativeName)

    certificate.verify_directly_issued_by(ca.certificate)
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE_ID]
    assert names.get_values_for_type(x509.DNSName) == ["gateway.internal"]
    assert list(_extension(certificate, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_client_certificate_passes_client_verifier(ca: CertificateAuthority) -> None:
    issued = issue_client_certificate(ca, common_name="gateway", spiffe_id=SPIFFE_ID)
    verifier = PolicyBuilder().store(Store([ca.certificate])).build_client_verifier()

    verified = verifier.verify(issued.certificate, [])

    assert verified.subjects is not None
    assert x509.UniformResourceIdentifier(SPIFFE_ID) in verified.subjects


def test_client_without_names_has_no_san(ca: CertificateAuthority) -> None:
    issued = issue_client_certificate(ca, common_name="batch")

    with pytest.raises(x509.ExtensionNotFound):
        issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)


@pytest.mark.parametrize("spiffe_id", ["https://tokenvault.dev/x", "spiffe://", "gateway"])
def test_invalid_spiffe_id_rejected(ca: CertificateAuthority, spiffe_id: str) -> None:
    with pytest.raises(ValueError, match="SPIFFE ID"):
        issue_client_certificate(ca, common_name="gateway", spiffe_id=spiffe_id)


# -- files -----------------------------------------------------------------------------------


def test_key_file_mode_0600(ca: CertificateAuthority, tmp_path: Path) -> None:
    old_umask = os.umask(0)
    try:
        write_private_key(tmp_path / "ca-key.pem", ca.private_key)
        write_certificate(tmp_path / "ca.pem", ca.certificate)
    finally:
        os.umask(old_umask)

    assert _mode(tmp_path / "ca-key.pem") == 0o600
    assert _mode(tmp_path / "ca.pem") == 0o644


def test_write_refuses_overwrite(ca: CertificateAuthority, tmp_path: Path) -> None:
    key_path = tmp_path / "key.pem"
    key_path.write_text("keep me")

    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_private_key(key_path, ca.private_key)
    with pytest.raises(FileExistsError):
        write_certificate(key_path, ca.certificate)

    assert key_path.read_text() == "keep me"


def test_overwrite_replaces_file(ca: CertificateAuthority, tmp_path: Path) -> None:
    key_path = tmp_path / "key.pem"
    key_path.write_text("old")
    key_path.chmod(0o644)

    write_private_key(key_path, ca.private_key, overwrite=True)

    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert _mode(key_path) == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == ["key.pem"]


def test_load_ca_round_trip(ca: CertificateAuthority, tmp_path: Path) -> None:
    write_certificate(tmp_path / "ca.pem", ca.certificate)
    write_private_key(tmp_path / "ca-key.pem", ca.private_key)

    loaded = load_ca(tmp_path / "ca.pem", tmp_path / "ca-key.pem")
    issued = issue_server_certificate(loaded, hosts=["localhost"])

    assert loaded.certificate == ca.certificate
    issued.certificate.verify_directly_issued_by(ca.certificate)


def test_load_ca_rejects_readable_key(ca: CertificateAuthority, tmp_path: Path) -> None:
    write_certificate(tmp_path / "ca.pem", ca.certificate)
    write_private_key(tmp_path / "ca-key.pem", ca.private_key)
    (tmp_path / "ca-key.pem").chmod(0o640)

    with pytest.raises(ConfigError, match=re.escape(f"run chmod 600 {tmp_path / 'ca-key.pem'}")):
        load_ca(tmp_path / "ca.pem", tmp_path / "ca-key.pem")


def test_load_ca_rejects_other_key(ca: CertificateAuthority, tmp_path: Path) -> None:
    write_certificate(tmp_path / "ca.pem", ca.certificate)
    write_private_key(tmp_path / "other-key.pem", create_ca("Other", days=1).private_key)

    with pytest.raises(ConfigError, match="does not belong"):
        load_ca(tmp_path / "ca.pem", tmp_path / "other-key.pem")


def test_load_ca_rejects_leaf(ca: CertificateAuthority, tmp_path: Path) -> None:
    issued = issue_server_certificate(ca, hosts=["localhost"])
    write_certificate(tmp_path / "server.pem", issued.certificate)
    write_private_key(tmp_path / "server-key.pem", issued.private_key)

    with pytest.raises(ConfigError, match="not a CA certificate"):
        load_ca(tmp_path / "server.pem", tmp_path / "server-key.pem")


def test_load_ca_rejects_missing_and_garbage(tmp_path: Path) -> None:
    (tmp_path / "garbage.pem").write_text("not a certificate")

    with pytest.raises(ConfigError, match="does not exist"):
        load_ca(tmp_path / "missing.pem", tmp_path / "missing-key.pem")
    with pytest.raises(ConfigError, match="not a PEM X.509 certificate"):
        load_ca(tmp_path / "garbage.pem", tmp_path / "missing-key.pem")

"""Certificates for mutual TLS: a small CA that issues server and client certificates.

Every key is ECDSA P-256 and every signature ECDSA with SHA-256. The CA may sign end-entity
certificates only (pathlen 0). Client certificates carry the caller's SPIFFE ID as a URI SAN,
which the server reads as the caller's identity.

Validity starts 5 minutes in the past to tolerate clock skew between hosts. An issued
certificate never outlives its CA: its end is capped at the CA's end.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vault.errors import ConfigError

DEFAULT_CA_DAYS = 365
DEFAULT_LEAF_DAYS = 90
CLOCK_SKEW = dt.timedelta(minutes=5)

# A DNS name in ASCII: labels of letters, digits and hyphens, optionally a leading "*." wildcard.
_DNS_NAME = re.compile(
    r"(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate and its private key."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class IssuedCertificate:
    """An end-entity certificate and its private key."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey


# -- issuing ---------------------------------------------------------------------------------


def create_ca(common_name: str, *, days: int = DEFAULT_CA_DAYS) -> CertificateAuthority:
    """Create a self-signed CA certificate with a new P-256 key, valid for ``days`` days."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_before, not_after = _validity(days, None)
    public_key = private_key.public_key()

    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(private_key, hashes.SHA256())
    )
    return CertificateAuthority(certificate=certificate, private_key=private_key)


def issue_server_certificate(
    ca: CertificateAuthority, *, hosts: Sequence[str], days: int = DEFAULT_LEAF_DAYS
) -> IssuedCertificate:
    """Issue a TLS server certificate for ``hosts``: DNS names and IP addresses, mixed.

    Each host that parses as an IPv4 or IPv6 address becomes an IP address SAN, every other
    one a DNS name SAN. The first host is also the subject common name. Raises ValueError for
    an empty list or a host that is neither.
    """
    if not hosts:
        raise ValueError("hosts is empty; give at least one DNS name or IP address")
    names = [_host_name(host) for host in hosts]
    return _issue(
        ca,
        common_name=hosts[0],
        subject_alternative_names=names,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        days=days,
    )


def issue_client_certificate(
    ca: CertificateAuthority,
    *,
    common_name: str,
    spiffe_id: str | None = None,
    dns_names: Sequence[str] = (),
    days: int = DEFAULT_LEAF_DAYS,
) -> IssuedCertificate:
    """Issue a TLS client certificate, with ``spiffe_id`` as a URI SAN when given.

    Raises ValueError for a SPIFFE ID that does not start with ``spiffe://`` or an invalid DNS
    name.
    """
    names: list[x509.GeneralName] = []
    if spiffe_id is not None:
        if not spiffe_id.startswith("spiffe://") or len(spiffe_id) == len("spiffe://"):
            raise ValueError(f"SPIFFE ID {spiffe_id!r} does not start with spiffe://<trust domain>")
        names.append(x509.UniformResourceIdentifier(spiffe_id))
    for dns_name in dns_names:
        names.append(_dns_name(dns_name))
    return _issue(
        ca,
        common_name=common_name,
        subject_alternative_names=names,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        days=days,
    )


def _issue(
    ca: CertificateAuthority,
    *,
    common_name: str,
    subject_alternative_names: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
) -> IssuedCertificate:
    private_key = ec.generate_private_key(ec.SECP256R1())
    public_key = private_key.public_key()
    not_before, not_after = _validity(days, ca.certificate)
    ca_key_identifier = ca.certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value

    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_identifier),
            critical=False,
        )
    )
    # RFC 5280 forbids an empty SAN extension, so a client without names gets none.
    if subject_alternative_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(subject_alternative_names), critical=False
        )
    certificate = builder.sign(ca.private_key, hashes.SHA256())
    return IssuedCertificate(certificate=certificate, private_key=private_key)


def _validity(
    days: int, ca_certificate: x509.Certificate | None
) -> tuple[dt.datetime, dt.datetime]:
    if days < 1:
        raise ValueError(f"days is {days}; a certificate must be valid for at least 1 day")
    now = dt.datetime.now(dt.UTC)
    not_after = now + dt.timedelta(days=days)
    if ca_certificate is not None:
        not_after = min(not_after, ca_certificate.not_valid_after_utc)
    return now - CLOCK_SKEW, not_after


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return _dns_name(host)


def _dns_name(name: str) -> x509.DNSName:
    if len(name) > 253 or not _DNS_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid DNS name or IP address; "
            "write internationalized names in their xn-- form"
        )
    return x509.DNSName(name)


# -- files -----------------------------------------------------------------------------------


def write_certificate(
    path: Path | str, certificate: x509.Certificate, *, overwrite: bool = False
) -> None:
    """Write ``certificate`` as PEM, mode 0644. Raises FileExistsError unless ``overwrite``."""
    data = certificate.public_bytes(serialization.Encoding.PEM)
    _write_file(Path(path), data, mode=0o644, overwrite=overwrite)


def write_private_key(
    path: Path | str, private_key: ec.EllipticCurvePrivateKey, *, overwrite: bool = False
) -> None:
    """Write ``private_key`` as unencrypted PKCS#8 PEM, mode 0600.

    Raises FileExistsError unless ``overwrite``. The file is created with mode 0600, so the
    key is never readable by others, not even for a moment.
    """
    data = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_file(Path(path), data, mode=0o600, overwrite=overwrite)


def load_ca(cert_path: Path | str, key_path: Path | str) -> CertificateAuthority:
    """Load a CA written by ``write_certificate`` and ``write_private_key``.

    Raises ConfigError when a file is missing or invalid, when the key file is accessible by
    group or others, when the certificate is not a CA or has expired, or when the key does not
    belong to the certificate.
    """
    cert_path = Path(cert_path)
    key_path = Path(key_path)

    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"CA certificate {cert_path} does not exist") from None
    except ValueError:
        raise ConfigError(f"CA certificate {cert_path} is not a PEM X.509 certificate") from None

    try:
        basic_constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        basic_constraints = None
    if basic_constraints is None or not basic_constraints.value.ca:
        raise ConfigError(f"certificate {cert_path} is not a CA certificate (basicConstraints)")
    if certificate.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise ConfigError(
            f"CA certificate {cert_path} expired on {certificate.not_valid_after_utc:%Y-%m-%d}; "
            "create a new CA and reissue its certificates"
        )

    private_key = _load_private_key(key_path)
    if private_key.public_key() != certificate.public_key():
        raise ConfigError(f"private key {key_path} does not belong to CA certificate {cert_path}")
    return CertificateAuthority(certificate=certificate, private_key=private_key)


def _load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"private key {path} does not exist") from None
    with os.fdopen(fd, "rb") as file:
        mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"private key {path} is accessible by group or others (mode {mode:04o}); "
                f"run chmod 600 {path}"
            )
        data = file.read()

    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # TypeError: the key is encrypted, which this loader does not support.
        raise ConfigError(f"private key {path} is not an unencrypted PEM private key") from None
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"private key {path} is not an ECDSA key")
    return private_key


def _write_file(path: Path, data: bytes, *, mode: int, overwrite: bool) -> None:
    """Write a new file with ``mode``, or with ``overwrite`` replace an existing one atomically.

    Both ways create the file with O_EXCL, so the data never lands in a file that someone
    else created with a wider mode.
    """
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    target = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp") if overwrite else path
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it") from None
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # set the mode exactly, whatever the umask
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if overwrite:
            os.replace(target, path)
    except BaseException:
        target.unlink(missing_ok=True)
        raise

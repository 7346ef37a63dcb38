"""Caller identity from the client certificate of a mutual-TLS connection.

The identity is, in order of preference, the SPIFFE ID from a URI SAN (``spiffe://...``), the
first DNS SAN, then the subject common name. The certificate's SHA-256 fingerprint and serial
number travel with it for the audit trail and for revocation by serial.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from vault.errors import Unauthenticated

_PRINTABLE_IDENTITY = re.compile(r"[\x21-\x7e]{1,512}")


@dataclass(frozen=True)
class Caller:
    identity: str
    fingerprint_sha256: str
    serial_number: int


@dataclass(frozen=True)
class CallInfo:
    """The caller of one RPC and the ids that correlate it, all recorded in the audit trail."""

    caller: Caller
    request_id: str
    peer: str = ""
    trace_id: str = ""


def identity_from_certificate(certificate: x509.Certificate) -> Caller:
    """Derive the caller identity from a verified client certificate."""
    spiffe_id = _spiffe_id(certificate)
    identity = spiffe_id or _first_dns_name(certificate) or _common_name(certificate)
    if not identity:
        raise Unauthenticated("client certificate has no SPIFFE ID, DNS name or common name")
    if not _PRINTABLE_IDENTITY.fullmatch(identity):
        raise Unauthenticated("client certificate identity contains spaces or control characters")
    if spiffe_id is None and "://" in identity:
        # Only a URI SAN may carry a SPIFFE ID. A CN or DNS name that looks like one would let
        # anyone who can choose a certificate's CN claim another caller's identity.
        raise Unauthenticated("client certificate names a URI outside a URI SAN")
    der = certificate.public_bytes(serialization.Encoding.DER)
    return Caller(
        identity=identity,
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        serial_number=certificate.serial_number,
    )


def identity_from_auth_context(auth_context: Mapping[str, Sequence[bytes]]) -> Caller:
    """Derive the caller from gRPC's auth context (``context.auth_context()``).

    gRPC fills the context only after it verified the chain against the configured client CA,
    so a certificate found here is trusted.
    """
    pem_values = auth_context.get("x509_pem_cert") or []
    if not pem_values:
        raise Unauthenticated("a client certificate is required (mutual TLS)")
    try:
        certificate = x509.load_pem_x509_certificate(pem_values[0])
    except ValueError:
        raise Unauthenticated("client certificate could not be parsed") from None
    return identity_from_certificate(certificate)


def _san(certificate: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def _spiffe_id(certificate: x509.Certificate) -> str | None:
    san = _san(certificate)
    uris = san.get_values_for_type(x509.UniformResourceIdentifier) if san else []
    for uri in uris:
        if uri.startswith("spiffe://"):
            return uri
    return None


def _first_dns_name(certificate: x509.Certificate) -> str | None:
    san = _san(certificate)
    names = san.get_values_for_type(x509.DNSName) if san else []
    return names[0] if names else None


def _common_name(certificate: x509.Certificate) -> str | None:
    attributes = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode()

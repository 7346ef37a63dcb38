"""Tamper-evident audit trail: events in a SHA-256 hash chain with Ed25519-signed checkpoints.

``AuditTrail`` writes the chain, ``export`` streams it as JSON lines, and ``verify_records``,
``verify_export`` and ``verify_database`` check it with the public key alone.
"""

from vault.audit.events import MAX_TOKEN_DIGESTS, AuditEvent, split_by_digests, token_digest
from vault.audit.export import export
from vault.audit.signing import generate_keypair, load_signing_key, load_verify_key
from vault.audit.trail import AuditTrail, AuditUnavailable
from vault.audit.verify import (
    BrokenLink,
    VerifyReport,
    verify_database,
    verify_export,
    verify_records,
)

__all__ = [
    "MAX_TOKEN_DIGESTS",
    "AuditEvent",
    "AuditTrail",
    "AuditUnavailable",
    "BrokenLink",
    "VerifyReport",
    "export",
    "generate_keypair",
    "load_signing_key",
    "load_verify_key",
    "split_by_digests",
    "token_digest",
    "verify_database",
    "verify_export",
    "verify_records",
]

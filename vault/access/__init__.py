"""Access control beyond scopes: the reloadable policy file, revocations, suspensions, the gate.

A request passes ``AccessGate.check`` (revoked, pinned certificate, source address, suspended)
before the scope checks of ``vault.policy.Policy``. Revocations and suspensions are stored in
PostgreSQL and mirrored in memory by every replica; see ``vault.access.changes`` for how fresh
that copy is kept.
"""

from vault.access.gate import AccessGate, parse_peer
from vault.access.policy_store import PolicyStatus, PolicyStore, ReloadResult
from vault.access.revocation import Revocation, RevocationList, format_serial
from vault.access.suspension import ANOMALY_DETECTOR, Suspension, Suspensions

__all__ = [
    "ANOMALY_DETECTOR",
    "AccessGate",
    "PolicyStatus",
    "PolicyStore",
    "ReloadResult",
    "Revocation",
    "RevocationList",
    "Suspension",
    "Suspensions",
    "format_serial",
    "parse_peer",
]

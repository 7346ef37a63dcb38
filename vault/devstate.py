"""File layout of the state folder that `tokenvault dev` creates (``.tokenvault`` by default).

The client commands read the same layout, so `tokenvault tokenize --state DIR --as gateway`
finds the endpoint and the demo caller's certificate without more flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = Path(".tokenvault")
STATE_DIR_ENV = "TOKENVAULT_STATE_DIR"

# Demo callers and what the dev policy lets each do.
DEMO_CALLERS = {
    "gateway": "tokenize every template",
    "backoffice": "detokenize every template, full or masked",
    "support": "detokenize every template, masked only",
    "custodian": "administer keys",
    "custodian2": "administer keys (the second person that destroying a key needs)",
    "security": "revoke callers, lift suspensions, reload the policy",
    "auditor": "read the audit trail",
}


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV, DEFAULT_STATE_DIR))


@dataclass(frozen=True)
class StatePaths:
    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca-key.pem"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server-key.pem"

    @property
    def kek(self) -> Path:
        return self.root / "kek.json"

    @property
    def policy(self) -> Path:
        return self.root / "policy.toml"

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def audit_signing_key(self) -> Path:
        return self.root / "audit-signing.key"

    @property
    def audit_verify_key(self) -> Path:
        return self.root / "audit-signing.pub"

    @property
    def endpoint(self) -> Path:
        """File holding ``host:port`` of the running dev server."""
        return self.root / "endpoint"

    def client_cert(self, caller: str) -> Path:
        return self.root / "clients" / f"{caller}.pem"

    def client_key(self, caller: str) -> Path:
        return self.root / "clients" / f"{caller}-key.pem"

    @staticmethod
    def spiffe_id(caller: str) -> str:
        """SPIFFE ID that the dev CA puts in a demo caller's certificate."""
        return f"spiffe://tokenvault.dev/{caller}"

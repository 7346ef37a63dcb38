"""Audit events for detokenization, written before any value leaves the service."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg


def token_digest(template: str, canonical_token: str) -> str:
    """Return the SHA-256 hex digest that the audit trail records instead of the token."""
    return hashlib.sha256(f"{template}:{canonical_token}".encode()).hexdigest()


@dataclass(frozen=True)
class AuditEvent:
    caller: str
    operation: str
    template: str
    token_digest: str | None
    reference: str
    reveal: str
    purpose: str
    outcome: str
    status_code: str
    request_id: str
    item_count: int = 1


class AuditLog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, events: Sequence[AuditEvent]) -> None:
        """Insert every event in one statement; raises if the database does not take them."""
        if not events:
            return
        await self._pool.execute(
            """
            INSERT INTO tv_audit_events (caller, operation, template, token_digest, reference,
                                         reveal, purpose, outcome, status_code, request_id,
                                         item_count)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                                 $11::int[])
            """,
            [e.caller for e in events],
            [e.operation for e in events],
            [e.template for e in events],
            [e.token_digest for e in events],
            [e.reference for e in events],
            [e.reveal for e in events],
            [e.purpose for e in events],
            [e.outcome for e in events],
            [e.status_code for e in events],
            [e.request_id for e in events],
            [e.item_count for e in events],
        )

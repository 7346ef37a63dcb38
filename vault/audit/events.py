"""Audit events: who called which operation, on what, with which outcome. Never a value or token.

An event names tokens only by ``token_digest``, so an investigator who has a token can find
its events while the audit trail itself lists no tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

# Token digests stored in one event. A request with more items is recorded as several events
# (see ``split_by_digests``), so one row stays small whatever the batch size.
MAX_TOKEN_DIGESTS = 100
# Upper bound on every text field, far above what the service accepts for purpose and reference;
# it only stops a bug from writing huge rows.
MAX_TEXT_CHARS = 1024
OUTCOMES = frozenset({"ok", "partial", "failed", "denied"})
REVEALS = frozenset({"", "full", "masked"})

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_TRACE_ID = re.compile(r"[0-9a-f]{0,64}")
_TEXT_FIELDS = (
    "caller",
    "fingerprint",
    "operation",
    "template",
    "reference",
    "reveal",
    "purpose",
    "outcome",
    "status_code",
    "trace_id",
    "peer",
    "request_id",
)


def token_digest(template: str, canonical_token: str) -> str:
    """Return the SHA-256 hex digest that the audit trail records instead of the token."""
    return hashlib.sha256(f"{template}:{canonical_token}".encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """One audited call, or one part of a call that concerns a single template.

    Construction raises ValueError on a field that the chain could not store, so a bad event
    fails its caller and never the background batch that other callers' events share.
    """

    caller: str
    # SHA-256 hex of the client certificate (DER), or "" when the caller had none.
    fingerprint: str = ""
    operation: str
    template: str = ""
    item_count: int = 1
    # Lowercase hex ``token_digest`` values, at most MAX_TOKEN_DIGESTS.
    token_digests: tuple[str, ...] = ()
    reference: str = ""
    reveal: str = ""
    purpose: str = ""
    outcome: str
    # gRPC status code name, such as "OK" or "PERMISSION_DENIED".
    status_code: str
    trace_id: str = ""
    peer: str = ""
    request_id: str = ""

    def __post_init__(self) -> None:
        # A list given by the caller would make the frozen event mutable and unhashable.
        object.__setattr__(self, "token_digests", tuple(self.token_digests))

        for name in _TEXT_FIELDS:
            _check_text(name, getattr(self, name))
        if not self.caller:
            raise ValueError("AuditEvent.caller must not be empty")
        if not self.operation:
            raise ValueError("AuditEvent.operation must not be empty")

        if self.outcome not in OUTCOMES:
            raise ValueError(
                f"AuditEvent.outcome must be one of {', '.join(sorted(OUTCOMES))},"
                f" got {self.outcome!r}"
            )
        if self.reveal not in REVEALS:
            raise ValueError(
                f"AuditEvent.reveal must be '', 'full' or 'masked', got {self.reveal!r}"
            )

        if isinstance(self.item_count, bool) or not isinstance(self.item_count, int):
            raise ValueError("AuditEvent.item_count must be an integer")
        if not 0 <= self.item_count < 2**31:
            raise ValueError(f"AuditEvent.item_count must be 0 to 2**31-1, got {self.item_count}")

        if len(self.token_digests) > MAX_TOKEN_DIGESTS:
            raise ValueError(
                f"AuditEvent.token_digests has {len(self.token_digests)} digests, more than"
                f" {MAX_TOKEN_DIGESTS}; use split_by_digests"
            )
        for digest in self.token_digests:
            if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
                raise ValueError("AuditEvent.token_digests must be 64-digit lowercase hex strings")

        if self.fingerprint and not _SHA256_HEX.fullmatch(self.fingerprint):
            raise ValueError("AuditEvent.fingerprint must be '' or 64-digit lowercase hex")
        if not _TRACE_ID.fullmatch(self.trace_id):
            raise ValueError("AuditEvent.trace_id must be '' or at most 64 lowercase hex digits")


def split_by_digests(event: AuditEvent, digests: Iterable[str]) -> list[AuditEvent]:
    """Copy ``event`` once per MAX_TOKEN_DIGESTS digests, each copy with its part of ``digests``.

    Each copy counts the items whose digests it carries. The last copy also counts the items of
    ``event.item_count`` that have no digest, so the copies add up to ``event.item_count`` when
    it is at least the number of digests. Without digests, returns ``[event]`` unchanged.
    """
    all_digests = tuple(digests)
    if not all_digests:
        return [event]
    items_without_digest = max(0, event.item_count - len(all_digests))
    copies = []
    for start in range(0, len(all_digests), MAX_TOKEN_DIGESTS):
        part = all_digests[start : start + MAX_TOKEN_DIGESTS]
        is_last = start + MAX_TOKEN_DIGESTS >= len(all_digests)
        item_count = len(part) + (items_without_digest if is_last else 0)
        copies.append(dataclasses.replace(event, token_digests=part, item_count=item_count))
    return copies


def _check_text(name: str, text: object) -> None:
    if not isinstance(text, str):
        raise ValueError(f"AuditEvent.{name} must be a string")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"AuditEvent.{name} must be at most {MAX_TEXT_CHARS} characters")
    # PostgreSQL text cannot hold NUL, and lone surrogates have no UTF-8 encoding.
    if "\x00" in text:
        raise ValueError(f"AuditEvent.{name} must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"AuditEvent.{name} must be valid Unicode text") from None

"""The hash chain that makes the audit log tamper-evident.

Every stored event has a ``seq`` (1, 2, 3 … with no gaps, shared by every replica), the
``prev_hash`` of the event at ``seq - 1`` (32 zero bytes for seq 1) and its own ``hash``::

    hash = SHA-256(prev_hash || canonical_event_bytes(event))

where ``prev_hash`` is the raw 32 bytes, not hex. The canonical encoding of an event is a JSON
object with exactly the members below. Keys are sorted by code point, there is no whitespace
(separators ``,`` and ``:``), and the text is UTF-8 with non-ASCII characters unescaped::

    seq            integer
    occurred_at    string, RFC 3339 in UTC with exactly six fraction digits and "Z",
                   for example "2024-05-01T12:00:00.000000Z"
    caller, fingerprint, operation, template, reference, reveal, purpose, outcome,
    status_code, trace_id, peer, request_id
                   strings ("" when unset)
    item_count     integer
    token_digests  array of strings, in stored order

Strings are escaped as Python's ``json.dumps(..., ensure_ascii=False)`` does: ``"`` and ``\\``
with a backslash, control characters below U+0020 as ``\\b \\f \\n \\r \\t`` or
``\\u00xx`` with lowercase hex, and nothing else. For these value types (ASCII member names,
strings, integers below 2**53) the result is the same byte string as RFC 8785 (JSON
Canonicalization Scheme), so an auditor can recompute hashes with any JCS library. The
exported JSON lines (``vault.audit.export``) carry every member under the same name, so a
verifier builds this object from an export record by picking the members.

The chain shows that a row was edited, deleted or moved, but anyone who can write the table can
also recompute every later hash. Signed checkpoints (``vault.audit.signing``) close that gap up
to the last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from vault.audit.events import AuditEvent

HASH_SIZE = 32
GENESIS_HASH = bytes(HASH_SIZE)

# Event members in export order; the canonical encoding sorts them, so this order is not hashed.
EVENT_FIELDS = (
    "caller",
    "fingerprint",
    "operation",
    "template",
    "item_count",
    "token_digests",
    "reference",
    "reveal",
    "purpose",
    "outcome",
    "status_code",
    "trace_id",
    "peer",
    "request_id",
)
HASHED_FIELDS = ("seq", "occurred_at", *EVENT_FIELDS)
_INTEGER_FIELDS = frozenset({"seq", "item_count"})


class MalformedRecord(ValueError):
    """An event record lacks a hashed member or has one of the wrong type."""


def format_timestamp(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with microseconds, as the chain hashes it."""
    if moment.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_fields(event: AuditEvent) -> dict[str, Any]:
    """Return the members of ``event`` that are hashed and exported, in export order."""
    fields = {name: getattr(event, name) for name in EVENT_FIELDS}
    fields["token_digests"] = list(event.token_digests)
    return fields


def canonical_event_bytes(record: Mapping[str, Any]) -> bytes:
    """Encode the hashed members of ``record`` canonically; other members are ignored.

    ``record`` is an export record or any mapping with the members in HASHED_FIELDS, where
    ``occurred_at`` is already the RFC 3339 string. Raises MalformedRecord on a missing member
    or a member of the wrong JSON type.
    """
    selected: dict[str, Any] = {}
    for name in HASHED_FIELDS:
        if name not in record:
            raise MalformedRecord(f"event record has no {name!r} member")
        value = record[name]
        if name in _INTEGER_FIELDS:
            valid = isinstance(value, int) and not isinstance(value, bool)
        elif name == "token_digests":
            valid = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
            value = list(value) if valid else value
        else:
            valid = isinstance(value, str)
        if not valid:
            raise MalformedRecord(f"event record member {name!r} has the wrong type")
        selected[name] = value
    return json.dumps(selected, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def chain_hash(prev_hash: bytes, record: Mapping[str, Any]) -> bytes:
    """Return SHA-256(prev_hash || canonical_event_bytes(record))."""
    if len(prev_hash) != HASH_SIZE:
        raise ValueError(f"prev_hash must be {HASH_SIZE} bytes, got {len(prev_hash)}")
    return hashlib.sha256(prev_hash + canonical_event_bytes(record)).digest()

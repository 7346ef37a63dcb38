"""Audit events built from calls and their results; none carries a value or a token."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import groupby
from typing import Protocol

from vault.access.gate import parse_peer
from vault.audit.events import AuditEvent, split_by_digests, token_digest
from vault.audit.trail import AuditTrail
from vault.identity import CallInfo
from vault.telemetry import Telemetry


def _event(call: CallInfo, **fields: object) -> AuditEvent:
    address = parse_peer(call.peer)
    return AuditEvent(
        caller=call.caller.identity,
        fingerprint=call.caller.fingerprint_sha256,
        trace_id=call.trace_id,
        peer=str(address) if address is not None else "",
        request_id=call.request_id,
        **fields,  # type: ignore[arg-type]
    )


def outcome_of(statuses: Sequence[str]) -> str:
    ok = sum(1 for status in statuses if status == "OK")
    if ok == len(statuses):
        return "ok"
    return "partial" if ok else "failed"


def item_events(
    call: CallInfo,
    operation: str,
    items: Sequence[tuple[str, str, str | None]],
    *,
    reveal: str = "",
    purpose: str = "",
) -> list[AuditEvent]:
    """Group (template, status, canonical token or None) items into events per template and status.

    Each event carries the digests of its items' tokens, split into several events when there
    are more than one event can hold.
    """
    events: list[AuditEvent] = []
    ordered = sorted(items, key=lambda item: (item[0], item[1]))
    for (template, status), group in groupby(ordered, key=lambda item: (item[0], item[1])):
        members = list(group)
        digests = [token_digest(template, token) for _, _, token in members if token]
        base = _event(
            call,
            operation=operation,
            template=template,
            item_count=len(members),
            reveal=reveal,
            purpose=purpose,
            outcome=_outcome_for_status(status),
            status_code=status,
        )
        events.extend(split_by_digests(base, digests) if digests else [base])
    return events


def call_event(
    call: CallInfo,
    operation: str,
    status: str,
    *,
    templates: Sequence[str] = (),
    item_count: int = 0,
    purpose: str = "",
) -> AuditEvent:
    """Return one event for a whole call (an admin call, or a call refused before its items)."""
    names = sorted(set(templates))
    return _event(
        call,
        operation=operation,
        template=names[0] if len(names) == 1 else "",
        item_count=item_count,
        purpose=purpose,
        outcome=_outcome_for_status(status),
        status_code=status,
    )


def _outcome_for_status(status: str) -> str:
    if status == "OK":
        return "ok"
    if status in ("PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED"):
        return "denied"
    return "failed"


def safe_template(name: str, known: Mapping[str, object]) -> str:
    """Return ``name`` if it is a configured template, else a placeholder (it is caller text)."""
    return name if name in known else "(unknown)"


class AuditRecorder(Protocol):
    """The part of the audit trail that the service and the guard use."""

    async def record(self, events: Sequence[AuditEvent], *, durable: bool) -> None: ...


class CountedAuditTrail:
    """An AuditTrail that also counts the events it stores, by outcome, in the metrics."""

    def __init__(self, trail: AuditTrail, telemetry: Telemetry | None) -> None:
        self._trail = trail
        self._telemetry = telemetry

    async def record(self, events: Sequence[AuditEvent], *, durable: bool) -> None:
        await self._trail.record(events, durable=durable)
        if self._telemetry is not None:
            for outcome, group in groupby(sorted(event.outcome for event in events)):
                self._telemetry.record_audit(outcome, len(list(group)))

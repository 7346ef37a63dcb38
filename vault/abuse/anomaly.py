"""Suspend a caller whose detokenize use looks like abuse, before any value is revealed.

Two rules from a caller's ``AnomalyRule``, checked in this order:

- allowed hours: a detokenize outside the (start, end) local times in the rule's timezone. The
  start is inclusive and the end exclusive. A start later than the end makes a window across
  midnight (22:00-06:00), and equal times allow the whole day.
- volume: the items detokenized per identity in fixed windows of ``window_seconds`` aligned to
  the Unix epoch, counted in PostgreSQL (table ``tv_detokenize_windows``) so all replicas add
  to the same total. The call that would take the total above ``max_items_per_window`` is
  rejected. Rejected calls are not counted, because they reveal nothing.

Either finding calls ``suspend(identity, reason)``, logs a WARNING and raises CallerSuspended.
Database and ``suspend`` errors propagate, so the call fails and reveals nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

import asyncpg

from vault.errors import PermissionDenied, TokenvaultError
from vault.policy import AnomalyRule

logger = logging.getLogger(__name__)

Suspend = Callable[[str, str], Awaitable[None]]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Adds the call's items unless the total would pass the maximum. In that case the WHERE clause
# leaves the row as it is, so RETURNING yields no row. The update takes the row lock, so
# concurrent calls from any replica add one after another. $1 identity, $2 window length in
# seconds, $3 window start, $4 items, $5 max items per window.
_ADD_ITEMS_SQL = """
INSERT INTO tv_detokenize_windows AS window_row (identity, window_seconds, window_start, items)
VALUES ($1, $2, $3, $4)
ON CONFLICT (identity, window_seconds, window_start) DO UPDATE
SET items = window_row.items + excluded.items
WHERE window_row.items + excluded.items <= $5
RETURNING items
"""

_WINDOW_TOTAL_SQL = """
SELECT items FROM tv_detokenize_windows
WHERE identity = $1 AND window_seconds = $2 AND window_start = $3
"""

# The second condition implies the first, which is there so the planner can use the
# window_start index.
_PURGE_SQL = """
DELETE FROM tv_detokenize_windows
WHERE window_start < $1 AND window_start + window_seconds * interval '1 second' <= $1
"""


@dataclass(frozen=True)
class AnomalyVerdict:
    """Outcome of one detokenize check.

    ``reason`` is the text passed to ``suspend``, and ``alert`` a one-line description for an
    audit event; both are None when the call passed. ``window_items`` is the total in the
    current volume window: with this call when it passed, without it when it was rejected, and
    None when the rule has no volume limit.
    """

    allowed: bool
    reason: str | None = None
    alert: str | None = None
    window_start: datetime | None = None
    window_items: int | None = None


class CallerSuspended(PermissionDenied):
    """The caller was suspended for anomalous detokenize use: maps to PERMISSION_DENIED.

    ``verdict`` carries the reason, the alert text and the window totals for the audit event.
    """

    def __init__(self, verdict: AnomalyVerdict) -> None:
        # PermissionDenied's own constructor words the message for a missing scope.
        TokenvaultError.__init__(
            self,
            f"caller suspended: {verdict.reason}; an administrator can lift the suspension"
            " (tokenvault callers lift)",
        )
        self.scope = "detokenize"
        self.verdict = verdict


class AnomalyDetector:
    """Applies a caller's AnomalyRule to each detokenize call.

    ``clock`` returns the current time as a timezone-aware datetime; it defaults to this host's
    clock. Replicas are assumed to keep their clocks in sync (NTP), because a skew moves the
    window boundaries of one replica by the same amount.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        suspend: Suspend,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._pool = pool
        self._suspend = suspend
        self._clock = clock if clock is not None else _utc_now

    async def check_detokenize(
        self, identity: str, items: int, rule: AnomalyRule | None
    ) -> AnomalyVerdict:
        """Check and count a detokenize of ``items`` values by ``identity``.

        Returns the allowed verdict. Raises CallerSuspended after suspending the caller if the
        call breaks ``rule``. A call with zero items or no rule passes without any check.
        """
        if items < 0:
            raise ValueError(f"items must be zero or more, got {items}")
        if rule is None or items == 0:
            return AnomalyVerdict(allowed=True)

        now = self._now()
        if rule.allowed_hours is not None:
            await self._check_hours(identity, items, rule, rule.allowed_hours, now)
        if rule.max_items_per_window is None:
            return AnomalyVerdict(allowed=True)
        return await self._count_items(identity, items, rule, rule.max_items_per_window, now)

    async def purge(self, older_than_seconds: float) -> int:
        """Delete the windows that ended ``older_than_seconds`` or more ago; return how many.

        A window still open is never deleted, whatever the argument, so purging cannot reset
        a current count.
        """
        if older_than_seconds < 0:
            raise ValueError(f"older_than_seconds must be zero or more, got {older_than_seconds}")
        cutoff = self._now() - timedelta(seconds=older_than_seconds)
        status = await self._pool.execute(_PURGE_SQL, cutoff)
        # The command tag reads "DELETE <count>".
        return int(status.split()[-1])

    async def _check_hours(
        self,
        identity: str,
        items: int,
        rule: AnomalyRule,
        allowed_hours: tuple[time, time],
        now: datetime,
    ) -> None:
        local_time = now.astimezone(ZoneInfo(rule.timezone)).time()
        start, end = allowed_hours
        if _within_hours(local_time, start, end):
            return

        reason = "detokenize outside allowed hours"
        window_start, window_items = await self._window_totals(identity, rule, now)
        allowed_text = f"{start:%H:%M}-{end:%H:%M} {rule.timezone}"
        alert = (
            f"{reason}: {identity} requested {items} items at {local_time:%H:%M} "
            f"{rule.timezone}; allowed {allowed_text}"
        )
        verdict = AnomalyVerdict(False, reason, alert, window_start, window_items)
        fields = {
            "requested_items": items,
            "local_time": f"{local_time:%H:%M:%S}",
            "allowed_hours": allowed_text,
        }
        await self._reject(identity, verdict, fields)

    async def _count_items(
        self, identity: str, items: int, rule: AnomalyRule, max_items: int, now: datetime
    ) -> AnomalyVerdict:
        window_start = _window_start(now, rule.window_seconds)
        total: int | None = None
        # A call above the maximum on its own would insert a row already over it.
        if items <= max_items:
            total = await self._pool.fetchval(
                _ADD_ITEMS_SQL, identity, rule.window_seconds, window_start, items, max_items
            )
        if total is not None:
            return AnomalyVerdict(allowed=True, window_start=window_start, window_items=total)

        window_items = await self._read_window_total(identity, rule.window_seconds, window_start)
        reason = f"detokenize volume above {max_items} items per {rule.window_seconds} s"
        alert = (
            f"{reason}: {identity} requested {items} items in the window from "
            f"{window_start.isoformat()} that already holds {window_items} items"
        )
        verdict = AnomalyVerdict(False, reason, alert, window_start, window_items)
        fields = {
            "requested_items": items,
            "max_items_per_window": max_items,
            "window_seconds": rule.window_seconds,
        }
        await self._reject(identity, verdict, fields)

    async def _window_totals(
        self, identity: str, rule: AnomalyRule, now: datetime
    ) -> tuple[datetime | None, int | None]:
        """Return the current window and its total for an alert, or (None, None) without one."""
        if rule.max_items_per_window is None:
            return None, None
        window_start = _window_start(now, rule.window_seconds)
        return window_start, await self._read_window_total(
            identity, rule.window_seconds, window_start
        )

    async def _read_window_total(
        self, identity: str, window_seconds: int, window_start: datetime
    ) -> int:
        counted = await self._pool.fetchval(
            _WINDOW_TOTAL_SQL, identity, window_seconds, window_start
        )
        return counted if counted is not None else 0

    async def _reject(
        self, identity: str, verdict: AnomalyVerdict, fields: dict[str, Any]
    ) -> NoReturn:
        assert verdict.reason is not None
        # Logged before suspend runs, so the alert is kept even if suspending fails.
        logger.warning(
            "caller suspended for anomalous detokenize",
            extra={
                "identity": identity,
                "reason": verdict.reason,
                "window_start": verdict.window_start.isoformat() if verdict.window_start else None,
                "window_items": verdict.window_items,
                **fields,
            },
        )
        await self._suspend(identity, verdict.reason)
        raise CallerSuspended(verdict)

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the anomaly detector clock must return a timezone-aware datetime")
        return now


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _within_hours(local_time: time, start: time, end: time) -> bool:
    if start == end:
        return True
    if start < end:
        return start <= local_time < end
    # Across midnight: 22:00-06:00 allows 22:00 to 23:59:59 and 00:00 to 05:59:59.
    return local_time >= start or local_time < end


def _window_start(now: datetime, window_seconds: int) -> datetime:
    if window_seconds < 1:
        raise ValueError(f"anomaly window_seconds must be at least 1, got {window_seconds}")
    length = timedelta(seconds=window_seconds)
    # timedelta // timedelta is an exact integer, so boundaries do not drift with float error.
    return _EPOCH + (now - _EPOCH) // length * length

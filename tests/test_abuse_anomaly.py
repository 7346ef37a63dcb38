"""Detokenize anomaly rules on a real PostgreSQL: volume windows, allowed hours, purge."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, time, timedelta

import asyncpg
import grpc
import pytest

from vault.abuse.anomaly import AnomalyDetector, AnomalyVerdict, CallerSuspended
from vault.errors import PermissionDenied
from vault.policy import AnomalyRule
from vault.status import status_for
from vault.store.db import create_pool

CALLER = "spiffe://example.org/payments/gateway"
VOLUME_REASON = "detokenize volume above 100 items per 3600 s"
HOURS_REASON = "detokenize outside allowed hours"


class FakeClock:
    """A clock that moves only when the test sets or advances it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class SuspendRecorder:
    """Stands in for the caller registry: records each suspension."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, identity: str, reason: str) -> None:
        self.calls.append((identity, reason))


def utc(hour: int, minute: int = 0, *, month: int = 1, day: int = 15) -> datetime:
    return datetime(2024, month, day, hour, minute, tzinfo=UTC)


async def passes(detector: AnomalyDetector, items: int, rule: AnomalyRule) -> bool:
    try:
        await detector.check_detokenize(CALLER, items, rule)
    except CallerSuspended:
        return False
    return True


async def stored_windows(pool: asyncpg.Pool) -> list[tuple[datetime, int]]:
    rows = await pool.fetch(
        "SELECT window_start, items FROM tv_detokenize_windows ORDER BY window_start"
    )
    return [(row["window_start"], row["items"]) for row in rows]


async def test_volume_up_to_max_passes(db_pool: asyncpg.Pool) -> None:
    suspend = SuspendRecorder()
    detector = AnomalyDetector(db_pool, suspend, clock=FakeClock(utc(12, 10)))
    rule = AnomalyRule(max_items_per_window=100, window_seconds=3600)

    first = await detector.check_detokenize(CALLER, 40, rule)
    second = await detector.check_detokenize(CALLER, 60, rule)

    assert first == AnomalyVerdict(allowed=True, window_start=utc(12), window_items=40)
    assert second.window_items == 100
    assert second.alert is None
    assert suspend.calls == []


async def test_crossing_call_rejected(db_pool: asyncpg.Pool) -> None:
    suspend = SuspendRecorder()
    detector = AnomalyDetector(db_pool, suspend, clock=FakeClock(utc(12, 10)))
    rule = AnomalyRule(max_items_per_window=100, window_seconds=3600)
    await detector.check_detokenize(CALLER, 95, rule)

    with pytest.raises(CallerSuspended) as caught:
        await detector.check_detokenize(CALLER, 6, rule)

    verdict = caught.value.verdict
    assert suspend.calls == [(CALLER, VOLUME_REASON)]
    assert not verdict.allowed
    assert verdict.reason == VOLUME_REASON
    assert verdict.window_start == utc(12)
    assert verdict.window_items == 95
    assert verdict.alert is not None
    assert "requested 6 items" in verdict.alert
    assert "already holds 95 items" in verdict.alert
    assert str(caught.value) == (
        f"caller suspended: {VOLUME_REASON}; an administrator can lift the suspension"
        " (tokenvault callers lift)"
    )


async def test_rejected_items_not_counted(db_pool: asyncpg.Pool) -> None:
    detector = AnomalyDetector(db_pool, SuspendRecorder(), clock=FakeClock(utc(12, 10)))
    rule = AnomalyRule(max_items_per_window=100, window_seconds=3600)
    await detector.check_detokenize(CALLER, 60, rule)

    assert not await passes(detector, 50, rule)
    assert await passes(detector, 40, rule)
    assert not await passes(detector, 1, rule)
    assert await stored_windows(db_pool) == [(utc(12), 100)]


async def test_single_call_above_max_rejected(db_pool: asyncpg.Pool) -> None:
    suspend = SuspendRecorder()
    detector = AnomalyDetector(db_pool, suspend, clock=FakeClock(utc(12, 10)))
    rule = AnomalyRule(max_items_per_window=100, window_seconds=3600)

    with pytest.raises(CallerSuspended) as caught:
        await detector.check_detokenize(CALLER, 101, rule)

    assert caught.value.verdict.window_items == 0
    assert suspend.calls == [(CALLER, VOLUME_REASON)]
    assert await stored_windows(db_pool) == []


async def test_concurrent_calls_never_exceed_max(database_dsn: str) -> None:
    pool = await create_pool(database_dsn, min_size=10, max_size=10)
    try:
        suspend = SuspendRecorder()
        detector = AnomalyDetector(pool, suspend, clock=FakeClock(utc(12, 10)))
        rule = AnomalyRule(max_items_per_window=100, window_seconds=3600)

        results = await asyncio.gather(*(passes(detector, 10, rule) for _ in range(30)))
        windows = await stored_windows(pool)
    finally:
        await pool.close()

    assert results.count(True) == 10
    assert len(suspend.calls) == 20
    assert windows == [(utc(12), 100)]


async def test_replicas_share_window(db_pool: asyncpg.Pool, database_dsn: str) -> None:
    clock = FakeClock(utc(12, 10))
    other_pool = await create_pool(database_dsn, min_size=1, max_size=2)
    try:
        first = AnomalyDetector(db_pool, SuspendRecorder(), clock=clock)
        second = AnomalyDetector(other_pool, SuspendRecorder(), clock=clock)
        rule = AnomalyRule(max_items_per_window=100, window_seconds=3600)

        assert await passes(first, 70, rule)
        assert not await passes(second, 31, rule)
        assert await passes(second, 30, rule)
    finally:
        await other_pool.close()


async def test_windows_roll_over(db_pool: asyncpg.Pool) -> None:
    clock = FakeClock(utc(12, 0))
    detector = AnomalyDetector(db_pool, SuspendRecorder(), clock=clock)
    rule = AnomalyRule(max_items_per_window=100, window_seconds=60)
    assert await passes(detector, 100, rule)

    # The last microsecond of the window still counts against the same total.
    clock.advance(59.999999)
    assert not await passes(detector, 1, rule)

    clock.advance(0.000001)
    verdict = await detector.check_detokenize(CALLER, 100, rule)

    assert verdict.window_start == utc(12, 1)
    assert verdict.window_items == 100
    assert await stored_windows(db_pool) == [(utc(12, 0), 100), (utc(12, 1), 100)]


async def test_window_length_change_starts_new_count(db_pool: asyncpg.Pool) -> None:
    detector = AnomalyDetector(db_pool, SuspendRecorder(), clock=FakeClock(utc(12, 10)))
    hourly = AnomalyRule(max_items_per_window=100, window_seconds=3600)
    daily = AnomalyRule(max_items_per_window=100, window_seconds=86400)
    assert await passes(detector, 100, hourly)

    verdict = await detector.check_detokenize(CALLER, 100, daily)

    assert verdict.window_start == utc(0)
    assert verdict.window_items == 100


async def test_identities_counted_apart(db_pool: asyncpg.Pool) -> None:
    detector = AnomalyDetector(db_pool, SuspendRecorder(), clock=FakeClock(utc(12, 10)))
    rule = AnomalyRule(max_items_per_window=100, window_seconds=3600)
    assert await passes(detector, 100, rule)

    verdict = await detector.check_detokenize("spiffe://example.org/other", 100, rule)

    assert verdict.window_items == 100


async def test_volume_alert_logged(db_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture) -> None:
    detector = AnomalyDetector(db_pool, SuspendRecorder(), clock=FakeClock(utc(12, 10)))
    rule = AnomalyRule(max_items_per_window=100, window_seconds=3600)
    await detector.check_detokenize(CALLER, 90, rule)

    with caplog.at_level(logging.WARNING, logger="vault.abuse.anomaly"):
        assert not await passes(detector, 20, rule)

    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.__dict__["identity"] == CALLER
    assert record.__dict__["reason"] == VOLUME_REASON
    assert record.__dict__["window_start"] == utc(12).isoformat()
    assert record.__dict__["window_items"] == 90
    assert record.__dict__["requested_items"] == 20
    assert record.__dict__["max_items_per_window"] == 100


async def test_outside_hours_suspends(
    db_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    suspend = SuspendRecorder()
    # 07:30 UTC is 08:30 in Berlin in January (UTC+1).
    detector = AnomalyDetector(db_pool, suspend, clock=FakeClock(utc(7, 30)))
    rule = AnomalyRule(
        max_items_per_window=100,
        allowed_hours=(time(9), time(17)),
        timezone="Europe/Berlin",
    )

    with caplog.at_level(logging.WARNING, logger="vault.abuse.anomaly"):
        with pytest.raises(CallerSuspended) as caught:
            await detector.check_detokenize(CALLER, 5, rule)

    verdict = caught.value.verdict
    assert suspend.calls == [(CALLER, HOURS_REASON)]
    assert verdict.reason == HOURS_REASON
    assert verdict.alert == (
        f"{HOURS_REASON}: {CALLER} requested 5 items at 08:30 Europe/Berlin; "
        "allowed 09:00-17:00 Europe/Berlin"
    )
    assert verdict.window_items == 0
    [record] = caplog.records
    assert record.__dict__["reason"] == HOURS_REASON
    assert record.__dict__["local_time"] == "08:30:00"
    # The rejected call is not counted.
    assert await stored_windows(db_pool) == []


# (UTC time, expected outcome, local time) for 09:00-17:00 in Berlin.
BERLIN_CASES = [
    (utc(7, 59), False, "08:59 CET"),
    (utc(8, 0), True, "09:00 CET, the start is inclusive"),
    (utc(15, 59), True, "16:59 CET"),
    (utc(16, 0), False, "17:00 CET, the end is exclusive"),
    (utc(7, 0, month=7), True, "09:00 CEST, summer time is UTC+2"),
    (utc(15, 0, month=7), False, "17:00 CEST"),
]

# (UTC time, expected outcome, local time) for 22:00-06:00 in New York, UTC-5 in January.
NEW_YORK_CASES = [
    (utc(2, 59), False, "21:59"),
    (utc(3, 0), True, "22:00"),
    (utc(4, 59), True, "23:59"),
    (utc(5, 0), True, "00:00"),
    (utc(10, 59), True, "05:59"),
    (utc(11, 0), False, "06:00, the end is exclusive"),
    (utc(17, 0), False, "12:00"),
]


async def test_hours_in_rule_timezone(db_pool: asyncpg.Pool) -> None:
    clock = FakeClock(utc(0))
    detector = AnomalyDetector(db_pool, SuspendRecorder(), clock=clock)
    rule = AnomalyRule(allowed_hours=(time(9), time(17)), timezone="Europe/Berlin")

    for now, expected, local in BERLIN_CASES:
        clock.now = now
        assert await passes(detector, 1, rule) is expected, local


async def test_hours_across_midnight(db_pool: asyncpg.Pool) -> None:
    clock = FakeClock(utc(0))
    rule = AnomalyRule(allowed_hours=(time(22), time(6)), timezone="America/New_York")

    for now, expected, local in NEW_YORK_CASES:
        suspend = SuspendRecorder()
        detector = AnomalyDetector(db_pool, suspend, clock=clock)
        clock.now = now
        assert await passes(detector, 1, rule) is expected, local
        assert len(suspend.calls) == (0 if expected else 1), local


async def test_equal_hours_allow_whole_day(db_pool: asyncpg.Pool) -> None:
    clock = FakeClock(utc(0))
    detector = AnomalyDetector(db_pool, SuspendRecorder(), clock=clock)
    rule = AnomalyRule(allowed_hours=(time(0), time(0)))

    for _ in range(24):
        assert await passes(detector, 1, rule)
        clock.advance(3600)


async def test_no_rule_or_zero_items_pass(db_pool: asyncpg.Pool) -> None:
    suspend = SuspendRecorder()
    detector = AnomalyDetector(db_pool, suspend, clock=FakeClock(utc(3)))
    strict = AnomalyRule(max_items_per_window=1, allowed_hours=(time(9), time(17)))

    assert await detector.check_detokenize(CALLER, 500, None) == AnomalyVerdict(allowed=True)
    assert await detector.check_detokenize(CALLER, 0, strict) == AnomalyVerdict(allowed=True)
    assert suspend.calls == []


async def test_suspend_failure_propagates(
    db_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    async def failing_suspend(identity: str, reason: str) -> None:
        raise RuntimeError("caller registry unavailable")

    detector = AnomalyDetector(db_pool, failing_suspend, clock=FakeClock(utc(3)))
    rule = AnomalyRule(allowed_hours=(time(9), time(17)))

    with caplog.at_level(logging.WARNING, logger="vault.abuse.anomaly"):
        with pytest.raises(RuntimeError, match="caller registry unavailable"):
            await detector.check_detokenize(CALLER, 1, rule)

    # The alert was logged before suspending failed.
    assert [record.__dict__["reason"] for record in caplog.records] == [HOURS_REASON]


async def test_suspended_maps_to_permission_denied() -> None:
    error = CallerSuspended(AnomalyVerdict(allowed=False, reason=HOURS_REASON))

    code, message = status_for(error)

    assert isinstance(error, PermissionDenied)
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert message == str(error)


async def test_purge_deletes_ended_windows(db_pool: asyncpg.Pool) -> None:
    clock = FakeClock(utc(9, 30))
    detector = AnomalyDetector(db_pool, SuspendRecorder(), clock=clock)
    rule = AnomalyRule(max_items_per_window=100, window_seconds=3600)
    for _ in range(3):
        await detector.check_detokenize(CALLER, 1, rule)
        clock.advance(3600)
    clock.now = utc(12, 30)

    # At 12:30 the 09:00 window ended 150 minutes ago, the 10:00 one 90 and the 11:00 one 30.
    deleted = await detector.purge(older_than_seconds=7200)

    assert deleted == 1
    assert [start for start, _ in await stored_windows(db_pool)] == [utc(10), utc(11)]


async def test_purge_keeps_open_window(db_pool: asyncpg.Pool) -> None:
    clock = FakeClock(utc(9, 30))
    detector = AnomalyDetector(db_pool, SuspendRecorder(), clock=clock)
    rule = AnomalyRule(max_items_per_window=100, window_seconds=3600)
    await detector.check_detokenize(CALLER, 100, rule)

    deleted = await detector.purge(older_than_seconds=0)

    assert deleted == 0
    assert not await passes(detector, 1, rule)

    clock.now = utc(10)
    assert await detector.purge(older_than_seconds=0) == 1

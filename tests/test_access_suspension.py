"""Suspensions against a real PostgreSQL: two instances stand for two replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest
import pytest_asyncio

from vault.access.suspension import ANOMALY_DETECTOR, Suspensions
from vault.errors import InvalidValue, NotFound
from vault.store.db import create_pool

PROPAGATION_SECONDS = 5.0
GATEWAY = "spiffe://bank.example/gateway"
ADMIN = "spiffe://bank.example/security-admin"
REASON = "detokenized 5001 items within 3600 s"


async def _within(seconds: float, check: Callable[[], bool], description: str) -> None:
    """Poll ``check`` until it returns True; fail after ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                if check():
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {seconds} s waiting for {description}") from None


@pytest_asyncio.fixture(loop_scope="session")
async def replicas(
    db_pool: asyncpg.Pool, database_dsn: str
) -> AsyncIterator[tuple[Suspensions, Suspensions]]:
    """Two started suspension lists on one database, each with its own pool like a replica."""
    second_pool = await create_pool(database_dsn, min_size=1, max_size=2)
    first = Suspensions(db_pool, database_dsn)
    second = Suspensions(second_pool, database_dsn)
    await first.start()
    await second.start()
    yield first, second
    await second.stop()
    await first.stop()
    await second_pool.close()


async def test_suspend_reaches_other_replica(replicas: tuple[Suspensions, Suspensions]) -> None:
    first, second = replicas
    assert not second.is_suspended(GATEWAY)

    suspension = await first.suspend(GATEWAY, REASON, ANOMALY_DETECTOR)

    assert first.is_suspended(GATEWAY)
    await _within(PROPAGATION_SECONDS, lambda: second.is_suspended(GATEWAY), "replica 2")
    assert second.suspension_reason(GATEWAY) == REASON
    assert suspension.suspended_by == ANOMALY_DETECTOR
    assert suspension.lifted_at is None


async def test_suspend_twice_keeps_first(replicas: tuple[Suspensions, Suspensions]) -> None:
    first, _ = replicas
    original = await first.suspend(GATEWAY, REASON, ANOMALY_DETECTOR)

    repeated = await first.suspend(GATEWAY, "detokenize at 03:00 local time", ADMIN)

    assert repeated == original
    assert [s.id for s in await first.active()] == [original.id]


async def test_lift_reaches_other_replica(replicas: tuple[Suspensions, Suspensions]) -> None:
    first, second = replicas
    await first.suspend(GATEWAY, REASON, ANOMALY_DETECTOR)
    await _within(PROPAGATION_SECONDS, lambda: second.is_suspended(GATEWAY), "suspension")

    lifted = await second.lift(GATEWAY, ADMIN)

    assert lifted.lifted_by == ADMIN
    assert lifted.lifted_at is not None
    assert not second.is_suspended(GATEWAY)
    await _within(PROPAGATION_SECONDS, lambda: not first.is_suspended(GATEWAY), "lift")
    assert await first.active() == []


async def test_suspend_again_after_lift(replicas: tuple[Suspensions, Suspensions]) -> None:
    first, _ = replicas
    earlier = await first.suspend(GATEWAY, REASON, ANOMALY_DETECTOR)
    await first.lift(GATEWAY, ADMIN)

    later = await first.suspend(GATEWAY, "detokenize at 03:00 local time", ANOMALY_DETECTOR)

    assert later.id != earlier.id
    assert first.suspension_reason(GATEWAY) == "detokenize at 03:00 local time"


async def test_fallback_poll_after_listener_killed(
    replicas: tuple[Suspensions, Suspensions], db_pool: asyncpg.Pool
) -> None:
    first, second = replicas
    old_pid = second.backend_pid
    assert old_pid is not None

    assert await db_pool.fetchval("SELECT pg_terminate_backend($1)", old_pid)
    await first.suspend(GATEWAY, REASON, ANOMALY_DETECTOR)

    await _within(PROPAGATION_SECONDS, lambda: second.is_suspended(GATEWAY), "replica 2")


async def test_fallback_poll_without_notifications(
    replicas: tuple[Suspensions, Suspensions], db_pool: asyncpg.Pool
) -> None:
    first, second = replicas
    await db_pool.execute("ALTER TABLE tv_suspensions DISABLE TRIGGER tv_suspensions_notify")

    await first.suspend(GATEWAY, REASON, ANOMALY_DETECTOR)

    await _within(PROPAGATION_SECONDS, lambda: second.is_suspended(GATEWAY), "replica 2")


async def test_lift_without_suspension(replicas: tuple[Suspensions, Suspensions]) -> None:
    first, _ = replicas

    with pytest.raises(NotFound, match="is not suspended"):
        await first.lift(GATEWAY, ADMIN)


@pytest.mark.parametrize(
    ("identity", "reason", "field"),
    [
        ("", REASON, "identity"),
        ("with space", REASON, "identity"),
        (GATEWAY, "", "reason"),
        (GATEWAY, "two\nlines", "reason"),
        (GATEWAY, "x" * 201, "reason"),
    ],
)
async def test_suspend_rejects_invalid_input(
    replicas: tuple[Suspensions, Suspensions], identity: str, reason: str, field: str
) -> None:
    first, _ = replicas

    with pytest.raises(InvalidValue) as caught:
        await first.suspend(identity, reason, ANOMALY_DETECTOR)

    assert caught.value.field == field

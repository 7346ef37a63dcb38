"""RevocationList against a real PostgreSQL: two instances stand for two replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from vault.access.revocation import RevocationList, format_serial
from vault.errors import FailedPrecondition, InvalidValue, NotFound, Unavailable
from vault.identity import Caller
from vault.store.db import create_pool

# The bound the revocation list promises for a change to reach every replica.
PROPAGATION_SECONDS = 5.0
BACKOFFICE = "spiffe://bank.example/backoffice"
GATEWAY = "spiffe://bank.example/gateway"
ADMIN = "spiffe://bank.example/security-admin"


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


def _caller(identity: str = GATEWAY, serial: int = 0x1001) -> Caller:
    return Caller(identity=identity, fingerprint_sha256="ab" * 32, serial_number=serial)


@pytest_asyncio.fixture(loop_scope="session")
async def replicas(
    db_pool: asyncpg.Pool, database_dsn: str
) -> AsyncIterator[tuple[RevocationList, RevocationList]]:
    """Two started revocation lists on one database, each with its own pool like a replica."""
    second_pool = await create_pool(database_dsn, min_size=1, max_size=2)
    first = RevocationList(db_pool, database_dsn)
    second = RevocationList(second_pool, database_dsn)
    await first.start()
    await second.start()
    yield first, second
    await second.stop()
    await first.stop()
    await second_pool.close()


# -- serial encoding


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (0xA1B2, "a1b2"),
        (0, "0"),
        ("A1B2", "a1b2"),
        ("0x00a1b2", "a1b2"),
        ("00:A1:B2", "a1b2"),
        (" 0a1b2 ", "a1b2"),
        ("000", "0"),
        # Text is hex even when it looks decimal.
        ("10", "10"),
        (16, "10"),
    ],
)
def test_format_serial(given: int | str, stored: str) -> None:
    assert format_serial(given) == stored


@pytest.mark.parametrize("given", ["", "0x", "xyz", "12 34", "-1", -1, "f" * 65])
def test_format_serial_rejects(given: int | str) -> None:
    with pytest.raises(InvalidValue) as caught:
        format_serial(given)

    assert caught.value.field == "serial"


# -- propagation between replicas


async def test_revoke_identity_reaches_other_replica(
    replicas: tuple[RevocationList, RevocationList],
) -> None:
    first, second = replicas
    assert not second.is_revoked(_caller())

    revocation = await first.revoke(identity=GATEWAY, reason="key leaked", actor=ADMIN)

    # The replica that wrote the change reflects it as soon as the call returns.
    assert first.is_revoked(_caller())
    await _within(PROPAGATION_SECONDS, lambda: second.is_revoked(_caller()), "replica 2")
    assert not second.is_revoked(_caller(BACKOFFICE, serial=0x2002))
    assert revocation.identity == GATEWAY
    assert revocation.serial is None
    assert revocation.reason == "key leaked"
    assert revocation.revoked_by == ADMIN
    assert revocation.restored_at is None


async def test_revoke_serial_reaches_other_replica(
    replicas: tuple[RevocationList, RevocationList],
) -> None:
    first, second = replicas

    revocation = await first.revoke(serial="00:10:01", reason="lost laptop", actor=ADMIN)

    assert revocation.serial == "1001"
    await _within(
        PROPAGATION_SECONDS, lambda: second.is_serial_revoked(0x1001), "serial on replica 2"
    )
    # Another certificate of the same identity still passes.
    assert second.is_revoked(_caller(GATEWAY, serial=0x1001))
    assert not second.is_revoked(_caller(GATEWAY, serial=0x1002))
    assert not second.is_identity_revoked(GATEWAY)


async def test_restore_reaches_other_replica(
    replicas: tuple[RevocationList, RevocationList],
) -> None:
    first, second = replicas
    await first.revoke(identity=GATEWAY, reason="incident 7", actor=ADMIN)
    await _within(PROPAGATION_SECONDS, lambda: second.is_identity_revoked(GATEWAY), "revoke")

    restored = await second.restore(identity=GATEWAY, actor=ADMIN)

    assert restored.restored_by == ADMIN
    assert restored.restored_at is not None
    assert not second.is_identity_revoked(GATEWAY)
    await _within(
        PROPAGATION_SECONDS, lambda: not first.is_identity_revoked(GATEWAY), "restore on replica 1"
    )
    assert await first.list() == []


async def test_revoke_again_after_restore(
    replicas: tuple[RevocationList, RevocationList],
) -> None:
    first, _ = replicas
    await first.revoke(serial=0xBEEF, reason="first", actor=ADMIN)
    await first.restore(serial="BEEF", actor=ADMIN)

    again = await first.revoke(serial="beef", reason="second", actor=ADMIN)

    assert again.reason == "second"
    assert first.is_serial_revoked(0xBEEF)


async def test_list_newest_first(replicas: tuple[RevocationList, RevocationList]) -> None:
    first, _ = replicas
    await first.revoke(identity=GATEWAY, reason="one", actor=ADMIN)
    await first.revoke(serial=0x1F, reason="two", actor=ADMIN)

    listed = await first.list()

    assert [(r.identity, r.serial, r.reason) for r in listed] == [
        (None, "1f", "two"),
        (GATEWAY, None, "one"),
    ]


# -- fallback when notifications are lost


async def test_fallback_poll_after_listener_killed(
    replicas: tuple[RevocationList, RevocationList], db_pool: asyncpg.Pool
) -> None:
    first, second = replicas
    old_pid = second.backend_pid
    assert old_pid is not None

    assert await db_pool.fetchval("SELECT pg_terminate_backend($1)", old_pid)
    await first.revoke(identity=GATEWAY, reason="killed listener", actor=ADMIN)

    await _within(PROPAGATION_SECONDS, lambda: second.is_identity_revoked(GATEWAY), "replica 2")
    await _within(
        PROPAGATION_SECONDS,
        lambda: second.backend_pid not in (None, old_pid),
        "the listener to reconnect",
    )


async def test_fallback_poll_without_notifications(
    replicas: tuple[RevocationList, RevocationList], db_pool: asyncpg.Pool
) -> None:
    first, second = replicas
    # Without the trigger no notification is sent at all, so only the periodic reload remains.
    await db_pool.execute("ALTER TABLE tv_revocations DISABLE TRIGGER tv_revocations_notify")

    await first.revoke(identity=GATEWAY, reason="no notification", actor=ADMIN)

    await _within(PROPAGATION_SECONDS, lambda: second.is_identity_revoked(GATEWAY), "replica 2")


async def test_change_made_in_sql_reaches_replica(
    replicas: tuple[RevocationList, RevocationList], db_pool: asyncpg.Pool
) -> None:
    _, second = replicas

    await db_pool.execute(
        "INSERT INTO tv_revocations (identity, reason, revoked_by) VALUES ($1, 'by hand', 'dba')",
        BACKOFFICE,
    )

    await _within(PROPAGATION_SECONDS, lambda: second.is_identity_revoked(BACKOFFICE), "SQL")


# -- errors


async def test_revoke_twice_fails(replicas: tuple[RevocationList, RevocationList]) -> None:
    first, _ = replicas
    await first.revoke(identity=GATEWAY, reason="once", actor=ADMIN)

    with pytest.raises(FailedPrecondition, match="identity 'spiffe://bank.example/gateway' is"):
        await first.revoke(identity=GATEWAY, reason="twice", actor=ADMIN)


async def test_restore_unknown_fails(replicas: tuple[RevocationList, RevocationList]) -> None:
    first, _ = replicas

    with pytest.raises(NotFound, match="serial 'abc' is not revoked"):
        await first.restore(serial="0ABC", actor=ADMIN)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"reason": "r"}, "subject"),
        ({"identity": GATEWAY, "serial": "1", "reason": "r"}, "subject"),
        ({"identity": "has space", "reason": "r"}, "identity"),
        ({"identity": "", "reason": "r"}, "identity"),
        ({"serial": "zz", "reason": "r"}, "serial"),
        ({"identity": GATEWAY, "reason": "  "}, "reason"),
        ({"identity": GATEWAY, "reason": "line\nbreak"}, "reason"),
        ({"identity": GATEWAY, "reason": "x" * 501}, "reason"),
    ],
)
async def test_revoke_rejects_invalid_input(
    replicas: tuple[RevocationList, RevocationList], arguments: dict[str, Any], field: str
) -> None:
    first, _ = replicas

    with pytest.raises(InvalidValue) as caught:
        await first.revoke(actor=ADMIN, **arguments)

    assert caught.value.field == field


# -- staleness


async def test_stale_list_raises_unavailable(database_dsn: str) -> None:
    pool = await create_pool(database_dsn, min_size=1, max_size=1)
    revocations = RevocationList(pool, database_dsn, poll_seconds=0.1, max_staleness_seconds=0.3)
    await revocations.start()
    try:
        assert not revocations.is_revoked(_caller())
        # Every reload now fails, as if the database were unreachable.
        await pool.close()

        def refuses() -> bool:
            try:
                revocations.is_revoked(_caller())
            except Unavailable:
                return True
            return False

        await _within(PROPAGATION_SECONDS, refuses, "the stale list to refuse")
    finally:
        await revocations.stop()


async def test_start_fails_without_database() -> None:
    # A Unix socket directory that does not exist: the connection fails without any traffic.
    dsn = "postgresql://nobody@/none?host=/nonexistent-tokenvault-socket-dir"
    revocations = RevocationList(None, dsn)  # type: ignore[arg-type]

    with pytest.raises(OSError):
        await revocations.start()

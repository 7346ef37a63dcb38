"""The audit trail writer against a real PostgreSQL: chain, group commit, failures, sink."""

from __future__ import annotations

import asyncio
import io
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import nacl.signing
import pytest
import pytest_asyncio

from vault.audit.chain import GENESIS_HASH, chain_hash
from vault.audit.events import MAX_TOKEN_DIGESTS, AuditEvent, split_by_digests, token_digest
from vault.audit.export import event_record, export
from vault.audit.trail import AUDIT_CHAIN_LOCK_ID, SAFE_MESSAGE, AuditTrail, AuditUnavailable
from vault.audit.verify import verify_database, verify_export
from vault.errors import Unavailable
from vault.store.db import create_pool

POLL_SECONDS = 0.02


def make_event(number: int, **overrides: object) -> AuditEvent:
    fields: dict[str, object] = {
        "caller": "payments-api",
        "fingerprint": "ab" * 32,
        "operation": "detokenize",
        "template": "pan",
        "item_count": 1,
        "token_digests": (token_digest("pan", f"4111{number:012d}"),),
        "reference": f"order-{number}",
        "reveal": "masked",
        "purpose": "chargeback review",
        "outcome": "ok",
        "status_code": "OK",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "peer": "127.0.0.1",
        "request_id": f"req-{number}",
    }
    fields.update(overrides)
    return AuditEvent(**fields)  # type: ignore[arg-type]


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    """Poll ``check`` every 20 ms until it returns True; fail after ``seconds``."""
    for _ in range(int(seconds / POLL_SECONDS)):
        if await check():
            return
        await asyncio.sleep(POLL_SECONDS)
    raise AssertionError(f"condition still false after {seconds} s")


async def wait_until_written(trail: AuditTrail) -> None:
    async def written() -> bool:
        return trail.pending_events == 0

    await eventually(written)


async def signed_head_is(pool: asyncpg.Pool, seq: int) -> bool:
    return bool(await pool.fetchval("SELECT max(seq) FROM tv_audit_checkpoints") == seq)


@pytest_asyncio.fixture(loop_scope="session")
async def trail(db_pool: asyncpg.Pool) -> AsyncIterator[AuditTrail]:
    audit_trail = AuditTrail(db_pool, signing_key=nacl.signing.SigningKey.generate())
    await audit_trail.start()
    yield audit_trail
    await audit_trail.stop()


# Events


def test_event_rejects_too_many_digests() -> None:
    digests = tuple(token_digest("pan", str(n)) for n in range(MAX_TOKEN_DIGESTS + 1))

    with pytest.raises(ValueError, match="split_by_digests"):
        make_event(1, token_digests=digests)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("outcome", "revealed"),
        ("reveal", "partial"),
        ("fingerprint", "not-hex"),
        ("trace_id", "XYZ"),
        ("purpose", "nul\x00inside"),
        ("reference", "lone \ud800 surrogate"),
        ("item_count", -1),
        ("token_digests", ("4111111111111111",)),
        ("caller", ""),
    ],
)
def test_event_rejects_invalid_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        make_event(1, **{field: value})


def test_event_message_hides_rejected_digest() -> None:
    with pytest.raises(ValueError) as raised:
        make_event(1, token_digests=("4111111111111111",))

    assert "4111111111111111" not in str(raised.value)


def test_split_by_digests_bounds_each_event() -> None:
    digests = [token_digest("pan", str(n)) for n in range(250)]

    parts = split_by_digests(make_event(1, token_digests=()), digests)

    assert [len(part.token_digests) for part in parts] == [100, 100, 50]
    assert [part.item_count for part in parts] == [100, 100, 50]
    assert [d for part in parts for d in part.token_digests] == digests


def test_split_by_digests_counts_items_without_digest() -> None:
    digests = [token_digest("pan", str(n)) for n in range(150)]

    parts = split_by_digests(make_event(1, token_digests=(), item_count=160), digests)

    assert [len(part.token_digests) for part in parts] == [100, 50]
    assert [part.item_count for part in parts] == [100, 60]


def test_split_without_digests_keeps_event() -> None:
    event = make_event(1, token_digests=(), item_count=3)

    assert split_by_digests(event, []) == [event]


# Writing the chain


async def test_durable_record_commits_linked_rows(db_pool: asyncpg.Pool, trail: AuditTrail) -> None:
    await trail.record([make_event(1), make_event(2)], durable=True)
    await trail.record([make_event(3)], durable=True)

    rows = await db_pool.fetch(
        "SELECT seq, prev_hash, hash, request_id FROM tv_audit_log ORDER BY seq"
    )
    assert [row["seq"] for row in rows] == [1, 2, 3]
    assert [row["request_id"] for row in rows] == ["req-1", "req-2", "req-3"]
    assert bytes(rows[0]["prev_hash"]) == GENESIS_HASH
    assert bytes(rows[1]["prev_hash"]) == bytes(rows[0]["hash"])
    assert bytes(rows[2]["prev_hash"]) == bytes(rows[1]["hash"])


async def test_one_call_larger_than_batch_max_stays_together(db_pool: asyncpg.Pool) -> None:
    trail = AuditTrail(db_pool, batch_max=10)
    await trail.start()
    try:
        await trail.record([make_event(n) for n in range(25)], durable=True)
    finally:
        await trail.stop()

    seqs = [row["seq"] for row in await db_pool.fetch("SELECT seq FROM tv_audit_log ORDER BY seq")]
    assert seqs == list(range(1, 26))


async def test_stop_writes_queued_events_and_checkpoint(db_pool: asyncpg.Pool) -> None:
    key = nacl.signing.SigningKey.generate()
    trail = AuditTrail(db_pool, signing_key=key)
    await trail.start()
    for number in range(30):
        await trail.record([make_event(number)], durable=False)

    await trail.stop()

    assert await db_pool.fetchval("SELECT count(*) FROM tv_audit_log") == 30
    assert await db_pool.fetchval("SELECT max(seq) FROM tv_audit_checkpoints") == 30
    report = await verify_database(db_pool, key.verify_key)
    assert report.ok, report.summary()
    assert report.last_signed_seq == 30


async def test_checkpoints_follow_the_interval(db_pool: asyncpg.Pool) -> None:
    key = nacl.signing.SigningKey.generate()
    trail = AuditTrail(db_pool, signing_key=key, checkpoint_interval_seconds=0.1)
    await trail.start()
    try:
        await trail.record([make_event(1), make_event(2)], durable=True)
        await eventually(lambda: signed_head_is(db_pool, 2))
        await trail.record([make_event(3)], durable=True)
        await eventually(lambda: signed_head_is(db_pool, 3))
    finally:
        await trail.stop()

    # An idle interval signs nothing new: the head was already signed by this key.
    checkpoints = await db_pool.fetch("SELECT seq FROM tv_audit_checkpoints ORDER BY seq")
    assert [row["seq"] for row in checkpoints] == [2, 3]


async def test_two_trails_write_one_gapless_chain(database_dsn: str) -> None:
    key = nacl.signing.SigningKey.generate()
    pools = [await create_pool(database_dsn, min_size=1, max_size=4) for _ in range(2)]
    trails = [
        AuditTrail(pool, signing_key=key, checkpoint_interval_seconds=0.05, batch_max=7)
        for pool in pools
    ]
    try:
        for trail in trails:
            await trail.start()
        randomizer = random.Random(7)
        calls = []
        expected = 0
        for number in range(150):
            for index, trail in enumerate(trails):
                size = randomizer.randint(1, 3)
                expected += size
                events = [
                    make_event(number, request_id=f"r{index}-{number}-{n}") for n in range(size)
                ]
                calls.append(trail.record(events, durable=randomizer.random() < 0.5))
        await asyncio.gather(*calls)
        for trail in trails:
            await trail.stop()

        seqs = [
            row["seq"] for row in await pools[0].fetch("SELECT seq FROM tv_audit_log ORDER BY seq")
        ]
        assert seqs == list(range(1, expected + 1))
        report = await verify_database(pools[0], key.verify_key)
        assert report.ok, report.summary()
        assert report.events == expected
        assert report.last_signed_seq == expected
    finally:
        for trail in trails:
            await trail.stop()
        for pool in pools:
            await pool.close()


# Failures


async def test_durable_record_fails_when_table_missing(db_pool: asyncpg.Pool) -> None:
    await db_pool.execute("ALTER TABLE tv_audit_log RENAME TO tv_audit_log_hidden")
    trail = AuditTrail(db_pool)
    await trail.start()
    try:
        with pytest.raises(AuditUnavailable) as raised:
            await trail.record([make_event(1)], durable=True)
    finally:
        await trail.stop()

    assert isinstance(raised.value, Unavailable)
    assert str(raised.value) == SAFE_MESSAGE
    assert trail.pending_events == 0


async def test_non_durable_events_retried_after_outage(db_pool: asyncpg.Pool) -> None:
    await db_pool.execute("ALTER TABLE tv_audit_log RENAME TO tv_audit_log_hidden")
    trail = AuditTrail(db_pool)
    await trail.start()
    try:
        await trail.record([make_event(1), make_event(2)], durable=False)
        await asyncio.sleep(0.3)
        assert trail.pending_events == 2

        await db_pool.execute("ALTER TABLE tv_audit_log_hidden RENAME TO tv_audit_log")
        await wait_until_written(trail)
    finally:
        await trail.stop()

    assert await db_pool.fetchval("SELECT count(*) FROM tv_audit_log") == 2


async def test_full_queue_rejects_at_once(db_pool: asyncpg.Pool) -> None:
    trail = AuditTrail(db_pool, queue_max=5)
    await trail.start()
    # Holding the chain lock stalls the writer, as a slow database would.
    blocker = await db_pool.acquire()
    transaction = blocker.transaction()
    await transaction.start()
    await blocker.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_CHAIN_LOCK_ID)
    try:
        await trail.record([make_event(n) for n in range(5)], durable=False)

        with pytest.raises(AuditUnavailable):
            await trail.record([make_event(6)], durable=False)
        with pytest.raises(AuditUnavailable):
            await asyncio.wait_for(trail.record([make_event(7)], durable=True), timeout=1)
    finally:
        await transaction.rollback()
        await db_pool.release(blocker)

    try:
        await wait_until_written(trail)
        await trail.record([make_event(8)], durable=True)
    finally:
        await trail.stop()
    assert await db_pool.fetchval("SELECT count(*) FROM tv_audit_log") == 6


async def test_record_outside_start_and_stop_raises(db_pool: asyncpg.Pool) -> None:
    trail = AuditTrail(db_pool)

    with pytest.raises(AuditUnavailable):
        await trail.record([make_event(1)], durable=False)
    await trail.start()
    await trail.stop()
    with pytest.raises(AuditUnavailable):
        await trail.record([make_event(2)], durable=True)


async def test_log_rejects_update_and_delete(db_pool: asyncpg.Pool, trail: AuditTrail) -> None:
    await trail.record([make_event(1)], durable=True)

    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db_pool.execute("UPDATE tv_audit_log SET purpose = 'changed'")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db_pool.execute("DELETE FROM tv_audit_log")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db_pool.execute("TRUNCATE tv_audit_checkpoints")


# Sink


async def test_sink_receives_committed_batches(db_pool: asyncpg.Pool) -> None:
    key = nacl.signing.SigningKey.generate()
    sink = io.StringIO()
    trail = AuditTrail(db_pool, signing_key=key, sink=sink)
    await trail.start()
    await trail.record([make_event(1), make_event(2)], durable=True)

    after_commit = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [record["seq"] for record in after_commit] == [1, 2]
    await trail.stop()

    exported = io.StringIO()
    await export(db_pool, exported)
    assert sink.getvalue() == exported.getvalue()
    assert verify_export(io.StringIO(sink.getvalue()), key.verify_key).ok


async def test_sink_path_is_appended(db_pool: asyncpg.Pool, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    trail = AuditTrail(db_pool, sink=path)
    await trail.start()
    await trail.record([make_event(1)], durable=False)
    await trail.stop()

    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 1
    assert records[0]["type"] == "event"
    assert records[0]["request_id"] == "req-1"
    assert records[0]["token_digests"] == [token_digest("pan", "4111000000000001")]


async def test_signer_refuses_a_rewritten_chain(db_pool: asyncpg.Pool, tmp_path: Path) -> None:
    key = nacl.signing.SigningKey.generate()
    head_file = tmp_path / "audit-signing.key.head"
    first = AuditTrail(db_pool, signing_key=key, head_file=head_file)
    await first.start()
    await first.record([make_event(n) for n in range(5)], durable=True)
    await first.stop()  # signs seq 5

    # Someone with the table owner's rights edits seq 2, recomputes every later hash so the
    # chain links again, and deletes the checkpoints that would expose it.
    async with db_pool.acquire() as connection:
        await connection.execute("ALTER TABLE tv_audit_log DISABLE TRIGGER USER")
        await connection.execute("ALTER TABLE tv_audit_checkpoints DISABLE TRIGGER USER")
        await connection.execute("UPDATE tv_audit_log SET caller = 'somebody' WHERE seq = 2")
        rows = await connection.fetch("SELECT * FROM tv_audit_log ORDER BY seq")
        previous = bytes(rows[0]["hash"])
        for row in rows[1:]:
            record = event_record(row["seq"], row["occurred_at"], row, previous, b"")
            digest = chain_hash(previous, record)
            await connection.execute(
                "UPDATE tv_audit_log SET prev_hash = $1, hash = $2 WHERE seq = $3",
                previous,
                digest,
                row["seq"],
            )
            previous = digest
        await connection.execute("DELETE FROM tv_audit_checkpoints")
        await connection.execute("ALTER TABLE tv_audit_log ENABLE TRIGGER USER")
        await connection.execute("ALTER TABLE tv_audit_checkpoints ENABLE TRIGGER USER")
    assert (await verify_database(db_pool, key.verify_key)).ok  # the rewrite now verifies...

    second = AuditTrail(db_pool, signing_key=key, head_file=head_file)
    await second.start()
    await second.record([make_event(9)], durable=True)
    await second.stop()

    # ...but the signer's own record of its last head no longer matches, so it signs nothing.
    assert await db_pool.fetchval("SELECT count(*) FROM tv_audit_checkpoints") == 0

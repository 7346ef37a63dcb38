"""Verification of the audit chain: every kind of tampering shows up as the first broken link."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import nacl.signing
import pytest
import pytest_asyncio

from vault.audit.chain import canonical_event_bytes, chain_hash, format_timestamp
from vault.audit.events import AuditEvent, token_digest
from vault.audit.export import export
from vault.audit.signing import (
    checkpoint_message,
    generate_keypair,
    load_signing_key,
    load_verify_key,
    sign_checkpoint,
)
from vault.audit.trail import AuditTrail
from vault.audit.verify import (
    BAD_SIGNATURE,
    BROKEN_PREV_LINK,
    CHECKPOINT_MISMATCH,
    HASH_MISMATCH,
    MALFORMED,
    SEQ_GAP,
    verify_database,
    verify_export,
    verify_records,
)

EVENTS = 20
CHECKPOINT_SEQS = (10, 20)


def make_event(number: int) -> AuditEvent:
    return AuditEvent(
        caller="payments-api",
        operation="tokenize" if number % 2 else "detokenize",
        template="pan",
        token_digests=(token_digest("pan", f"4111{number:012d}"),),
        reveal="" if number % 2 else "full",
        purpose="refund" if number % 3 else "",
        outcome="ok",
        status_code="OK",
        peer="127.0.0.1",
        request_id=f"req-{number}",
    )


async def tamper(pool: asyncpg.Pool, *statements: str) -> None:
    """Run statements with the append-only triggers off, as a table owner could."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("ALTER TABLE tv_audit_log DISABLE TRIGGER USER")
        await connection.execute("ALTER TABLE tv_audit_checkpoints DISABLE TRIGGER USER")
        for statement in statements:
            await connection.execute(statement)
        await connection.execute("ALTER TABLE tv_audit_log ENABLE TRIGGER USER")
        await connection.execute("ALTER TABLE tv_audit_checkpoints ENABLE TRIGGER USER")


@pytest.fixture
def signing_key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


@pytest_asyncio.fixture(loop_scope="session")
async def log_pool(
    db_pool: asyncpg.Pool, signing_key: nacl.signing.SigningKey
) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a log of 20 events with signed checkpoints at seq 10 and seq 20."""
    for first in (0, 10):
        trail = AuditTrail(db_pool, signing_key=signing_key)
        await trail.start()
        for number in range(first, first + 10, 2):
            await trail.record([make_event(number), make_event(number + 1)], durable=True)
        await trail.stop()
    yield db_pool


async def exported_records(pool: asyncpg.Pool) -> list[dict[str, object]]:
    out = io.StringIO()
    await export(pool, out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


# Canonical encodings


def test_canonical_event_bytes_are_sorted_compact_json() -> None:
    record = {
        "type": "event",
        "seq": 7,
        "occurred_at": "2024-05-01T12:00:00.000000Z",
        "caller": "alice",
        "fingerprint": "",
        "operation": "detokenize",
        "template": "pan",
        "item_count": 2,
        "token_digests": ["aa" * 32],
        "reference": "ref \u00e9\n",
        "reveal": "full",
        "purpose": "",
        "outcome": "ok",
        "status_code": "OK",
        "trace_id": "",
        "peer": "127.0.0.1",
        "request_id": "r1",
        "prev_hash": "00" * 32,
        "hash": "11" * 32,
    }

    encoded = canonical_event_bytes(record)

    assert (
        encoded
        == (
            '{"caller":"alice","fingerprint":"","item_count":2,"occurred_at":'
            '"2024-05-01T12:00:00.000000Z","operation":"detokenize","outcome":"ok",'
            '"peer":"127.0.0.1","purpose":"","reference":"ref \u00e9\\n","request_id":"r1",'
            '"reveal":"full","seq":7,"status_code":"OK","template":"pan","token_digests":["'
            + "aa" * 32
            + '"],"trace_id":""}'
        ).encode()
    )
    assert chain_hash(bytes(32), record) == hashlib.sha256(bytes(32) + encoded).digest()


def test_checkpoint_message_layout() -> None:
    message = checkpoint_message(12, bytes.fromhex("ab" * 32), "2024-05-01T12:00:00.000000Z")

    assert message == (
        b"tokenvault-audit-checkpoint-v1\n"
        b'{"hash":"' + b"ab" * 32 + b'","seq":12,"signed_at":"2024-05-01T12:00:00.000000Z"}'
    )


def test_timestamps_keep_microseconds_in_utc() -> None:
    moment = datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=UTC)

    assert format_timestamp(moment) == "2024-05-01T12:00:00.000005Z"


# Intact logs


async def test_intact_log_verifies(
    log_pool: asyncpg.Pool, signing_key: nacl.signing.SigningKey
) -> None:
    report = await verify_database(log_pool, signing_key.verify_key)

    assert report.ok, report.summary()
    assert report.events == EVENTS
    assert report.checkpoints == len(CHECKPOINT_SEQS)
    assert report.last_signed_seq == 20
    assert report.summary() == (
        "audit trail intact: 20 events (seq 1 to 20), 2 checkpoints, last signed seq 20"
    )


async def test_empty_log_verifies(
    db_pool: asyncpg.Pool, signing_key: nacl.signing.SigningKey
) -> None:
    report = await verify_database(db_pool, signing_key.verify_key)

    assert report.ok
    assert report.events == 0
    assert report.last_signed_seq is None


async def test_range_verifies_without_earlier_events(
    log_pool: asyncpg.Pool, signing_key: nacl.signing.SigningKey
) -> None:
    report = await verify_database(log_pool, signing_key.verify_key, from_seq=5, to_seq=15)

    assert report.ok, report.summary()
    assert report.events == 11
    assert report.last_signed_seq == 10


async def test_export_file_verifies_with_public_key_file(
    db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    verify_key = generate_keypair(tmp_path / "audit.key", tmp_path / "audit.pub")
    trail = AuditTrail(db_pool, signing_key=load_signing_key(tmp_path / "audit.key"))
    await trail.start()
    await trail.record([make_event(n) for n in range(5)], durable=True)
    await trail.stop()
    export_path = tmp_path / "export.jsonl"
    with export_path.open("w", encoding="utf-8") as out:
        summary = await export(db_pool, out)

    report = verify_export(export_path, load_verify_key(tmp_path / "audit.pub"))

    assert summary.events == 5
    assert summary.checkpoints == 1
    assert report.ok, report.summary()
    assert report.last_signed_seq == 5
    assert bytes(load_verify_key(tmp_path / "audit.pub")) == bytes(verify_key)


# Tampering in the database


async def test_edited_row_breaks_at_its_seq(
    log_pool: asyncpg.Pool, signing_key: nacl.signing.SigningKey
) -> None:
    await tamper(log_pool, "UPDATE tv_audit_log SET purpose = 'nothing to see' WHERE seq = 7")

    report = await verify_database(log_pool, signing_key.verify_key)

    assert report.broken is not None
    assert report.broken.seq == 7
    assert report.broken.reason == HASH_MISMATCH


async def test_deleted_middle_row_is_a_gap(
    log_pool: asyncpg.Pool, signing_key: nacl.signing.SigningKey
) -> None:
    await tamper(log_pool, "DELETE FROM tv_audit_log WHERE seq = 12")

    report = await verify_database(log_pool, signing_key.verify_key)

    assert report.broken is not None
    assert report.broken.seq == 12
    assert report.broken.reason == SEQ_GAP


async def test_deleted_first_row_is_a_gap(
    log_pool: asyncpg.Pool, signing_key: nacl.signing.SigningKey
) -> None:
    await tamper(log_pool, "DELETE FROM tv_audit_log WHERE seq = 1")

    report = await verify_database(log_pool, signing_key.verify_key)

    assert report.broken is not None
    assert report.broken.seq == 1
    assert report.broken.reason == SEQ_GAP


async def test_deleted_and_renumbered_rows_do_not_link(
    log_pool: asyncpg.Pool, signing_key: nacl.signing.SigningKey
) -> None:
    await tamper(
        log_pool,
        "DELETE FROM tv_audit_log WHERE seq = 12",
        "UPDATE tv_audit_log SET seq = seq - 1 WHERE seq > 12",
    )

    report = await verify_database(log_pool, signing_key.verify_key)

    assert report.broken is not None
    assert report.broken.seq == 12
    assert report.broken.reason == BROKEN_PREV_LINK


async def test_swapped_rows_do_not_link(
    log_pool: asyncpg.Pool, signing_key: nacl.signing.SigningKey
) -> None:
    # Moves every column but seq from row 6 to row 5 and back.
    columns = [
        row["column_name"]
        for row in await log_pool.fetch(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = 'tv_audit_log' AND column_name <> 'seq'"
        )
    ]
    assignments = ", ".join(f"{name} = other.{name}" for name in columns)
    await tamper(
        log_pool,
        "CREATE TEMP TABLE original AS SELECT * FROM tv_audit_log WHERE seq IN (5, 6)",
        f"UPDATE tv_audit_log SET {assignments} FROM original AS other"
        " WHERE tv_audit_log.seq + other.seq = 11",
    )

    report = await verify_database(log_pool, signing_key.verify_key)

    assert report.broken is not None
    assert report.broken.seq == 5
    assert report.broken.reason == BROKEN_PREV_LINK


async def test_truncated_tail_ends_before_checkpoint(
    log_pool: asyncpg.Pool, signing_key: nacl.signing.SigningKey
) -> None:
    await tamper(log_pool, "DELETE FROM tv_audit_log WHERE seq > 16")

    report = await verify_database(log_pool, signing_key.verify_key)

    assert report.broken is not None
    assert report.broken.seq == 17
    assert report.broken.reason == "events end before checkpoint seq 20 (log truncated)"


async def test_forged_checkpoint_signature(
    log_pool: asyncpg.Pool, signing_key: nacl.signing.SigningKey
) -> None:
    await tamper(
        log_pool,
        "UPDATE tv_audit_checkpoints SET signature = overlay(signature placing"
        " decode('00', 'hex') from 1 for 1) WHERE seq = 10",
    )

    report = await verify_database(log_pool, signing_key.verify_key)

    assert report.broken is not None
    assert report.broken.seq == 10
    assert report.broken.reason == BAD_SIGNATURE


async def test_checkpoint_signed_by_other_key(
    log_pool: asyncpg.Pool, signing_key: nacl.signing.SigningKey
) -> None:
    head = await log_pool.fetchrow("SELECT seq, hash FROM tv_audit_log WHERE seq = 15")
    forged = sign_checkpoint(
        nacl.signing.SigningKey.generate(), 15, bytes(head["hash"]), datetime.now(UTC)
    )
    await log_pool.execute(
        "INSERT INTO tv_audit_checkpoints (seq, hash, signed_at, signature, key_id)"
        " VALUES ($1, $2, $3, $4, $5)",
        forged.seq,
        forged.hash,
        forged.signed_at,
        forged.signature,
        forged.key_id,
    )

    report = await verify_database(log_pool, signing_key.verify_key)

    assert report.broken is not None
    assert report.broken.seq == 15
    assert report.broken.reason == BAD_SIGNATURE
    assert forged.key_id in report.broken.detail


async def test_recomputed_chain_fails_checkpoint(
    log_pool: asyncpg.Pool, signing_key: nacl.signing.SigningKey
) -> None:
    # The attacker edits row 3 and recomputes every later hash, which needs no key.
    await tamper(log_pool, "UPDATE tv_audit_log SET caller = 'someone-else' WHERE seq = 3")
    records = await exported_records(log_pool)
    prev_hash = bytes.fromhex(str(records[0]["prev_hash"]))
    updates = []
    for record in records:
        if record["type"] != "event":
            continue
        new_hash = chain_hash(prev_hash, record)
        updates.append((record["seq"], prev_hash, new_hash))
        prev_hash = new_hash
    async with log_pool.acquire() as connection, connection.transaction():
        await connection.execute("ALTER TABLE tv_audit_log DISABLE TRIGGER USER")
        await connection.executemany(
            "UPDATE tv_audit_log SET prev_hash = $2, hash = $3 WHERE seq = $1", updates
        )
        await connection.execute("ALTER TABLE tv_audit_log ENABLE TRIGGER USER")

    report = await verify_database(log_pool, signing_key.verify_key)

    assert report.broken is not None
    assert report.broken.seq == 10
    assert report.broken.reason == CHECKPOINT_MISMATCH


async def test_wrong_public_key_rejects_checkpoints(log_pool: asyncpg.Pool) -> None:
    other_key = nacl.signing.SigningKey.generate().verify_key

    report = await verify_database(log_pool, other_key)

    assert report.broken is not None
    assert report.broken.seq == 10
    assert report.broken.reason == BAD_SIGNATURE


# Tampering in an export


async def test_edited_export_line_breaks_at_its_seq(
    log_pool: asyncpg.Pool, signing_key: nacl.signing.SigningKey
) -> None:
    records = await exported_records(log_pool)
    for record in records:
        if record["type"] == "event" and record["seq"] == 4:
            record["outcome"] = "denied"

    report = verify_records(records, signing_key.verify_key)

    assert report.broken is not None
    assert report.broken.seq == 4
    assert report.broken.reason == HASH_MISMATCH


async def test_removed_export_line_is_a_gap(
    log_pool: asyncpg.Pool, signing_key: nacl.signing.SigningKey
) -> None:
    records = [
        record
        for record in await exported_records(log_pool)
        if not (record["type"] == "event" and record["seq"] == 9)
    ]

    report = verify_records(records, signing_key.verify_key)

    assert report.broken is not None
    assert report.broken.seq == 9
    assert report.broken.reason == SEQ_GAP


async def test_export_cut_before_last_checkpoint_is_truncated(
    log_pool: asyncpg.Pool, signing_key: nacl.signing.SigningKey
) -> None:
    records = [
        record
        for record in await exported_records(log_pool)
        if record["type"] == "checkpoint" or int(str(record["seq"])) <= 18
    ]

    report = verify_records(records, signing_key.verify_key)

    assert report.broken is not None
    assert report.broken.seq == 19
    assert "log truncated" in report.broken.reason


async def test_invalid_json_line_is_malformed(
    log_pool: asyncpg.Pool, signing_key: nacl.signing.SigningKey
) -> None:
    out = io.StringIO()
    await export(log_pool, out)
    lines = out.getvalue().splitlines(keepends=True)
    lines[2] = "{not json\n"

    report = verify_export(io.StringIO("".join(lines)), signing_key.verify_key)

    assert report.broken is not None
    assert report.broken.reason == MALFORMED
    assert "line 3" in report.broken.detail

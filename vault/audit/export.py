"""Export of the audit trail as JSON lines: the format that SIEMs ingest and auditors verify.

Each line is one JSON object (UTF-8, no line breaks inside) of one of two types. Member names
are the contract with SIEMs and auditors' tools, so add new members rather than rename or
remove one.

Event, one per stored event, in seq order::

    type           "event"
    seq            integer, 1, 2, 3 … with no gaps across all replicas
    occurred_at    RFC 3339 UTC with six fraction digits, "2024-05-01T12:00:00.000000Z".
                   It is the time of the record call. Across replicas it can decrease as
                   seq increases.
    caller         identity of the caller
    fingerprint    SHA-256 hex of the client certificate, or ""
    operation      "tokenize", "detokenize", "admin.RotateKek", "callers.Revoke", …
    template       template name, or ""
    item_count     number of items the event covers
    token_digests  array of SHA-256 hex digests of "template:token" (at most 100)
    reference      caller's reference of the item, or ""
    reveal         "", "full" or "masked"
    purpose        caller's stated purpose, or ""
    outcome        "ok", "partial", "failed" or "denied"
    status_code    gRPC status code name, such as "OK" or "PERMISSION_DENIED"
    trace_id       trace id in hex, or ""
    peer           caller's network address, such as "127.0.0.1"
    request_id     request id
    prev_hash      hex of the previous event's hash (64 zeros for seq 1)
    hash           hex of SHA-256(prev_hash || canonical encoding), see vault.audit.chain

Checkpoint, a signed chain head (see vault.audit.signing)::

    type           "checkpoint"
    seq            seq of the event it covers
    hash           hex of that event's hash
    signed_at      RFC 3339 UTC with six fraction digits
    signature      hex of the 64-byte Ed25519 signature
    key_id         hex of the first 8 bytes of the signing public key

A checkpoint line follows the line of the event at its seq. When that event is missing from the
database, the checkpoint follows the last event before it, or ends the output. An export of a
seq range contains the events in the range and the checkpoints whose seq is in the range.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO, TypeAlias

import asyncpg

from vault.audit.chain import EVENT_FIELDS, format_timestamp
from vault.audit.signing import Checkpoint

# Rows fetched per round trip while streaming the log.
CURSOR_PREFETCH = 1000

# A pool, one connection, or a DSN for which a connection is opened and closed again.
ConnectionSource: TypeAlias = "asyncpg.Pool | asyncpg.Connection | str"

_EVENT_COLUMNS = ", ".join(("seq", "occurred_at", *EVENT_FIELDS, "prev_hash", "hash"))


@dataclass(frozen=True)
class ExportSummary:
    events: int
    checkpoints: int


def event_record(
    seq: int,
    occurred_at: datetime,
    fields: Mapping[str, Any],
    prev_hash: bytes,
    chain_hash: bytes,
) -> dict[str, Any]:
    """Build the export record of a stored event; ``fields`` has every name in EVENT_FIELDS."""
    record: dict[str, Any] = {
        "type": "event",
        "seq": seq,
        "occurred_at": format_timestamp(occurred_at),
    }
    for name in EVENT_FIELDS:
        record[name] = list(fields[name]) if name == "token_digests" else fields[name]
    record["prev_hash"] = prev_hash.hex()
    record["hash"] = chain_hash.hex()
    return record


def checkpoint_record(checkpoint: Checkpoint) -> dict[str, Any]:
    """Build the export record of a checkpoint."""
    return {
        "type": "checkpoint",
        "seq": checkpoint.seq,
        "hash": checkpoint.hash.hex(),
        "signed_at": format_timestamp(checkpoint.signed_at),
        "signature": checkpoint.signature.hex(),
        "key_id": checkpoint.key_id,
    }


def dump_record(record: Mapping[str, Any]) -> str:
    """Serialize a record as one JSON line, with its line feed."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


@asynccontextmanager
async def connect(source: ConnectionSource) -> AsyncIterator[asyncpg.Connection]:
    """Yield a connection from a pool, the given connection, or a new one to a DSN."""
    if isinstance(source, asyncpg.Pool):
        async with source.acquire() as connection:
            yield connection
    elif isinstance(source, str):
        connection = await asyncpg.connect(source)
        try:
            yield connection
        finally:
            await connection.close()
    else:
        yield source


async def iter_records(
    connection: asyncpg.Connection, *, from_seq: int | None = None, to_seq: int | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Stream the export records of a seq range, events and checkpoints in export order.

    Reads in one read-only REPEATABLE READ transaction, so events and checkpoints come from the
    same snapshot even while replicas keep writing.
    """
    low = 1 if from_seq is None else from_seq
    # PostgreSQL bigint maximum: an open range ends there.
    high = 2**63 - 1 if to_seq is None else to_seq
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        checkpoint_rows = await connection.fetch(
            "SELECT seq, hash, signed_at, signature, key_id FROM tv_audit_checkpoints"
            " WHERE seq BETWEEN $1 AND $2 ORDER BY seq, signed_at, key_id",
            low,
            high,
        )
        checkpoints = [checkpoint_record(_checkpoint_from_row(row)) for row in checkpoint_rows]
        next_checkpoint = 0
        cursor = connection.cursor(
            f"SELECT {_EVENT_COLUMNS} FROM tv_audit_log"  # noqa: S608 - fixed column names
            " WHERE seq BETWEEN $1 AND $2 ORDER BY seq",
            low,
            high,
            prefetch=CURSOR_PREFETCH,
        )
        async for row in cursor:
            yield event_record(
                row["seq"], row["occurred_at"], row, bytes(row["prev_hash"]), bytes(row["hash"])
            )
            while (
                next_checkpoint < len(checkpoints)
                and checkpoints[next_checkpoint]["seq"] <= row["seq"]
            ):
                yield checkpoints[next_checkpoint]
                next_checkpoint += 1
        for record in checkpoints[next_checkpoint:]:
            yield record


async def export(
    pool: ConnectionSource,
    out: TextIO,
    *,
    from_seq: int | None = None,
    to_seq: int | None = None,
) -> ExportSummary:
    """Write the events and checkpoints of a seq range to ``out`` as JSON lines.

    ``pool`` is an asyncpg pool, a connection or a DSN. Returns the number of lines of each type.
    """
    events = 0
    checkpoints = 0
    async with connect(pool) as connection:
        async for record in iter_records(connection, from_seq=from_seq, to_seq=to_seq):
            out.write(dump_record(record))
            if record["type"] == "event":
                events += 1
            else:
                checkpoints += 1
    out.flush()
    return ExportSummary(events=events, checkpoints=checkpoints)


def _checkpoint_from_row(row: Mapping[str, Any]) -> Checkpoint:
    return Checkpoint(
        seq=row["seq"],
        hash=bytes(row["hash"]),
        signed_at=row["signed_at"],
        signature=bytes(row["signature"]),
        key_id=row["key_id"],
    )

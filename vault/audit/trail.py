"""The audit trail writer: group commit into one hash chain shared by every replica.

Callers hand events to ``AuditTrail.record``. One background task per trail takes whatever is
queued, up to ``batch_max`` events, and writes it in one transaction, so a caller waits for at
most one round of commits and never for a transaction of its own.

Every batch transaction takes the advisory lock AUDIT_CHAIN_LOCK_ID, reads the last (seq, hash)
and continues the chain from it. Replicas therefore append one after another to a single
gapless chain, and the primary key on seq rejects any fork. Every ``checkpoint_interval_seconds``
and on ``stop``, a trail with a signing key signs the latest (seq, hash) into
tv_audit_checkpoints.

Failures: a durable ``record`` raises AuditUnavailable when its batch fails. Events recorded with
``durable=False`` stay queued and are retried with backoff, so a database outage fills the queue
and then makes every ``record`` raise AuditUnavailable: the service fails closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import asyncpg
import nacl.signing

from vault.asynctools import wait_event
from vault.audit.chain import EVENT_FIELDS, GENESIS_HASH, chain_hash, event_fields, format_timestamp
from vault.audit.events import AuditEvent
from vault.audit.export import checkpoint_record, dump_record, event_record
from vault.audit.signing import (
    Checkpoint,
    is_valid_checkpoint_signature,
    key_id,
    sign_checkpoint,
)
from vault.errors import Unavailable

logger = logging.getLogger(__name__)

# Any fixed 64-bit number works if every replica uses the same one. It differs from the
# schema migration lock in vault.store.db.
AUDIT_CHAIN_LOCK_ID = 0x746F6B656E61  # "tokena"
SAFE_MESSAGE = "audit trail could not be written; no value was revealed"

# Backoff before retrying a failed batch of events recorded with durable=False.
RETRY_DELAY_SECONDS = 0.5
MAX_RETRY_DELAY_SECONDS = 5.0
# A full queue rejects calls in bursts, so one log line per interval reports how many.
QUEUE_FULL_LOG_INTERVAL_SECONDS = 10.0

_COLUMNS = ("seq", "occurred_at", *EVENT_FIELDS, "prev_hash", "hash")


class AuditUnavailable(Unavailable):
    """The audit trail did not store the events, so the call must not go ahead.

    ``str(error)`` is the message safe to send to the caller. ``reason`` is the cause, for logs.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(SAFE_MESSAGE)
        self.reason = reason


@dataclass
class _Entry:
    """The events of one ``record`` call, which are always committed in the same transaction."""

    events: list[AuditEvent]
    occurred_at: datetime
    waiter: asyncio.Future[None] | None


class AuditTrail:
    """Writer of the audit hash chain for one process; see the module docstring.

    ``sink`` is an optional text stream, or a file path opened for appending, that receives
    each committed batch and each checkpoint as export JSON lines. It holds only what this
    process wrote. A failed sink write is logged and does not fail ``record``, because the
    database is the record of truth.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        signing_key: nacl.signing.SigningKey | None = None,
        checkpoint_interval_seconds: float = 60.0,
        batch_max: int = 1000,
        queue_max: int = 100_000,
        sink: TextIO | Path | str | None = None,
        head_file: Path | None = None,
    ) -> None:
        # The last head this signer signed, kept outside the database: a chain rewritten and
        # re-hashed in the database, with its checkpoints deleted, no longer links to it.
        self._head_file = head_file
        if checkpoint_interval_seconds <= 0:
            raise ValueError("checkpoint_interval_seconds must be positive")
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        if queue_max < 1:
            raise ValueError("queue_max must be at least 1")
        self._pool = pool
        self._signing_key = signing_key
        self._checkpoint_interval = checkpoint_interval_seconds
        self._batch_max = batch_max
        self._queue_max = queue_max
        self._sink_target = sink
        self._sink: TextIO | None = None
        self._sink_opened_here = False

        self._queue: deque[_Entry] = deque()
        # Events queued or in a batch being written; bounded by queue_max.
        self._pending_events = 0
        self._wakeup = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._accepting = False
        self._stopped = False

        self._written_events = 0
        self._rejected_calls = 0
        self._last_queue_full_log = float("-inf")

    @property
    def pending_events(self) -> int:
        """Events accepted by ``record`` and not yet committed."""
        return self._pending_events

    async def start(self) -> None:
        """Open the sink and start the background writer."""
        if self._task is not None:
            raise RuntimeError("AuditTrail.start was already called")
        if isinstance(self._sink_target, Path | str):
            self._sink = _open_sink(self._sink_target)
            self._sink_opened_here = True
        else:
            self._sink = self._sink_target
        self._accepting = True
        self._trusted_head = _read_head_file(self._head_file)
        self._task = asyncio.create_task(self._run(), name="audit-trail-writer")
        if self._signing_key is None:
            logger.warning(
                "audit checkpoints are not signed: set [audit] signing_key_file, or truncation"
                " and rewriting of the chain cannot be detected"
            )
        logger.info(
            "audit trail started",
            extra={
                "batch_max": self._batch_max,
                "queue_max": self._queue_max,
                "signed_checkpoints": self._signing_key is not None,
            },
        )

    async def stop(self) -> None:
        """Stop accepting events, write every queued one, then write a final checkpoint.

        Waits for the database however long it takes. Calling it again does nothing.
        """
        if self._task is None or self._stopped:
            return
        self._stopped = True
        self._accepting = False
        self._stop_requested.set()
        self._wakeup.set()
        try:
            await self._task
        finally:
            if self._sink_opened_here and self._sink is not None:
                self._sink.close()
            logger.info("audit trail stopped", extra={"events_written": self._written_events})

    async def record(self, events: Sequence[AuditEvent], *, durable: bool) -> None:
        """Queue ``events`` for the chain, all in the same transaction.

        With ``durable=True``, returns once they are committed and raises AuditUnavailable if
        the write fails. With ``durable=False``, returns at once. Both raise AuditUnavailable at
        once when the trail is not running or the queue lacks room for all of ``events``.
        """
        if not events:
            return
        for event in events:
            if not isinstance(event, AuditEvent):
                raise TypeError(f"expected AuditEvent, got {type(event).__name__}")
        if not self._accepting:
            raise AuditUnavailable("the audit trail is not running")
        if self._pending_events + len(events) > self._queue_max:
            self._note_queue_full()
            raise AuditUnavailable("the audit queue is full")

        waiter = asyncio.get_running_loop().create_future() if durable else None
        self._queue.append(_Entry(list(events), datetime.now(UTC), waiter))
        self._pending_events += len(events)
        self._wakeup.set()
        if waiter is not None:
            await waiter

    # Background writer

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_checkpoint = loop.time() + self._checkpoint_interval
        retry_delay = RETRY_DELAY_SECONDS
        try:
            while True:
                if not self._queue:
                    if self._stop_requested.is_set():
                        break
                    self._wakeup.clear()
                    await self._wait(self._wakeup, self._checkpoint_wait(next_checkpoint))

                if self._signing_key is not None and loop.time() >= next_checkpoint:
                    await self._checkpoint()
                    next_checkpoint = loop.time() + self._checkpoint_interval

                if not self._queue:
                    continue
                if await self._write_next_batch():
                    retry_delay = RETRY_DELAY_SECONDS
                elif self._stop_requested.is_set():
                    self._drop_queue("the audit trail stopped after a failed write")
                    break
                else:
                    # stop() sets the stop request, which ends this backoff early.
                    await self._wait(self._stop_requested, retry_delay)
                    retry_delay = min(2 * retry_delay, MAX_RETRY_DELAY_SECONDS)

            if self._signing_key is not None:
                await self._checkpoint()
        finally:
            # Entries are left only when the task is cancelled or a bug escapes the loop. Without
            # a writer, new calls must fail at once instead of waiting forever.
            self._accepting = False
            self._drop_queue("the audit trail writer ended")

    def _checkpoint_wait(self, next_checkpoint: float) -> float | None:
        if self._signing_key is None:
            return None
        return max(0.0, next_checkpoint - asyncio.get_running_loop().time())

    @staticmethod
    async def _wait(event: asyncio.Event, seconds: float | None) -> None:
        """Wait until ``event`` is set or ``seconds`` pass. With None, wait for the event only."""
        await wait_event(event, seconds)

    def _take_batch(self) -> list[_Entry]:
        """Take whole entries up to batch_max events; an entry larger than that goes alone."""
        batch: list[_Entry] = []
        size = 0
        while self._queue:
            entry = self._queue[0]
            if batch and size + len(entry.events) > self._batch_max:
                break
            batch.append(self._queue.popleft())
            size += len(entry.events)
        return batch

    async def _write_next_batch(self) -> bool:
        """Write one batch and settle its callers; return False if the write failed."""
        batch = self._take_batch()
        size = sum(len(entry.events) for entry in batch)
        try:
            records = await self._insert(batch)
        except Exception as exc:
            # Any error: the writer task must outlive it. A DataError would recur on retry.
            retryable = not isinstance(exc, asyncpg.DataError)
            self._settle_failed(batch, exc, retry=retryable)
            return False

        self._pending_events -= size
        self._written_events += size
        for entry in batch:
            if entry.waiter is not None and not entry.waiter.done():
                entry.waiter.set_result(None)
        self._write_sink(records)
        return True

    async def _insert(self, batch: list[_Entry]) -> list[dict[str, Any]]:
        """Append the batch to the chain in one transaction; return the export records."""
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_CHAIN_LOCK_ID)
            head = await connection.fetchrow(
                "SELECT seq, hash FROM tv_audit_log ORDER BY seq DESC LIMIT 1"
            )
            seq = 0 if head is None else int(head["seq"])
            prev_hash = GENESIS_HASH if head is None else bytes(head["hash"])

            rows: list[tuple[Any, ...]] = []
            records: list[dict[str, Any]] = []
            for entry in batch:
                for event in entry.events:
                    seq += 1
                    fields = event_fields(event)
                    hashed = {
                        "seq": seq,
                        "occurred_at": format_timestamp(entry.occurred_at),
                        **fields,
                    }
                    event_hash = chain_hash(prev_hash, hashed)
                    rows.append((seq, entry.occurred_at, *fields.values(), prev_hash, event_hash))
                    records.append(
                        event_record(seq, entry.occurred_at, fields, prev_hash, event_hash)
                    )
                    prev_hash = event_hash
            await connection.copy_records_to_table("tv_audit_log", records=rows, columns=_COLUMNS)
        return records

    def _settle_failed(self, batch: list[_Entry], exc: Exception, *, retry: bool) -> None:
        """Fail the durable callers of a failed batch and requeue or drop the other entries."""
        durable = [entry for entry in batch if entry.waiter is not None]
        others = [entry for entry in batch if entry.waiter is None]
        for entry in durable:
            self._pending_events -= len(entry.events)
            if entry.waiter is not None and not entry.waiter.done():
                entry.waiter.set_exception(AuditUnavailable("the audit batch write failed"))
        other_events = sum(len(entry.events) for entry in others)
        requeued = retry and not self._stop_requested.is_set()
        # NOTE: a commit whose acknowledgement was lost looks like a failure, so events retried
        # after it can be stored twice (with new seqs).
        if requeued:
            # Back at the front, in their order, so they stay ahead of later events.
            self._queue.extendleft(reversed(others))
        else:
            self._pending_events -= other_events
        logger.error(
            "audit batch write failed",
            extra={
                "error": type(exc).__name__,
                "durable_events_failed": sum(len(entry.events) for entry in durable),
                "events_requeued": other_events if requeued else 0,
                "events_dropped": 0 if requeued else other_events,
            },
        )

    def _drop_queue(self, reason: str) -> None:
        """Fail every queued durable caller and discard every queued event."""
        dropped = 0
        while self._queue:
            entry = self._queue.popleft()
            dropped += len(entry.events)
            self._pending_events -= len(entry.events)
            if entry.waiter is not None and not entry.waiter.done():
                entry.waiter.set_exception(AuditUnavailable(reason))
        if dropped:
            logger.error("audit events dropped", extra={"events": dropped, "reason": reason})

    # Checkpoints

    async def _checkpoint(self) -> None:
        """Sign the current chain head, unless this key already signed it. Errors are logged."""
        try:
            checkpoint = await self._insert_checkpoint()
        except Exception as exc:
            # The next interval tries again; events keep being written meanwhile.
            logger.error("audit checkpoint failed", extra={"error": type(exc).__name__})
            return
        if checkpoint is not None:
            logger.debug("audit checkpoint written", extra={"seq": checkpoint.seq})
            self._write_sink([checkpoint_record(checkpoint)])

    async def _insert_checkpoint(self) -> Checkpoint | None:
        assert self._signing_key is not None
        async with self._pool.acquire() as connection:
            head = await connection.fetchrow(
                "SELECT seq, hash FROM tv_audit_log ORDER BY seq DESC LIMIT 1"
            )
            if head is None:
                return None
            if not await self._chain_extends_trusted_head(connection, int(head["seq"])):
                return None
            checkpoint = sign_checkpoint(
                self._signing_key, int(head["seq"]), bytes(head["hash"]), datetime.now(UTC)
            )
            inserted = await connection.fetchval(
                "INSERT INTO tv_audit_checkpoints (seq, hash, signed_at, signature, key_id)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq, key_id) DO NOTHING RETURNING seq",
                checkpoint.seq,
                checkpoint.hash,
                checkpoint.signed_at,
                checkpoint.signature,
                checkpoint.key_id,
            )
        self._trusted_head = (checkpoint.seq, checkpoint.hash)
        _write_head_file(self._head_file, self._trusted_head)
        return checkpoint if inserted is not None else None

    async def _chain_extends_trusted_head(self, connection: asyncpg.Connection, head: int) -> bool:
        """Check the rows from the last head this trail trusts up to ``head`` before signing.

        The trusted head is the last one this process signed, or else the newest checkpoint in
        the table with a valid signature by this key (or the start of the chain). A chain that
        was rewritten, with its checkpoints deleted, therefore never gets a new signature.
        """
        assert self._signing_key is not None
        if self._trusted_head is None:
            self._trusted_head = await self._newest_valid_checkpoint(connection)
        start_seq, expected = self._trusted_head
        if start_seq > 0:
            stored = await connection.fetchval(
                "SELECT hash FROM tv_audit_log WHERE seq = $1", start_seq
            )
            if stored is None or bytes(stored) != expected:
                return self._refuse_to_sign(start_seq, "the signed head was changed or deleted")
        previous, previous_seq = expected, start_seq
        async with connection.transaction(readonly=True):
            async for row in connection.cursor(
                "SELECT * FROM tv_audit_log WHERE seq > $1 AND seq <= $2 ORDER BY seq",
                start_seq,
                head,
            ):
                record = event_record(
                    row["seq"], row["occurred_at"], row, bytes(row["prev_hash"]), bytes(row["hash"])
                )
                if row["seq"] != previous_seq + 1 or bytes(row["prev_hash"]) != previous:
                    return self._refuse_to_sign(row["seq"], "the chain does not link")
                if chain_hash(previous, record) != bytes(row["hash"]):
                    return self._refuse_to_sign(row["seq"], "a row does not match its hash")
                previous, previous_seq = bytes(row["hash"]), row["seq"]
        return True

    async def _newest_valid_checkpoint(self, connection: asyncpg.Connection) -> tuple[int, bytes]:
        assert self._signing_key is not None
        verify_key = self._signing_key.verify_key
        rows = await connection.fetch(
            "SELECT seq, hash, signed_at, signature FROM tv_audit_checkpoints"
            " WHERE key_id = $1 ORDER BY seq DESC LIMIT 20",
            key_id(verify_key),
        )
        for row in rows:
            if is_valid_checkpoint_signature(
                verify_key,
                row["seq"],
                bytes(row["hash"]),
                format_timestamp(row["signed_at"]),
                bytes(row["signature"]),
            ):
                return int(row["seq"]), bytes(row["hash"])
        return 0, GENESIS_HASH

    def _refuse_to_sign(self, seq: int, reason: str) -> bool:
        logger.error(
            "audit chain does not verify at seq %d (%s): no checkpoint is signed until it is"
            " investigated",
            seq,
            reason,
        )
        return False

    # Sink and logging

    def _write_sink(self, records: list[dict[str, Any]]) -> None:
        if self._sink is None or not records:
            return
        try:
            self._sink.write("".join(dump_record(record) for record in records))
            self._sink.flush()
        except (OSError, ValueError) as exc:
            # ValueError is what a closed stream raises.
            logger.error(
                "audit sink write failed",
                extra={"error": type(exc).__name__, "records": len(records)},
            )

    def _note_queue_full(self) -> None:
        self._rejected_calls += 1
        now = time.monotonic()
        if now - self._last_queue_full_log >= QUEUE_FULL_LOG_INTERVAL_SECONDS:
            logger.error(
                "audit queue full; calls rejected",
                extra={
                    "rejected_calls": self._rejected_calls,
                    "pending_events": self._pending_events,
                    "queue_max": self._queue_max,
                },
            )
            self._rejected_calls = 0
            self._last_queue_full_log = now


def _open_sink(path: Path | str) -> TextIO:
    # Line buffering is not needed: every batch is flushed as soon as it is written.
    return open(path, "a", encoding="utf-8")


def _read_head_file(path: Path | None) -> tuple[int, bytes] | None:
    if path is None:
        return None
    try:
        seq_text, hash_hex = path.read_text().split()
        return int(seq_text), bytes.fromhex(hash_hex)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        logger.error("audit head file %s is unreadable; checking the chain from its start", path)
        return None


def _write_head_file(path: Path | None, head: tuple[int, bytes]) -> None:
    if path is None:
        return
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(f"{head[0]} {head[1].hex()}\n")
        partial.replace(path)
    except OSError as exc:
        logger.error("audit head file %s could not be written: %s", path, exc.strerror)

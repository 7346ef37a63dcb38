"""Offline verification of the audit trail from an export or straight from the database.

The verifier needs only the public key. It recomputes every event hash and checks that each
prev_hash links to the event before and that seq has no gap. It checks each checkpoint's
signature and that its hash equals the hash of the event at that seq. Finally it checks that
the events reach the highest signed checkpoint. The report names the first broken link, by seq.

What it cannot see: events appended after the last checkpoint and then rewritten or removed
together with every later event. That window is at most one checkpoint interval. Deleting
checkpoint rows as well is visible only by comparing with an earlier export or the sink.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import nacl.signing

from vault.audit.chain import GENESIS_HASH, HASH_SIZE, MalformedRecord, chain_hash
from vault.audit.export import ConnectionSource, connect, iter_records
from vault.audit.signing import SIGNATURE_SIZE, is_valid_checkpoint_signature, key_id

HASH_MISMATCH = "hash mismatch (row edited)"
SEQ_GAP = "seq gap (row deleted)"
SEQ_OUT_OF_ORDER = "seq out of order (rows reordered or duplicated)"
BROKEN_PREV_LINK = "prev_hash does not link (rows reordered or deleted)"
BAD_SIGNATURE = "checkpoint signature invalid"
CHECKPOINT_MISMATCH = "checkpoint hash does not match the event (chain rewritten)"
CHECKPOINT_WITHOUT_EVENT = "checkpoint precedes the first event of the export"
MALFORMED = "malformed record"

_HEX = re.compile(r"[0-9a-f]*")


@dataclass(frozen=True)
class BrokenLink:
    """The first place where the log differs from what was written.

    ``seq`` is None only for a record too malformed to have one.
    """

    seq: int | None
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        where = "a record" if self.seq is None else f"seq {self.seq}"
        text = f"{where}: {self.reason}"
        return f"{text}; {self.detail}" if self.detail else text


@dataclass(frozen=True)
class VerifyReport:
    events: int
    checkpoints: int
    first_seq: int | None
    last_seq: int | None
    # Highest seq covered by a checkpoint whose signature and hash both check out.
    last_signed_seq: int | None
    broken: BrokenLink | None

    @property
    def ok(self) -> bool:
        return self.broken is None

    def summary(self) -> str:
        """Describe the result in one line."""
        if self.broken is not None:
            return f"audit trail broken at {self.broken}"
        span = f" (seq {self.first_seq} to {self.last_seq})" if self.first_seq is not None else ""
        signed = "none" if self.last_signed_seq is None else str(self.last_signed_seq)
        line = (
            f"audit trail intact: {self.events} events{span}, {self.checkpoints} checkpoints,"
            f" last signed seq {signed}"
        )
        unsigned = (self.last_seq or 0) - (self.last_signed_seq or 0)
        if unsigned > 0:
            # Only a signature vouches for the rows it covers, so report how many it does not.
            line += (
                f"; warning: {unsigned} events after the last signed seq are not covered by a"
                " signature (compare with an earlier export to detect truncation there)"
            )
        return line


@dataclass(frozen=True)
class _Checkpoint:
    seq: int
    hash: bytes
    signed_at: str
    signature: bytes
    key_id: str
    position: int


class ChainVerifier:
    """Incremental verifier: ``add`` each record in export order, then ``finish``.

    Records whose seq lies outside ``from_seq``..``to_seq`` are skipped. The link into the
    first event is checked only when the range starts at seq 1, because an export that starts
    later does not contain the event before it.
    """

    def __init__(
        self,
        verify_key: nacl.signing.VerifyKey,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        position_label: str = "record",
    ) -> None:
        self.verify_key = verify_key
        self.from_seq = from_seq
        self.to_seq = to_seq
        # Word for a record's position in messages: "line" when reading an export file.
        self.position_label = position_label
        start = 1 if from_seq is None else from_seq
        self._expected_seq = start
        self._prev_hash: bytes | None = GENESIS_HASH if start == 1 else None
        # Recomputed hashes of the events that verified, 32 bytes each from _first_seq on, so
        # a checkpoint can be matched wherever it appears in the stream.
        self._hashes = bytearray()
        self._first_seq: int | None = None
        self._last_seq: int | None = None
        self._events = 0
        self._position = 0
        self._chain_break: BrokenLink | None = None
        self._malformed: BrokenLink | None = None
        self._checkpoints: list[_Checkpoint] = []

    def add(self, record: Any, *, position: int | None = None) -> None:
        """Check one parsed export record; ``position`` defaults to the count of records so far."""
        self._position = self._position + 1 if position is None else position
        if not isinstance(record, Mapping):
            self.add_malformed("not a JSON object")
            return
        seq = record.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int):
            self.add_malformed("missing or non-integer seq")
            return
        if not self._in_range(seq):
            return
        kind = record.get("type")
        if kind == "event":
            self._add_event(seq, record)
        elif kind == "checkpoint":
            self._add_checkpoint(seq, record)
        else:
            self.add_malformed(f"unknown type {str(kind)[:40]!r}")

    def add_malformed(self, problem: str, *, position: int | None = None) -> None:
        """Note a record that could not be read, such as a line that is not JSON."""
        if position is not None:
            self._position = position
        if self._malformed is None:
            self._malformed = BrokenLink(
                None, MALFORMED, f"{self.position_label} {self._position}: {problem}"
            )

    def finish(self) -> VerifyReport:
        """Check the checkpoints against the events and return the report."""
        problems: list[BrokenLink] = []
        if self._malformed is not None:
            problems.append(self._malformed)
        if self._chain_break is not None:
            problems.append(self._chain_break)

        last_signed: int | None = None
        highest_valid_checkpoint: int | None = None
        for checkpoint in sorted(self._checkpoints, key=lambda c: (c.seq, c.position)):
            problem = self._check_checkpoint(checkpoint)
            if problem is not None:
                problems.append(problem)
                continue
            highest_valid_checkpoint = checkpoint.seq
            if self._verified(checkpoint.seq):
                last_signed = checkpoint.seq

        ended_at = self._last_seq if self._last_seq is not None else self._expected_seq - 1
        if highest_valid_checkpoint is not None and highest_valid_checkpoint > ended_at:
            problems.append(
                BrokenLink(
                    ended_at + 1,
                    f"events end before checkpoint seq {highest_valid_checkpoint} (log truncated)",
                    f"the last event is seq {ended_at}" if self._events else "there are no events",
                )
            )

        # Malformed records come first, then the lowest seq. min() returns the first of equal
        # keys, so a chain break wins over a checkpoint problem at the same seq.
        broken = min(
            problems,
            key=lambda p: (p.seq is not None, p.seq or 0),
            default=None,
        )
        return VerifyReport(
            events=self._events,
            checkpoints=len(self._checkpoints),
            first_seq=self._first_seq,
            last_seq=self._last_seq,
            last_signed_seq=last_signed,
            broken=broken,
        )

    # Events

    def _add_event(self, seq: int, record: Mapping[str, Any]) -> None:
        self._events += 1
        if self._first_seq is None:
            self._first_seq = seq
        self._last_seq = seq if self._last_seq is None else max(self._last_seq, seq)
        if self._chain_break is not None:
            return
        self._chain_break = self._check_event(seq, record)
        if self._chain_break is None:
            self._expected_seq += 1

    def _check_event(self, seq: int, record: Mapping[str, Any]) -> BrokenLink | None:
        expected = self._expected_seq
        if seq > expected:
            return BrokenLink(expected, SEQ_GAP, f"seq {seq} follows seq {expected - 1}")
        if seq < expected:
            return BrokenLink(seq, SEQ_OUT_OF_ORDER, f"seq {seq} follows seq {expected - 1}")

        prev_hash = _hex_bytes(record.get("prev_hash"), HASH_SIZE)
        stored_hash = _hex_bytes(record.get("hash"), HASH_SIZE)
        if prev_hash is None or stored_hash is None:
            return BrokenLink(seq, MALFORMED, "prev_hash and hash must be 64 lowercase hex digits")
        if self._prev_hash is not None and prev_hash != self._prev_hash:
            return BrokenLink(seq, BROKEN_PREV_LINK)
        try:
            computed = chain_hash(prev_hash, record)
        except MalformedRecord as exc:
            return BrokenLink(seq, MALFORMED, str(exc))
        if computed != stored_hash:
            return BrokenLink(seq, HASH_MISMATCH)

        self._hashes += computed
        self._prev_hash = computed
        return None

    def _verified(self, seq: int) -> bool:
        """Return whether the event at ``seq`` is part of the chain verified so far."""
        return self._first_seq is not None and self._first_seq <= seq < self._expected_seq

    # Checkpoints

    def _add_checkpoint(self, seq: int, record: Mapping[str, Any]) -> None:
        chain_hash_bytes = _hex_bytes(record.get("hash"), HASH_SIZE)
        signature = _hex_bytes(record.get("signature"), SIGNATURE_SIZE)
        signed_at = record.get("signed_at")
        record_key_id = record.get("key_id")
        if (
            chain_hash_bytes is None
            or signature is None
            or not isinstance(signed_at, str)
            or not isinstance(record_key_id, str)
        ):
            self.add_malformed(
                f"checkpoint at seq {seq} lacks hash, signature, signed_at or key_id"
            )
            return
        self._checkpoints.append(
            _Checkpoint(
                seq=seq,
                hash=chain_hash_bytes,
                signed_at=signed_at,
                signature=signature,
                key_id=record_key_id,
                position=self._position,
            )
        )

    def _check_checkpoint(self, checkpoint: _Checkpoint) -> BrokenLink | None:
        if not is_valid_checkpoint_signature(
            self.verify_key,
            checkpoint.seq,
            checkpoint.hash,
            checkpoint.signed_at,
            checkpoint.signature,
        ):
            expected_id = key_id(self.verify_key)
            detail = (
                ""
                if checkpoint.key_id == expected_id
                else f"signed with key id {checkpoint.key_id[:16]}, the public key is {expected_id}"
            )
            return BrokenLink(checkpoint.seq, BAD_SIGNATURE, detail)
        if self._first_seq is not None and checkpoint.seq < self._first_seq:
            return BrokenLink(checkpoint.seq, CHECKPOINT_WITHOUT_EVENT)
        if self._verified(checkpoint.seq):
            assert self._first_seq is not None
            offset = (checkpoint.seq - self._first_seq) * HASH_SIZE
            if self._hashes[offset : offset + HASH_SIZE] != checkpoint.hash:
                return BrokenLink(checkpoint.seq, CHECKPOINT_MISMATCH)
        return None

    def _in_range(self, seq: int) -> bool:
        if self.from_seq is not None and seq < self.from_seq:
            return False
        return self.to_seq is None or seq <= self.to_seq


def verify_records(
    records: Iterable[Any],
    verify_key: nacl.signing.VerifyKey,
    *,
    from_seq: int | None = None,
    to_seq: int | None = None,
) -> VerifyReport:
    """Verify parsed export records (events and checkpoints) with the public key."""
    verifier = ChainVerifier(verify_key, from_seq=from_seq, to_seq=to_seq)
    for record in records:
        verifier.add(record)
    return verifier.finish()


def verify_export(
    source: TextIO | Path | str,
    verify_key: nacl.signing.VerifyKey,
    *,
    from_seq: int | None = None,
    to_seq: int | None = None,
) -> VerifyReport:
    """Verify a JSON-lines export given as an open text stream or a file path."""
    if isinstance(source, Path | str):
        with open(source, encoding="utf-8") as stream:
            return verify_export(stream, verify_key, from_seq=from_seq, to_seq=to_seq)

    verifier = ChainVerifier(verify_key, from_seq=from_seq, to_seq=to_seq, position_label="line")
    for number, line in enumerate(source, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            verifier.add_malformed("not valid JSON", position=number)
            continue
        verifier.add(record, position=number)
    return verifier.finish()


async def verify_database(
    pool: ConnectionSource,
    verify_key: nacl.signing.VerifyKey,
    from_seq: int | None = None,
    to_seq: int | None = None,
) -> VerifyReport:
    """Verify the stored log; ``pool`` is an asyncpg pool, a connection or a DSN."""
    verifier = ChainVerifier(verify_key, from_seq=from_seq, to_seq=to_seq)
    async with connect(pool) as connection:
        async for record in iter_records(connection, from_seq=from_seq, to_seq=to_seq):
            verifier.add(record)
    return verifier.finish()


def _hex_bytes(text: Any, size: int) -> bytes | None:
    if not isinstance(text, str) or len(text) != 2 * size or not _HEX.fullmatch(text):
        return None
    return bytes.fromhex(text)

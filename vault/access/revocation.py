"""Revoked caller identities and client certificate serial numbers, shared by all replicas.

Revocations live in ``tv_revocations``. Each replica keeps the revocations in force in memory,
so ``is_revoked`` costs no database round trip, and an ``AccessTableWatcher`` reloads them on
every change notification and every 2 s. A replica therefore rejects a revoked caller within
milliseconds of the commit when the notification arrives, and within 2 s plus one reload when
it is lost. ``is_revoked`` raises Unavailable rather than use a copy older than 5 s.

Serial numbers are stored as lower-case hex without leading zeros or a ``0x`` prefix ('a1b2'
for 0xA1B2), the digits ``openssl x509 -serial`` prints. A serial given as text is always read
as hex, never as decimal.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from vault.access.changes import (
    DEFAULT_MAX_STALENESS_SECONDS,
    DEFAULT_POLL_SECONDS,
    AccessTableWatcher,
)
from vault.errors import FailedPrecondition, InvalidValue, NotFound
from vault.identity import Caller

logger = logging.getLogger(__name__)

TABLE = "tv_revocations"
MAX_REASON_LENGTH = 500
# RFC 5280 allows serials of up to 20 octets (40 hex digits); this also admits longer serials
# that some CAs issue, while bounding the input.
MAX_SERIAL_HEX_DIGITS = 64
# The same rule vault.identity applies to identities from certificates.
_IDENTITY = re.compile(r"[\x21-\x7e]{1,512}")
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class Revocation:
    """One revocation; exactly one of ``identity`` and ``serial`` (lower-case hex) is set."""

    id: int
    identity: str | None
    serial: str | None
    reason: str
    revoked_by: str
    revoked_at: datetime
    restored_by: str | None = None
    restored_at: datetime | None = None


def format_serial(serial: int | str) -> str:
    """Return the stored form of a certificate serial number; raise InvalidValue if invalid.

    Text may have a ``0x`` prefix, colons and upper case (``0A:1B``, ``0x0a1b``) and is read
    as hex.
    """
    if isinstance(serial, int):
        if serial < 0:
            raise InvalidValue("serial", "must not be negative")
        return format(serial, "x")
    digits = serial.strip().lower().removeprefix("0x").replace(":", "")
    if not _HEX.fullmatch(digits):
        raise InvalidValue("serial", "must be hex digits, e.g. 0A1B or 0a:1b")
    if len(digits) > MAX_SERIAL_HEX_DIGITS:
        raise InvalidValue("serial", f"must have at most {MAX_SERIAL_HEX_DIGITS} hex digits")
    return digits.lstrip("0") or "0"


def validate_identity(identity: str) -> None:
    """Raise InvalidValue unless ``identity`` could come from a client certificate."""
    if not _IDENTITY.fullmatch(identity):
        raise InvalidValue("identity", "must be 1 to 512 printable ASCII characters without spaces")


def validate_reason(reason: str, max_length: int) -> None:
    """Raise InvalidValue unless ``reason`` is 1 to ``max_length`` printable characters."""
    if not reason.strip():
        raise InvalidValue("reason", "must not be empty")
    if len(reason) > max_length:
        raise InvalidValue("reason", f"must have at most {max_length} characters")
    if not reason.isprintable():
        raise InvalidValue("reason", "must not contain line breaks or control characters")


class RevocationList:
    """The revocations in force, checked in memory and kept current as described above."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        dsn: str,
        *,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        max_staleness_seconds: float | None = DEFAULT_MAX_STALENESS_SECONDS,
    ) -> None:
        self._pool = pool
        self._identities: frozenset[str] = frozenset()
        self._serials: frozenset[str] = frozenset()
        self._watcher = AccessTableWatcher(
            dsn,
            table=TABLE,
            reload=self._load,
            poll_seconds=poll_seconds,
            max_staleness_seconds=max_staleness_seconds,
        )

    @property
    def backend_pid(self) -> int | None:
        """PID of the PostgreSQL backend that listens for changes, or None while disconnected."""
        return self._watcher.backend_pid

    async def start(self) -> None:
        """Load the revocations and start following changes; a database failure is raised."""
        await self._watcher.start()

    async def stop(self) -> None:
        await self._watcher.stop()

    # -- checks, from memory

    def is_revoked(self, caller: Caller) -> bool:
        """Return whether the caller's identity or certificate serial is revoked.

        Raises Unavailable when the copy in memory is older than the staleness bound.
        """
        return self.is_identity_revoked(caller.identity) or self.is_serial_revoked(
            caller.serial_number
        )

    def is_identity_revoked(self, identity: str) -> bool:
        self._watcher.check_fresh()
        return identity in self._identities

    def is_serial_revoked(self, serial: int) -> bool:
        self._watcher.check_fresh()
        # RFC 5280 serials are positive, and revoke() rejects negative ones, so none is listed.
        if serial < 0:
            return False
        return format_serial(serial) in self._serials

    # -- changes

    async def revoke(
        self,
        *,
        identity: str | None = None,
        serial: int | str | None = None,
        reason: str,
        actor: str,
    ) -> Revocation:
        """Revoke an identity or a certificate serial; FailedPrecondition if already revoked."""
        column, value = _subject(identity, serial)
        validate_reason(reason, MAX_REASON_LENGTH)
        try:
            row = await self._pool.fetchrow(
                "INSERT INTO tv_revocations (identity, serial, reason, revoked_by)"
                " VALUES ($1, $2, $3, $4) RETURNING *",
                value if column == "identity" else None,
                value if column == "serial" else None,
                reason,
                actor,
            )
        except asyncpg.UniqueViolationError:
            raise FailedPrecondition(
                f"{column} {value!r} is already revoked; restore it first to revoke it again"
            ) from None
        assert row is not None
        logger.info("revoked %s %s", column, value, extra={"actor": actor})
        await self._reload_after_change()
        return _revocation(row)

    async def restore(
        self, *, identity: str | None = None, serial: int | str | None = None, actor: str
    ) -> Revocation:
        """End the revocation in force for an identity or serial; NotFound if there is none."""
        column, value = _subject(identity, serial)
        # The parameter of the other column is NULL, so its comparison never matches.
        row = await self._pool.fetchrow(
            "UPDATE tv_revocations SET restored_by = $3, restored_at = now()"
            " WHERE restored_at IS NULL AND (identity = $1 OR serial = $2) RETURNING *",
            value if column == "identity" else None,
            value if column == "serial" else None,
            actor,
        )
        if row is None:
            raise NotFound(f"{column} {value!r} is not revoked")
        logger.info("restored %s %s", column, value, extra={"actor": actor})
        await self._reload_after_change()
        return _revocation(row)

    async def list(self) -> Sequence[Revocation]:
        """Return the revocations in force, newest first, read from the database."""
        rows = await self._pool.fetch(
            "SELECT * FROM tv_revocations WHERE restored_at IS NULL"
            " ORDER BY revoked_at DESC, id DESC"
        )
        return [_revocation(row) for row in rows]

    # -- helpers

    async def _load(self) -> None:
        rows = await self._pool.fetch(
            "SELECT identity, serial FROM tv_revocations WHERE restored_at IS NULL"
        )
        self._identities = frozenset(row["identity"] for row in rows if row["identity"])
        self._serials = frozenset(row["serial"] for row in rows if row["serial"])

    async def _reload_after_change(self) -> None:
        # The change is committed at this point, so a failed reload must not fail the call; the
        # periodic reload picks the change up.
        try:
            await self._watcher.reload_now()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            logger.warning("failed to reload revocations after a change: %s", exc)


def _subject(identity: str | None, serial: int | str | None) -> tuple[str, str]:
    if (identity is None) == (serial is None):
        raise InvalidValue("subject", "give either an identity or a certificate serial")
    if identity is not None:
        validate_identity(identity)
        return "identity", identity
    assert serial is not None
    return "serial", format_serial(serial)


def _revocation(row: asyncpg.Record) -> Revocation:
    return Revocation(
        id=row["id"],
        identity=row["identity"],
        serial=row["serial"],
        reason=row["reason"],
        revoked_by=row["revoked_by"],
        revoked_at=row["revoked_at"],
        restored_by=row["restored_by"],
        restored_at=row["restored_at"],
    )

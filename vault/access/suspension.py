"""Suspended callers, shared by all replicas: set by the anomaly detector or an administrator.

Suspensions live in ``tv_suspensions``, at most one in force per identity. Each replica keeps
those in force in memory and reloads them like the revocation list (on every change
notification and every 2 s), so ``is_suspended`` needs no database round trip and raises
Unavailable rather than use a copy older than 5 s.

The reason of a suspension is sent to the suspended caller in the refusal message, so it must
be text the service wrote (such as the anomaly detector's rule), never text from a request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from vault.access.changes import (
    DEFAULT_MAX_STALENESS_SECONDS,
    DEFAULT_POLL_SECONDS,
    AccessTableWatcher,
)
from vault.access.revocation import validate_identity, validate_reason
from vault.errors import NotFound

logger = logging.getLogger(__name__)

TABLE = "tv_suspensions"
ANOMALY_DETECTOR = "anomaly-detector"
MAX_REASON_LENGTH = 200


@dataclass(frozen=True)
class Suspension:
    id: int
    identity: str
    reason: str
    suspended_by: str
    suspended_at: datetime
    lifted_by: str | None = None
    lifted_at: datetime | None = None


class Suspensions:
    """The suspensions in force, checked in memory and kept current as described above."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        dsn: str,
        *,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        max_staleness_seconds: float | None = DEFAULT_MAX_STALENESS_SECONDS,
    ) -> None:
        self._pool = pool
        self._reasons: Mapping[str, str] = {}
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
        """Load the suspensions and start following changes; a database failure is raised."""
        await self._watcher.start()

    async def stop(self) -> None:
        await self._watcher.stop()

    # -- checks, from memory

    def is_suspended(self, identity: str) -> bool:
        """Return whether ``identity`` is suspended; Unavailable if the copy is too old."""
        return self.suspension_reason(identity) is not None

    def suspension_reason(self, identity: str) -> str | None:
        """Return the reason of the suspension in force for ``identity``, or None."""
        self._watcher.check_fresh()
        return self._reasons.get(identity)

    # -- changes

    async def suspend(self, identity: str, reason: str, actor: str) -> Suspension:
        """Suspend ``identity`` and return the suspension in force.

        When the identity is already suspended, nothing changes and the existing suspension is
        returned, so the anomaly detector may call this again for the same caller. ``reason``
        is shown to the caller; see the module docstring.
        """
        validate_identity(identity)
        validate_reason(reason, MAX_REASON_LENGTH)
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                "INSERT INTO tv_suspensions (identity, reason, suspended_by)"
                " VALUES ($1, $2, $3) ON CONFLICT (identity) WHERE lifted_at IS NULL"
                " DO NOTHING RETURNING *",
                identity,
                reason,
                actor,
            )
            created = row is not None
            if row is None:
                row = await connection.fetchrow(
                    "SELECT * FROM tv_suspensions WHERE identity = $1 AND lifted_at IS NULL",
                    identity,
                )
        assert row is not None
        if created:
            logger.warning(
                "suspended caller %s", identity, extra={"actor": actor, "reason": reason}
            )
            await self._reload_after_change()
        return _suspension(row)

    async def lift(self, identity: str, actor: str) -> Suspension:
        """End the suspension in force for ``identity``; NotFound if there is none."""
        validate_identity(identity)
        row = await self._pool.fetchrow(
            "UPDATE tv_suspensions SET lifted_by = $2, lifted_at = now()"
            " WHERE identity = $1 AND lifted_at IS NULL RETURNING *",
            identity,
            actor,
        )
        if row is None:
            raise NotFound(f"identity {identity!r} is not suspended")
        logger.info("lifted the suspension of %s", identity, extra={"actor": actor})
        await self._reload_after_change()
        return _suspension(row)

    async def active(self) -> Sequence[Suspension]:
        """Return the suspensions in force, newest first, read from the database."""
        rows = await self._pool.fetch(
            "SELECT * FROM tv_suspensions WHERE lifted_at IS NULL"
            " ORDER BY suspended_at DESC, id DESC"
        )
        return [_suspension(row) for row in rows]

    # -- helpers

    async def _load(self) -> None:
        rows = await self._pool.fetch(
            "SELECT identity, reason FROM tv_suspensions WHERE lifted_at IS NULL"
        )
        self._reasons = {row["identity"]: row["reason"] for row in rows}

    async def _reload_after_change(self) -> None:
        # The change is committed at this point, so a failed reload must not fail the call; the
        # periodic reload picks the change up.
        try:
            await self._watcher.reload_now()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            logger.warning("failed to reload suspensions after a change: %s", exc)


def _suspension(row: asyncpg.Record) -> Suspension:
    return Suspension(
        id=row["id"],
        identity=row["identity"],
        reason=row["reason"],
        suspended_by=row["suspended_by"],
        suspended_at=row["suspended_at"],
        lifted_by=row["lifted_by"],
        lifted_at=row["lifted_at"],
    )

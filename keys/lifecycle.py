"""State machine of data key versions: rotation, retirement, dual-control destruction, rewrap.

A version moves through these states, and only these commands move it:

============  ============  ====================================================
from          to            command
============  ============  ====================================================
(none)        active        ``rotate`` (``DataKeyManager.ensure`` for version 1)
active        decrypt_only  ``rotate``, which makes a new active version
decrypt_only  retired       ``set_state``
retired       decrypt_only  ``set_state``
decrypt_only  destroyed     ``propose_destroy``, then ``approve_destroy``
retired       destroyed     ``propose_destroy``, then ``approve_destroy``
============  ============  ====================================================

Each change runs in one transaction together with its ``tv_key_events`` row (which names the
actor) and a ``pg_notify`` on ``tv_key_changes``, which PostgreSQL delivers on commit.
``KeyChangeListener`` receives it in every replica and clears that replica's key cache.
KEK provider calls block, so they run in a thread. When one fails, no state changes.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from keys.datakeys import KEY_SIZE, DataKeyManager, Purpose, associated_data
from keys.errors import (
    DataKeyNotFound,
    DestroyRequestNotFound,
    DualControlError,
    KekNotFound,
    KeyInUse,
    KeyProviderError,
    KeyStateError,
)
from keys.provider import KekProvider, KekRef

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL = "tv_key_changes"


class KeyState(enum.Enum):
    ACTIVE = "active"
    DECRYPT_ONLY = "decrypt_only"
    RETIRED = "retired"
    DESTROYED = "destroyed"


# Every allowed transition and the only command that performs it.
TRANSITIONS: dict[tuple[KeyState, KeyState], str] = {
    (KeyState.ACTIVE, KeyState.DECRYPT_ONLY): "rotate",
    (KeyState.DECRYPT_ONLY, KeyState.RETIRED): "set_state",
    (KeyState.RETIRED, KeyState.DECRYPT_ONLY): "set_state",
    (KeyState.DECRYPT_ONLY, KeyState.DESTROYED): "approve_destroy",
    (KeyState.RETIRED, KeyState.DESTROYED): "approve_destroy",
}


@dataclass(frozen=True)
class KeyVersionInfo:
    """One data key version as stored, without its key material.

    ``rows`` counts the vaulted token rows that the version protects: rows whose ``key_version``
    names it for ``aead``, whose ``index_key_version`` names it for ``index``. It is None for
    ``fpe``, because vaultless tokens are not stored and so cannot be counted.
    """

    template: str
    purpose: Purpose
    version: int
    state: KeyState
    kek: KekRef
    created_at: datetime
    updated_at: datetime
    rows: int | None


@dataclass(frozen=True)
class DestroyRequest:
    """A proposal to destroy a data key version, which a second identity must approve.

    ``status`` is ``pending``, ``approved`` or ``cancelled``. Who cancelled a request is
    recorded in its ``destroy_cancelled`` event.
    """

    id: int
    template: str
    purpose: Purpose
    version: int
    force: bool
    status: str
    proposed_by: str
    proposed_at: datetime
    approved_by: str | None
    approved_at: datetime | None


@dataclass(frozen=True)
class KeyEvent:
    """One row of ``tv_key_events``.

    For events that change no state (``rewrapped``, ``destroy_proposed``,
    ``destroy_cancelled``), ``from_state`` and ``to_state`` both hold the unchanged state.
    """

    id: int
    occurred_at: datetime
    template: str
    purpose: Purpose
    version: int
    event: str
    from_state: str | None
    to_state: str | None
    actor: str
    detail: dict[str, Any]


def _label(template: str, purpose: Purpose | str, version: int | None = None) -> str:
    """Name a key series or version in messages, for example ``cards/fpe v2``."""
    purpose_name = purpose.value if isinstance(purpose, Purpose) else purpose
    if version is None:
        return f"{template}/{purpose_name}"
    return f"{template}/{purpose_name} v{version}"


def _check_actor(actor: str) -> None:
    if not isinstance(actor, str) or not actor.strip():
        raise ValueError(
            "actor is empty; pass the identity of the caller, which the key events record"
        )


def check_transition(label: str, current: KeyState, target: KeyState, command: str) -> None:
    """Raise KeyStateError unless ``command`` may move a version from ``current`` to ``target``."""
    allowed_by = TRANSITIONS.get((current, target))
    if allowed_by == command:
        return

    if current is target:
        rule = f"it is already {current.value}"
    elif allowed_by == "rotate":
        rule = (
            "an active version leaves active only through rotate, which makes a new active "
            "version in the same transaction"
        )
    elif allowed_by == "approve_destroy":
        rule = (
            "destruction needs dual control: propose_destroy by one identity, then "
            "approve_destroy by another"
        )
    elif allowed_by is not None:
        rule = f"only {allowed_by} makes that change"
    elif current is KeyState.DESTROYED:
        rule = "destroyed is final, because the wrapped key was erased"
    elif target is KeyState.ACTIVE:
        rule = "a version never returns to active; rotate creates a new active version"
    else:
        rule = "an active version must first become decrypt_only through rotate"
    raise KeyStateError(
        f"data key {label} cannot change from {current.value} to {target.value}: {rule}"
    )


# Versions with the number of token rows each protects. tv_tokens has an index on
# (template, key_version) and on (template, index_key_version), so each count reads one index
# range. A NULL parameter matches every template, purpose or version.
_SELECT_VERSIONS = (
    "SELECT k.template, k.purpose, k.version, k.state, k.kek_provider, k.kek_key_id,"
    " k.kek_version, k.created_at, k.updated_at,"
    " CASE k.purpose"
    " WHEN 'aead' THEN (SELECT count(*) FROM tv_tokens t"
    "  WHERE t.template = k.template AND t.key_version = k.version)"
    " WHEN 'index' THEN (SELECT count(*) FROM tv_tokens t"
    "  WHERE t.template = k.template AND t.index_key_version = k.version)"
    " END AS rows"
    " FROM tv_data_keys k"
    " WHERE ($1::text IS NULL OR k.template = $1)"
    " AND ($2::text IS NULL OR k.purpose = $2)"
    " AND ($3::integer IS NULL OR k.version = $3)"
    " ORDER BY k.template, k.purpose, k.version"
)


def _version_info(row: asyncpg.Record) -> KeyVersionInfo:
    return KeyVersionInfo(
        template=row["template"],
        purpose=Purpose(row["purpose"]),
        version=row["version"],
        state=KeyState(row["state"]),
        kek=KekRef(row["kek_provider"], row["kek_key_id"], row["kek_version"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        rows=row["rows"],
    )


def _destroy_request(row: asyncpg.Record) -> DestroyRequest:
    return DestroyRequest(
        id=row["id"],
        template=row["template"],
        purpose=Purpose(row["purpose"]),
        version=row["version"],
        force=row["force"],
        status=row["status"],
        proposed_by=row["proposed_by"],
        proposed_at=row["proposed_at"],
        approved_by=row["approved_by"],
        approved_at=row["approved_at"],
    )


async def _record_event(
    connection: asyncpg.Connection,
    template: str,
    purpose: Purpose,
    version: int,
    event: str,
    *,
    from_state: KeyState | None,
    to_state: KeyState | None,
    actor: str,
    detail: dict[str, Any],
) -> None:
    """Insert a key event and queue its notification. Both take effect when the caller commits."""
    # The detail goes in as text and is cast in SQL, so it works with or without a jsonb codec.
    await connection.execute(
        "INSERT INTO tv_key_events"
        " (template, purpose, version, event, from_state, to_state, actor, detail)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb)",
        template,
        purpose.value,
        version,
        event,
        from_state.value if from_state is not None else None,
        to_state.value if to_state is not None else None,
        actor,
        json.dumps(detail),
    )
    payload = {"template": template, "purpose": purpose.value, "version": version, "event": event}
    await connection.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, json.dumps(payload))


class KeyLifecycle:
    """Changes the state of data key versions and rewraps them under a new KEK version.

    Every method that changes something takes ``actor``, the identity of the caller, and
    records it in ``tv_key_events``. Errors, besides those of the KEK provider:

    - ``DataKeyNotFound`` for a version or template that does not exist.
    - ``KeyStateError`` for a transition that the state machine forbids.
    - ``DualControlError`` and ``KeyInUse`` for destroy requests, as each method describes.
    - ``ValueError`` for an empty ``actor``.
    """

    def __init__(self, pool: asyncpg.Pool, provider: KekProvider, keys: DataKeyManager) -> None:
        self._pool = pool
        self._provider = provider
        self._keys = keys

    # -- queries

    async def list_versions(self, template: str | None = None) -> list[KeyVersionInfo]:
        """Return the versions of ``template``, or of all templates, in name and version order."""
        rows = await self._pool.fetch(_SELECT_VERSIONS, template, None, None)
        return [_version_info(row) for row in rows]

    async def destroy_requests(self, *, pending_only: bool = True) -> list[DestroyRequest]:
        """Return destroy requests, oldest first: the pending ones, or all of them."""
        rows = await self._pool.fetch(
            "SELECT * FROM tv_destroy_requests"
            " WHERE NOT $1::boolean OR status = 'pending' ORDER BY id",
            pending_only,
        )
        return [_destroy_request(row) for row in rows]

    async def events(self, *, template: str | None = None, limit: int = 100) -> list[KeyEvent]:
        """Return the latest ``limit`` key events, newest first, of ``template`` or of all."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        rows = await self._pool.fetch(
            "SELECT id, occurred_at, template, purpose, version, event, from_state, to_state,"
            " actor, detail::text AS detail FROM tv_key_events"
            " WHERE $1::text IS NULL OR template = $1 ORDER BY id DESC LIMIT $2",
            template,
            limit,
        )
        return [
            KeyEvent(
                id=row["id"],
                occurred_at=row["occurred_at"],
                template=row["template"],
                purpose=Purpose(row["purpose"]),
                version=row["version"],
                event=row["event"],
                from_state=row["from_state"],
                to_state=row["to_state"],
                actor=row["actor"],
                detail=json.loads(row["detail"]),
            )
            for row in rows
        ]

    # -- rotation and state changes

    async def rotate(
        self, template: str, purpose: Purpose, *, actor: str, max_version: int | None = None
    ) -> KeyVersionInfo:
        """Create a new active version, wrapped by the current KEK, and demote the old one.

        The old active version becomes decrypt_only in the same transaction. Concurrent
        rotations of the same template and purpose run one after the other and create
        consecutive versions. Raises DataKeyNotFound when the template has no version yet,
        because ``DataKeyManager.ensure`` creates version 1. With ``max_version``, raises
        KeyStateError instead of creating a version above it (checked under the lock, so
        concurrent rotations cannot pass it together).
        """
        _check_actor(actor)
        label = _label(template, purpose)
        async with self._pool.acquire() as connection, connection.transaction():
            locked = await connection.fetch(
                "SELECT version FROM tv_data_keys WHERE template = $1 AND purpose = $2"
                " ORDER BY version FOR UPDATE",
                template,
                purpose.value,
            )
            if not locked:
                raise DataKeyNotFound(
                    f"data key {label} has no version to rotate; "
                    "DataKeyManager.ensure creates version 1 of a new template"
                )
            # Read again in a new statement. Under READ COMMITTED the locking query kept its
            # snapshot from before it waited, so it missed any version a concurrent rotation added.
            rows = await connection.fetch(
                "SELECT version, state FROM tv_data_keys WHERE template = $1 AND purpose = $2",
                template,
                purpose.value,
            )
            new_version = max(row["version"] for row in rows) + 1
            if max_version is not None and new_version > max_version:
                raise KeyStateError(
                    f"data key {label} cannot get version {new_version}: its tokens can carry"
                    f" versions 1 to {max_version} only"
                )
            old_active = [row["version"] for row in rows if row["state"] == "active"]

            material = secrets.token_bytes(KEY_SIZE)
            wrapped_key, kek = await asyncio.to_thread(
                self._provider.wrap,
                material,
                associated_data=associated_data(template, purpose, new_version),
            )

            # The old version leaves active first, because a unique index allows one active version.
            for version in old_active:
                check_transition(
                    _label(template, purpose, version),
                    KeyState.ACTIVE,
                    KeyState.DECRYPT_ONLY,
                    "rotate",
                )
                await connection.execute(
                    "UPDATE tv_data_keys SET state = 'decrypt_only', updated_at = now()"
                    " WHERE template = $1 AND purpose = $2 AND version = $3",
                    template,
                    purpose.value,
                    version,
                )
                await _record_event(
                    connection,
                    template,
                    purpose,
                    version,
                    "state_changed",
                    from_state=KeyState.ACTIVE,
                    to_state=KeyState.DECRYPT_ONLY,
                    actor=actor,
                    detail={"command": "rotate", "new_active_version": new_version},
                )
            await connection.execute(
                "INSERT INTO tv_data_keys"
                " (template, purpose, version, state, kek_provider, kek_key_id, kek_version,"
                " wrapped_key)"
                " VALUES ($1, $2, $3, 'active', $4, $5, $6, $7)",
                template,
                purpose.value,
                new_version,
                kek.provider,
                kek.key_id,
                kek.version,
                wrapped_key,
            )
            await _record_event(
                connection,
                template,
                purpose,
                new_version,
                "created",
                from_state=None,
                to_state=KeyState.ACTIVE,
                actor=actor,
                detail={"command": "rotate", "kek": str(kek)},
            )
            info = await self._fetch_version(connection, template, purpose, new_version)

        self._keys.clear_cache(template)
        logger.info(
            "rotated data key %s to version %d (wrapped by KEK %s, previous active %s) by %s",
            label,
            new_version,
            kek,
            ", ".join(f"v{version}" for version in old_active) or "none",
            actor,
        )
        return info

    async def set_state(
        self,
        template: str,
        purpose: Purpose,
        version: int,
        state: KeyState,
        *,
        actor: str,
    ) -> KeyVersionInfo:
        """Retire a decrypt_only version, or reinstate a retired one to decrypt_only.

        Raises KeyStateError for any other change, naming the command that makes it.
        """
        _check_actor(actor)
        label = _label(template, purpose, version)
        async with self._pool.acquire() as connection, connection.transaction():
            current = await self._lock_version(connection, template, purpose, version)
            check_transition(label, current, state, "set_state")
            await connection.execute(
                "UPDATE tv_data_keys SET state = $4, updated_at = now()"
                " WHERE template = $1 AND purpose = $2 AND version = $3",
                template,
                purpose.value,
                version,
                state.value,
            )
            info = await self._fetch_version(connection, template, purpose, version)
            await _record_event(
                connection,
                template,
                purpose,
                version,
                "state_changed",
                from_state=current,
                to_state=state,
                actor=actor,
                detail={"command": "set_state", "rows": info.rows},
            )

        self._keys.clear_cache(template)
        if state is KeyState.RETIRED and info.rows:
            logger.warning(
                "retired data key %s by %s; the %d token rows it protects cannot be "
                "detokenized until it is reinstated",
                label,
                actor,
                info.rows,
            )
        else:
            logger.info(
                "data key %s changed from %s to %s by %s", label, current.value, state.value, actor
            )
        return info

    # -- dual-control destruction

    async def propose_destroy(
        self,
        template: str,
        purpose: Purpose,
        version: int,
        *,
        actor: str,
        force: bool = False,
    ) -> DestroyRequest:
        """Propose destroying a decrypt_only or retired version; another identity must approve.

        Raises KeyStateError for an active or destroyed version, and DualControlError when the
        version already has a pending request. Without ``force``, raises KeyInUse when the
        version still protects token rows, and for every ``fpe`` version, whose vaultless
        tokens cannot be counted.
        """
        _check_actor(actor)
        label = _label(template, purpose, version)
        async with self._pool.acquire() as connection, connection.transaction():
            current = await self._lock_version(connection, template, purpose, version)
            check_transition(label, current, KeyState.DESTROYED, "approve_destroy")
            pending = await connection.fetchrow(
                "SELECT id, proposed_by FROM tv_destroy_requests"
                " WHERE template = $1 AND purpose = $2 AND version = $3 AND status = 'pending'",
                template,
                purpose.value,
                version,
            )
            if pending is not None:
                raise DualControlError(
                    f"data key {label} already has pending destroy request {pending['id']}, "
                    f"proposed by {pending['proposed_by']}; approve or cancel that one"
                )
            rows = await self._count_rows(connection, template, purpose, version)
            if not force:
                self._check_unused(label, purpose, version, rows)

            request = _destroy_request(
                await connection.fetchrow(
                    "INSERT INTO tv_destroy_requests"
                    " (template, purpose, version, force, proposed_by)"
                    " VALUES ($1, $2, $3, $4, $5) RETURNING *",
                    template,
                    purpose.value,
                    version,
                    force,
                    actor,
                )
            )
            await _record_event(
                connection,
                template,
                purpose,
                version,
                "destroy_proposed",
                from_state=current,
                to_state=current,
                actor=actor,
                detail={"request_id": request.id, "force": force, "rows": rows},
            )

        logger.warning(
            "destroy request %d for data key %s proposed by %s (force %s, rows %s); "
            "it needs approval by another identity",
            request.id,
            label,
            actor,
            force,
            "unknown" if rows is None else rows,
        )
        return request

    async def approve_destroy(self, request_id: int, *, actor: str) -> DestroyRequest:
        """Approve a pending destroy request: erase the wrapped key and mark the version destroyed.

        The approver must differ from the proposer, otherwise DualControlError; so does a
        missing or no longer pending request. Unless the proposal had ``force``, the row count
        is checked again, because rows may have appeared since, and KeyInUse is raised if there
        are any.

        NOTE: setting ``wrapped_key`` to NULL does not erase older copies in PostgreSQL (dead
        row versions until VACUUM, WAL, backups). Such a copy is useless only to someone who lacks
        the KEK version that wrapped it, so destroy old KEK versions once everything is rewrapped.
        """
        _check_actor(actor)
        async with self._pool.acquire() as connection, connection.transaction():
            # Lock the key row before the request row, in the same order as propose_destroy.
            request = await self._fetch_request(connection, request_id, lock=False)
            label = _label(request.template, request.purpose, request.version)
            current = await self._lock_version(
                connection, request.template, request.purpose, request.version
            )
            request = await self._fetch_request(connection, request_id, lock=True)
            if request.status != "pending":
                raise DualControlError(
                    f"destroy request {request_id} for data key {label} is {request.status}, "
                    "not pending; propose_destroy creates a new request"
                )
            if request.proposed_by == actor:
                raise DualControlError(
                    f"destroy request {request_id} for data key {label} was proposed by "
                    f"{actor}, who cannot approve it too; another identity must approve it"
                )
            check_transition(label, current, KeyState.DESTROYED, "approve_destroy")
            rows = await self._count_rows(
                connection, request.template, request.purpose, request.version
            )
            if not request.force:
                self._check_unused(label, request.purpose, request.version, rows, request_id)

            await connection.execute(
                "UPDATE tv_data_keys SET state = 'destroyed', wrapped_key = NULL,"
                " updated_at = now() WHERE template = $1 AND purpose = $2 AND version = $3",
                request.template,
                request.purpose.value,
                request.version,
            )
            approved = _destroy_request(
                await connection.fetchrow(
                    "UPDATE tv_destroy_requests SET status = 'approved', approved_by = $2,"
                    " approved_at = now() WHERE id = $1 RETURNING *",
                    request_id,
                    actor,
                )
            )
            await _record_event(
                connection,
                request.template,
                request.purpose,
                request.version,
                "destroy_approved",
                from_state=current,
                to_state=KeyState.DESTROYED,
                actor=actor,
                detail={
                    "request_id": request_id,
                    "proposed_by": request.proposed_by,
                    "force": request.force,
                    "rows": rows,
                },
            )

        self._keys.clear_cache(request.template)
        logger.warning(
            "destroyed data key %s: request %d proposed by %s, approved by %s (force %s, rows %s)",
            label,
            request_id,
            request.proposed_by,
            actor,
            request.force,
            "unknown" if rows is None else rows,
        )
        return approved

    async def cancel_destroy(self, request_id: int, *, actor: str) -> DestroyRequest:
        """Cancel a pending destroy request. Any identity may cancel, the proposer included."""
        _check_actor(actor)
        async with self._pool.acquire() as connection, connection.transaction():
            request = await self._fetch_request(connection, request_id, lock=True)
            label = _label(request.template, request.purpose, request.version)
            if request.status != "pending":
                raise DualControlError(
                    f"destroy request {request_id} for data key {label} is {request.status}, "
                    "not pending, so it cannot be cancelled"
                )
            cancelled = _destroy_request(
                await connection.fetchrow(
                    "UPDATE tv_destroy_requests SET status = 'cancelled' WHERE id = $1 RETURNING *",
                    request_id,
                )
            )
            state = KeyState(
                await connection.fetchval(
                    "SELECT state FROM tv_data_keys"
                    " WHERE template = $1 AND purpose = $2 AND version = $3",
                    request.template,
                    request.purpose.value,
                    request.version,
                )
            )
            await _record_event(
                connection,
                request.template,
                request.purpose,
                request.version,
                "destroy_cancelled",
                from_state=state,
                to_state=state,
                actor=actor,
                detail={"request_id": request_id, "proposed_by": request.proposed_by},
            )

        logger.info(
            "destroy request %d for data key %s (proposed by %s) cancelled by %s",
            request_id,
            label,
            request.proposed_by,
            actor,
        )
        return cancelled

    # -- KEK rotation

    async def rotate_kek(self, *, actor: str) -> tuple[KekRef, int]:
        """Create a new KEK version in the provider, then rewrap every data key under it.

        Returns the new KEK version and the number of data keys rewrapped. When the rewrap
        fails halfway, ``rewrap_data_keys`` finishes it.
        """
        _check_actor(actor)
        kek = await asyncio.to_thread(self._provider.rotate)
        logger.info("rotated KEK to %s by %s; rewrapping data keys", kek, actor)
        rewrapped = await self.rewrap_data_keys(actor=actor)
        return kek, rewrapped

    async def rewrap_data_keys(self, *, actor: str, batch_size: int = 100) -> int:
        """Rewrap every data key that is not destroyed and not yet under the current KEK.

        Each batch of ``batch_size`` keys is unwrapped and rewrapped first, then written in
        one transaction that skips keys changed meanwhile. Running it again after a failure
        finishes the work, because keys already under the current KEK are not selected.
        Returns the number of keys rewrapped by this call.
        """
        _check_actor(actor)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        target = await asyncio.to_thread(self._provider.describe)

        rewrapped = 0
        after: tuple[str, str, int] | None = None
        while True:
            rows = await self._pool.fetch(
                "SELECT template, purpose, version, state, kek_provider, kek_key_id,"
                " kek_version, wrapped_key FROM tv_data_keys"
                " WHERE wrapped_key IS NOT NULL AND state <> 'destroyed'"
                " AND (kek_provider, kek_key_id, kek_version) <> ($1, $2, $3)"
                " AND ($4::text IS NULL OR (template, purpose, version) > ($4, $5::text, $6::int))"
                " ORDER BY template, purpose, version LIMIT $7",
                target.provider,
                target.key_id,
                target.version,
                *(after if after is not None else (None, None, None)),
                batch_size,
            )
            if not rows:
                break
            after = (rows[-1]["template"], rows[-1]["purpose"], rows[-1]["version"])
            rewrapped += await self._rewrap_batch(rows, actor)

        logger.info("rewrapped %d data keys under KEK %s by %s", rewrapped, target, actor)
        return rewrapped

    # -- helpers

    async def _rewrap_batch(self, rows: Sequence[asyncpg.Record], actor: str) -> int:
        # Provider I/O first, with no transaction open, so a slow or failing provider holds no
        # row locks and leaves this batch unwritten.
        rewraps: list[tuple[asyncpg.Record, KekRef, bytes, KekRef]] = []
        for row in rows:
            purpose = Purpose(row["purpose"])
            label = _label(row["template"], purpose, row["version"])
            if not self._provider.can_unwrap(row["kek_provider"]):
                raise KekNotFound(
                    f"data key {label} is wrapped by KEK provider {row['kek_provider']}, but "
                    f"the configured provider is {self._provider.name}; configure the old "
                    "provider as [kek.previous] to rewrap across providers"
                )
            old_kek = KekRef(row["kek_provider"], row["kek_key_id"], row["kek_version"])
            data = associated_data(row["template"], purpose, row["version"])
            material = await asyncio.to_thread(
                self._provider.unwrap, bytes(row["wrapped_key"]), old_kek, associated_data=data
            )
            wrapped_key, new_kek = await asyncio.to_thread(
                self._provider.wrap, material, associated_data=data
            )
            # The UPDATE below overwrites the only stored copy, so prove the new one opens first.
            check = await asyncio.to_thread(
                self._provider.unwrap, wrapped_key, new_kek, associated_data=data
            )
            if not hmac.compare_digest(check, material):
                raise KeyProviderError(
                    f"rewrapping data key {label} under KEK {new_kek} did not round-trip; "
                    "the key was left wrapped by " + str(old_kek)
                )
            rewraps.append((row, old_kek, wrapped_key, new_kek))

        done = 0
        async with self._pool.acquire() as connection, connection.transaction():
            for row, old_kek, wrapped_key, new_kek in rewraps:
                purpose = Purpose(row["purpose"])
                status = await connection.execute(
                    "UPDATE tv_data_keys SET kek_provider = $4, kek_key_id = $5,"
                    " kek_version = $6, wrapped_key = $7, updated_at = now()"
                    " WHERE template = $1 AND purpose = $2 AND version = $3"
                    " AND state <> 'destroyed' AND wrapped_key = $8"
                    " AND (kek_provider, kek_key_id, kek_version) = ($9, $10, $11)",
                    row["template"],
                    purpose.value,
                    row["version"],
                    new_kek.provider,
                    new_kek.key_id,
                    new_kek.version,
                    wrapped_key,
                    row["wrapped_key"],
                    old_kek.provider,
                    old_kek.key_id,
                    old_kek.version,
                )
                if status != "UPDATE 1":
                    logger.info(
                        "skipped rewrapping data key %s: it changed during the rewrap",
                        _label(row["template"], purpose, row["version"]),
                    )
                    continue
                state = KeyState(row["state"])
                await _record_event(
                    connection,
                    row["template"],
                    purpose,
                    row["version"],
                    "rewrapped",
                    from_state=state,
                    to_state=state,
                    actor=actor,
                    detail={"from_kek": str(old_kek), "to_kek": str(new_kek)},
                )
                done += 1
        return done

    async def _lock_version(
        self, connection: asyncpg.Connection, template: str, purpose: Purpose, version: int
    ) -> KeyState:
        state = await connection.fetchval(
            "SELECT state FROM tv_data_keys"
            " WHERE template = $1 AND purpose = $2 AND version = $3 FOR UPDATE",
            template,
            purpose.value,
            version,
        )
        if state is None:
            raise DataKeyNotFound(f"data key {_label(template, purpose, version)} does not exist")
        return KeyState(state)

    async def _fetch_version(
        self, connection: asyncpg.Connection, template: str, purpose: Purpose, version: int
    ) -> KeyVersionInfo:
        row = await connection.fetchrow(_SELECT_VERSIONS, template, purpose.value, version)
        return _version_info(row)

    async def _fetch_request(
        self, connection: asyncpg.Connection, request_id: int, *, lock: bool
    ) -> DestroyRequest:
        if lock:
            row = await connection.fetchrow(
                "SELECT * FROM tv_destroy_requests WHERE id = $1 FOR UPDATE", request_id
            )
        else:
            row = await connection.fetchrow(
                "SELECT * FROM tv_destroy_requests WHERE id = $1", request_id
            )
        if row is None:
            raise DestroyRequestNotFound(f"destroy request {request_id} does not exist")
        return _destroy_request(row)

    async def _count_rows(
        self, connection: asyncpg.Connection, template: str, purpose: Purpose, version: int
    ) -> int | None:
        if purpose is Purpose.AEAD:
            query = "SELECT count(*) FROM tv_tokens WHERE template = $1 AND key_version = $2"
        elif purpose is Purpose.INDEX:
            query = "SELECT count(*) FROM tv_tokens WHERE template = $1 AND index_key_version = $2"
        else:
            return None
        count: int = await connection.fetchval(query, template, version)
        return count

    @staticmethod
    def _check_unused(
        label: str,
        purpose: Purpose,
        version: int,
        rows: int | None,
        request_id: int | None = None,
    ) -> None:
        """Raise KeyInUse if destroying the version without force would lose tokens."""
        if rows is None:
            raise KeyInUse(
                f"data key {label} is an FF1 key for vaultless tokens, which are not stored and "
                f"so cannot be counted; every vaultless token issued under version {version} "
                "becomes unrecoverable once it is destroyed. Propose again with --force "
                "(force=true) if that is intended; a second custodian must still approve"
            )
        if rows == 0:
            return
        if request_id is None:
            raise KeyInUse(
                f"data key {label} still protects {_rows(rows)}; re-encrypt them "
                "to the active version first, or propose with --force, which makes them "
                "unrecoverable once a second custodian approves"
            )
        raise KeyInUse(
            f"data key {label} now protects {_rows(rows)}, which appeared after "
            f"destroy request {request_id} was proposed without force; cancel it and propose "
            "again with force if these rows may become unrecoverable (a second custodian must "
            "approve)"
        )


def _rows(count: int) -> str:
    return "1 vaulted token row" if count == 1 else f"{count} vaulted token rows"

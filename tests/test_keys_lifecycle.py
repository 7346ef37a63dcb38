"""KeyLifecycle and KeyChangeListener against a real PostgreSQL database and local KEK files."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from keys.datakeys import DataKeyManager, Purpose
from keys.errors import (
    DataKeyNotFound,
    DestroyRequestNotFound,
    DualControlError,
    KekUnavailable,
    KeyDestroyed,
    KeyInUse,
    KeyRetired,
    KeyStateError,
)
from keys.lifecycle import (
    TRANSITIONS,
    KeyLifecycle,
    KeyState,
    check_transition,
)
from keys.listener import KeyChangeListener
from keys.local import LocalKekProvider
from keys.provider import KekRef

ALICE = "CN=alice,OU=key-custodians"
BOB = "CN=bob,OU=key-custodians"
DEADLINE_SECONDS = 5.0


class FailingWrapProvider(LocalKekProvider):
    """Wraps normally ``fail_after`` times, then raises KekUnavailable like a lost server."""

    fail_after = 0
    _count_lock = threading.Lock()

    def wrap(self, key: bytes, *, associated_data: bytes) -> tuple[bytes, KekRef]:
        with self._count_lock:
            if self.fail_after <= 0:
                raise KekUnavailable(self.name, "connection refused")
            self.fail_after -= 1
        return super().wrap(key, associated_data=associated_data)


class SlowWrapProvider(LocalKekProvider):
    """Holds each wrap long enough for a concurrent rotation to reach the row lock."""

    def wrap(self, key: bytes, *, associated_data: bytes) -> tuple[bytes, KekRef]:
        time.sleep(0.2)
        return super().wrap(key, associated_data=associated_data)


class UnreachableProvider(LocalKekProvider):
    """Every wrap, unwrap and rotate fails as if the provider's server were down."""

    def wrap(self, key: bytes, *, associated_data: bytes) -> tuple[bytes, KekRef]:
        raise KekUnavailable(self.name, "connection refused")

    def unwrap(self, wrapped_key: bytes, kek: KekRef, *, associated_data: bytes) -> bytes:
        raise KekUnavailable(self.name, "connection refused")

    def rotate(self) -> KekRef:
        raise KekUnavailable(self.name, "connection refused")


@pytest.fixture
def kek_path(tmp_path: Path) -> Path:
    return tmp_path / "kek.json"


@pytest.fixture
def provider(kek_path: Path) -> LocalKekProvider:
    return LocalKekProvider.create(kek_path)


@pytest_asyncio.fixture(loop_scope="session")
async def manager(db_pool: asyncpg.Pool, provider: LocalKekProvider) -> DataKeyManager:
    keys = DataKeyManager(db_pool, provider)
    await keys.ensure(["cards", "iban"])
    return keys


@pytest.fixture
def lifecycle(
    db_pool: asyncpg.Pool, provider: LocalKekProvider, manager: DataKeyManager
) -> KeyLifecycle:
    return KeyLifecycle(db_pool, provider, manager)


async def _states(pool: asyncpg.Pool, template: str, purpose: Purpose) -> dict[int, str]:
    rows = await pool.fetch(
        "SELECT version, state FROM tv_data_keys WHERE template = $1 AND purpose = $2",
        template,
        purpose.value,
    )
    return {row["version"]: row["state"] for row in rows}


async def _insert_token(
    pool: asyncpg.Pool,
    token: str,
    *,
    key_version: int,
    index_key_version: int | None = None,
) -> None:
    await pool.execute(
        "INSERT INTO tv_tokens (template, token, ciphertext, key_version, value_index,"
        " index_key_version) VALUES ('cards', $1, '\\x00', $2, $3, $4)",
        token,
        key_version,
        token.encode() if index_key_version is not None else None,
        index_key_version,
    )


async def _eventually(check: Callable[[], Awaitable[bool]], description: str) -> None:
    """Poll ``check`` until it returns True; fail after DEADLINE_SECONDS."""
    try:
        async with asyncio.timeout(DEADLINE_SECONDS):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(
            f"timed out after {DEADLINE_SECONDS} s waiting for {description}"
        ) from None


# -- rotation --------------------------------------------------------------------------------


async def test_rotate_makes_new_active(
    db_pool: asyncpg.Pool, manager: DataKeyManager, lifecycle: KeyLifecycle
) -> None:
    old = await manager.active("cards", Purpose.AEAD)

    info = await lifecycle.rotate("cards", Purpose.AEAD, actor=ALICE)

    assert info.version == 2
    assert info.state is KeyState.ACTIVE
    assert info.rows == 0
    assert await _states(db_pool, "cards", Purpose.AEAD) == {1: "decrypt_only", 2: "active"}
    new = await manager.active("cards", Purpose.AEAD)
    assert new.version == 2
    assert new.material != old.material
    assert (await manager.get("cards", Purpose.AEAD, 1)).material == old.material
    assert (await manager.get("cards", Purpose.AEAD, 2)).material == new.material


async def test_rotate_records_events(lifecycle: KeyLifecycle) -> None:
    await lifecycle.rotate("cards", Purpose.INDEX, actor=ALICE)

    events = await lifecycle.events(template="cards", limit=2)

    created, demoted = events
    assert (created.event, created.version, created.from_state, created.to_state) == (
        "created",
        2,
        None,
        "active",
    )
    assert created.actor == ALICE
    assert created.detail["command"] == "rotate"
    assert (demoted.event, demoted.version, demoted.from_state, demoted.to_state) == (
        "state_changed",
        1,
        "active",
        "decrypt_only",
    )
    assert demoted.actor == ALICE
    assert demoted.detail == {"command": "rotate", "new_active_version": 2}


async def test_ensure_records_created(lifecycle: KeyLifecycle) -> None:
    events = await lifecycle.events(template="iban")

    assert len(events) == len(Purpose)
    assert {event.purpose for event in events} == set(Purpose)
    assert all(event.event == "created" and event.actor == "system" for event in events)


async def test_concurrent_rotations_serialise(
    db_pool: asyncpg.Pool, kek_path: Path, manager: DataKeyManager
) -> None:
    lifecycle = KeyLifecycle(db_pool, SlowWrapProvider.load(kek_path), manager)

    first, second = await asyncio.gather(
        lifecycle.rotate("cards", Purpose.FPE, actor=ALICE),
        lifecycle.rotate("cards", Purpose.FPE, actor=BOB),
    )

    assert {first.version, second.version} == {2, 3}
    assert await _states(db_pool, "cards", Purpose.FPE) == {
        1: "decrypt_only",
        2: "decrypt_only",
        3: "active",
    }


async def test_rotate_unknown_template(lifecycle: KeyLifecycle) -> None:
    with pytest.raises(DataKeyNotFound, match="names/fpe has no version to rotate"):
        await lifecycle.rotate("names", Purpose.FPE, actor=ALICE)


async def test_rotate_needs_actor(lifecycle: KeyLifecycle) -> None:
    with pytest.raises(ValueError, match="actor is empty"):
        await lifecycle.rotate("cards", Purpose.FPE, actor=" ")


async def test_rotate_provider_unavailable(
    db_pool: asyncpg.Pool, kek_path: Path, manager: DataKeyManager, lifecycle: KeyLifecycle
) -> None:
    before = await lifecycle.list_versions()
    events_before = await lifecycle.events(limit=1000)
    broken = KeyLifecycle(db_pool, UnreachableProvider.load(kek_path), manager)

    with pytest.raises(KekUnavailable):
        await broken.rotate("cards", Purpose.AEAD, actor=ALICE)
    with pytest.raises(KekUnavailable):
        await broken.rotate_kek(actor=ALICE)

    assert await lifecycle.list_versions() == before
    assert await lifecycle.events(limit=1000) == events_before
    assert (await manager.active("cards", Purpose.AEAD)).version == 1


async def test_other_process_rotation_after_clear(
    db_pool: asyncpg.Pool, kek_path: Path, manager: DataKeyManager, lifecycle: KeyLifecycle
) -> None:
    replica = DataKeyManager(db_pool, LocalKekProvider.load(kek_path))
    assert (await replica.active("cards", Purpose.AEAD)).version == 1
    iban_key = await replica.active("iban", Purpose.AEAD)

    await lifecycle.rotate("cards", Purpose.AEAD, actor=ALICE)

    assert (await replica.active("cards", Purpose.AEAD)).version == 1
    replica.clear_cache("cards")
    assert (await replica.active("cards", Purpose.AEAD)).version == 2
    assert await replica.active("iban", Purpose.AEAD) is iban_key


# -- usable ----------------------------------------------------------------------------------


async def test_usable_lists_newest_first(manager: DataKeyManager, lifecycle: KeyLifecycle) -> None:
    await lifecycle.rotate("cards", Purpose.INDEX, actor=ALICE)
    await lifecycle.rotate("cards", Purpose.INDEX, actor=ALICE)

    usable = await manager.usable("cards", Purpose.INDEX)
    assert [key.version for key in usable] == [3, 2, 1]
    assert [key.state for key in usable] == ["active", "decrypt_only", "decrypt_only"]

    await lifecycle.set_state("cards", Purpose.INDEX, 1, KeyState.RETIRED, actor=ALICE)
    assert [key.version for key in await manager.usable("cards", Purpose.INDEX)] == [3, 2]


async def test_usable_is_cached(db_pool: asyncpg.Pool, manager: DataKeyManager) -> None:
    first = await manager.usable("cards", Purpose.INDEX)
    await db_pool.execute("DELETE FROM tv_data_keys WHERE template = 'cards'")

    second = await manager.usable("cards", Purpose.INDEX)

    assert [key.version for key in second] == [1]
    assert second[0] is first[0]
    manager.clear_cache("cards")
    assert await manager.usable("cards", Purpose.INDEX) == []


# -- set_state -------------------------------------------------------------------------------


async def test_retire_and_reinstate(
    db_pool: asyncpg.Pool, manager: DataKeyManager, lifecycle: KeyLifecycle
) -> None:
    await lifecycle.rotate("cards", Purpose.AEAD, actor=ALICE)
    material = (await manager.get("cards", Purpose.AEAD, 1)).material

    retired = await lifecycle.set_state("cards", Purpose.AEAD, 1, KeyState.RETIRED, actor=ALICE)

    assert retired.state is KeyState.RETIRED
    with pytest.raises(KeyRetired, match="cards/aead v1 is retired"):
        await manager.get("cards", Purpose.AEAD, 1)
    wrapped = await db_pool.fetchval(
        "SELECT wrapped_key FROM tv_data_keys"
        " WHERE template = 'cards' AND purpose = 'aead' AND version = 1"
    )
    assert wrapped is not None

    reinstated = await lifecycle.set_state(
        "cards", Purpose.AEAD, 1, KeyState.DECRYPT_ONLY, actor=BOB
    )

    assert reinstated.state is KeyState.DECRYPT_ONLY
    assert (await manager.get("cards", Purpose.AEAD, 1)).material == material
    latest = await lifecycle.events(template="cards", limit=2)
    assert [(e.from_state, e.to_state, e.actor) for e in latest] == [
        ("retired", "decrypt_only", BOB),
        ("decrypt_only", "retired", ALICE),
    ]


async def test_set_state_forbidden(db_pool: asyncpg.Pool, lifecycle: KeyLifecycle) -> None:
    await lifecycle.rotate("cards", Purpose.AEAD, actor=ALICE)
    cases = [
        (2, KeyState.RETIRED, "active version must first become decrypt_only through rotate"),
        (2, KeyState.DECRYPT_ONLY, "leaves active only through rotate"),
        (1, KeyState.ACTIVE, "never returns to active"),
        (1, KeyState.DESTROYED, "destruction needs dual control"),
        (1, KeyState.DECRYPT_ONLY, "it is already decrypt_only"),
    ]

    for version, target, message in cases:
        with pytest.raises(KeyStateError, match=message):
            await lifecycle.set_state("cards", Purpose.AEAD, version, target, actor=ALICE)

    assert await _states(db_pool, "cards", Purpose.AEAD) == {1: "decrypt_only", 2: "active"}
    (event,) = await lifecycle.events(template="cards", limit=1)
    assert event.event == "created"


async def test_destroyed_is_final(lifecycle: KeyLifecycle) -> None:
    await lifecycle.rotate("cards", Purpose.AEAD, actor=ALICE)
    request = await lifecycle.propose_destroy("cards", Purpose.AEAD, 1, actor=ALICE)
    await lifecycle.approve_destroy(request.id, actor=BOB)

    for target in (KeyState.DECRYPT_ONLY, KeyState.RETIRED):
        with pytest.raises(KeyStateError, match="from destroyed to .*destroyed is final"):
            await lifecycle.set_state("cards", Purpose.AEAD, 1, target, actor=ALICE)
    with pytest.raises(KeyStateError, match="it is already destroyed"):
        await lifecycle.propose_destroy("cards", Purpose.AEAD, 1, actor=ALICE, force=True)


async def test_set_state_unknown_version(lifecycle: KeyLifecycle) -> None:
    with pytest.raises(DataKeyNotFound, match="cards/aead v7 does not exist"):
        await lifecycle.set_state("cards", Purpose.AEAD, 7, KeyState.RETIRED, actor=ALICE)


def test_transition_table() -> None:
    allowed = {
        (current, target)
        for current in KeyState
        for target in KeyState
        for command in ("rotate", "set_state", "approve_destroy")
        if _allows(current, target, command)
    }

    assert allowed == set(TRANSITIONS)
    assert allowed == {
        (KeyState.ACTIVE, KeyState.DECRYPT_ONLY),
        (KeyState.DECRYPT_ONLY, KeyState.RETIRED),
        (KeyState.RETIRED, KeyState.DECRYPT_ONLY),
        (KeyState.DECRYPT_ONLY, KeyState.DESTROYED),
        (KeyState.RETIRED, KeyState.DESTROYED),
    }


def _allows(current: KeyState, target: KeyState, command: str) -> bool:
    try:
        check_transition("cards/aead v1", current, target, command)
    except KeyStateError as error:
        assert f"from {current.value} to {target.value}" in str(error)
        return False
    return True


# -- destruction -----------------------------------------------------------------------------


async def test_approve_own_proposal(db_pool: asyncpg.Pool, lifecycle: KeyLifecycle) -> None:
    await lifecycle.rotate("cards", Purpose.AEAD, actor=ALICE)
    request = await lifecycle.propose_destroy("cards", Purpose.AEAD, 1, actor=ALICE)

    with pytest.raises(DualControlError, match="proposed by CN=alice.*another identity"):
        await lifecycle.approve_destroy(request.id, actor=ALICE)

    assert [r.id for r in await lifecycle.destroy_requests()] == [request.id]
    assert await _states(db_pool, "cards", Purpose.AEAD) == {1: "decrypt_only", 2: "active"}


async def test_destroy_with_second_custodian(
    db_pool: asyncpg.Pool, kek_path: Path, manager: DataKeyManager, lifecycle: KeyLifecycle
) -> None:
    await lifecycle.rotate("cards", Purpose.AEAD, actor=ALICE)
    await manager.get("cards", Purpose.AEAD, 1)
    request = await lifecycle.propose_destroy("cards", Purpose.AEAD, 1, actor=ALICE)
    assert (request.status, request.proposed_by, request.force) == ("pending", ALICE, False)

    approved = await lifecycle.approve_destroy(request.id, actor=BOB)

    assert (approved.status, approved.approved_by) == ("approved", BOB)
    assert approved.approved_at is not None
    row = await db_pool.fetchrow(
        "SELECT state, wrapped_key FROM tv_data_keys"
        " WHERE template = 'cards' AND purpose = 'aead' AND version = 1"
    )
    assert row["state"] == "destroyed"
    assert row["wrapped_key"] is None
    with pytest.raises(KeyDestroyed, match="cards/aead v1 was destroyed"):
        await manager.get("cards", Purpose.AEAD, 1)
    with pytest.raises(KeyDestroyed):
        await DataKeyManager(db_pool, LocalKekProvider.load(kek_path)).get("cards", Purpose.AEAD, 1)
    assert await lifecycle.destroy_requests() == []
    latest = await lifecycle.events(template="cards", limit=2)
    assert [(e.event, e.actor, e.from_state, e.to_state) for e in latest] == [
        ("destroy_approved", BOB, "decrypt_only", "destroyed"),
        ("destroy_proposed", ALICE, "decrypt_only", "decrypt_only"),
    ]
    assert latest[0].detail == {
        "request_id": request.id,
        "proposed_by": ALICE,
        "force": False,
        "rows": 0,
    }


async def test_destroy_retired_version(db_pool: asyncpg.Pool, lifecycle: KeyLifecycle) -> None:
    await lifecycle.rotate("cards", Purpose.INDEX, actor=ALICE)
    await lifecycle.set_state("cards", Purpose.INDEX, 1, KeyState.RETIRED, actor=ALICE)
    request = await lifecycle.propose_destroy("cards", Purpose.INDEX, 1, actor=BOB)

    await lifecycle.approve_destroy(request.id, actor=ALICE)

    assert await _states(db_pool, "cards", Purpose.INDEX) == {1: "destroyed", 2: "active"}


async def test_propose_active_rejected(lifecycle: KeyLifecycle) -> None:
    with pytest.raises(KeyStateError, match="from active to destroyed"):
        await lifecycle.propose_destroy("cards", Purpose.AEAD, 1, actor=ALICE, force=True)

    assert await lifecycle.destroy_requests(pending_only=False) == []


async def test_propose_with_rows_needs_force(
    db_pool: asyncpg.Pool, lifecycle: KeyLifecycle
) -> None:
    await _insert_token(db_pool, "4111", key_version=1)
    await lifecycle.rotate("cards", Purpose.AEAD, actor=ALICE)

    with pytest.raises(KeyInUse, match=r"protects 1 vaulted token row;.*--force.*second custodian"):
        await lifecycle.propose_destroy("cards", Purpose.AEAD, 1, actor=ALICE)
    request = await lifecycle.propose_destroy("cards", Purpose.AEAD, 1, actor=ALICE, force=True)
    approved = await lifecycle.approve_destroy(request.id, actor=BOB)

    assert approved.force is True
    versions = {
        v.version: v for v in await lifecycle.list_versions("cards") if v.purpose.value == "aead"
    }
    assert versions[1].state is KeyState.DESTROYED
    assert versions[1].rows == 1


async def test_rows_appear_after_proposal(db_pool: asyncpg.Pool, lifecycle: KeyLifecycle) -> None:
    await lifecycle.rotate("cards", Purpose.AEAD, actor=ALICE)
    request = await lifecycle.propose_destroy("cards", Purpose.AEAD, 1, actor=ALICE)
    await _insert_token(db_pool, "4111", key_version=1)

    with pytest.raises(KeyInUse, match="now protects 1 vaulted token row,"):
        await lifecycle.approve_destroy(request.id, actor=BOB)

    assert [r.status for r in await lifecycle.destroy_requests()] == ["pending"]
    assert await _states(db_pool, "cards", Purpose.AEAD) == {1: "decrypt_only", 2: "active"}


async def test_rows_counted_per_purpose(db_pool: asyncpg.Pool, lifecycle: KeyLifecycle) -> None:
    await _insert_token(db_pool, "4111", key_version=1, index_key_version=1)
    await _insert_token(db_pool, "4222", key_version=1)

    rows = {v.purpose: v.rows for v in await lifecycle.list_versions("cards")}

    assert rows == {Purpose.AEAD: 2, Purpose.INDEX: 1, Purpose.FPE: None}


async def test_fpe_needs_force(db_pool: asyncpg.Pool, lifecycle: KeyLifecycle) -> None:
    await lifecycle.rotate("cards", Purpose.FPE, actor=ALICE)

    with pytest.raises(KeyInUse, match="every vaultless token issued under version 1"):
        await lifecycle.propose_destroy("cards", Purpose.FPE, 1, actor=ALICE)
    request = await lifecycle.propose_destroy("cards", Purpose.FPE, 1, actor=ALICE, force=True)
    await lifecycle.approve_destroy(request.id, actor=BOB)

    assert await _states(db_pool, "cards", Purpose.FPE) == {1: "destroyed", 2: "active"}


async def test_one_pending_per_version(lifecycle: KeyLifecycle) -> None:
    await lifecycle.rotate("cards", Purpose.AEAD, actor=ALICE)
    first = await lifecycle.propose_destroy("cards", Purpose.AEAD, 1, actor=ALICE)

    with pytest.raises(DualControlError, match=f"already has pending destroy request {first.id}"):
        await lifecycle.propose_destroy("cards", Purpose.AEAD, 1, actor=BOB)


async def test_cancel_destroy(db_pool: asyncpg.Pool, lifecycle: KeyLifecycle) -> None:
    await lifecycle.rotate("cards", Purpose.AEAD, actor=ALICE)
    request = await lifecycle.propose_destroy("cards", Purpose.AEAD, 1, actor=ALICE)

    cancelled = await lifecycle.cancel_destroy(request.id, actor=ALICE)

    assert cancelled.status == "cancelled"
    assert cancelled.approved_by is None
    assert await lifecycle.destroy_requests() == []
    assert [r.status for r in await lifecycle.destroy_requests(pending_only=False)] == ["cancelled"]
    with pytest.raises(DualControlError, match="is cancelled, not pending"):
        await lifecycle.approve_destroy(request.id, actor=BOB)
    with pytest.raises(DualControlError, match="is cancelled, not pending"):
        await lifecycle.cancel_destroy(request.id, actor=BOB)
    assert await _states(db_pool, "cards", Purpose.AEAD) == {1: "decrypt_only", 2: "active"}
    (event,) = await lifecycle.events(template="cards", limit=1)
    assert (event.event, event.actor) == ("destroy_cancelled", ALICE)

    again = await lifecycle.propose_destroy("cards", Purpose.AEAD, 1, actor=BOB)
    assert again.id != request.id


async def test_unknown_request(lifecycle: KeyLifecycle) -> None:
    with pytest.raises(DestroyRequestNotFound, match="destroy request 999 does not exist"):
        await lifecycle.approve_destroy(999, actor=BOB)
    with pytest.raises(DestroyRequestNotFound, match="destroy request 999 does not exist"):
        await lifecycle.cancel_destroy(999, actor=BOB)


# -- KEK rotation and rewrap -----------------------------------------------------------------


async def _materials(manager: DataKeyManager, lifecycle: KeyLifecycle) -> dict[Any, bytes]:
    """Return the material of every decrypt-capable version, unwrapped by a fresh cache."""
    manager.clear_cache()
    materials = {}
    for info in await lifecycle.list_versions():
        if info.state in (KeyState.ACTIVE, KeyState.DECRYPT_ONLY):
            key = await manager.get(info.template, info.purpose, info.version)
            materials[(info.template, info.purpose, info.version)] = key.material
    return materials


async def test_rotate_kek_rewraps_all(
    db_pool: asyncpg.Pool, manager: DataKeyManager, lifecycle: KeyLifecycle
) -> None:
    await lifecycle.rotate("cards", Purpose.AEAD, actor=ALICE)
    await lifecycle.rotate("cards", Purpose.FPE, actor=ALICE)
    before = await _materials(manager, lifecycle)
    await lifecycle.set_state("cards", Purpose.AEAD, 1, KeyState.RETIRED, actor=ALICE)
    request = await lifecycle.propose_destroy("cards", Purpose.FPE, 1, actor=ALICE, force=True)
    await lifecycle.approve_destroy(request.id, actor=BOB)

    kek, rewrapped = await lifecycle.rotate_kek(actor=ALICE)

    assert kek.version == "2"
    assert rewrapped == 7  # 8 versions, less the destroyed one
    versions = await lifecycle.list_versions()
    assert {v.kek for v in versions if v.state is not KeyState.DESTROYED} == {kek}
    await lifecycle.set_state("cards", Purpose.AEAD, 1, KeyState.DECRYPT_ONLY, actor=ALICE)
    after = await _materials(manager, lifecycle)
    del before[("cards", Purpose.FPE, 1)]
    assert after == before
    events = await lifecycle.events(limit=100)
    assert sum(1 for e in events if e.event == "rewrapped") == 7
    assert await lifecycle.rewrap_data_keys(actor=ALICE) == 0


async def test_rewrap_resumes_after_failure(
    db_pool: asyncpg.Pool, kek_path: Path, manager: DataKeyManager, lifecycle: KeyLifecycle
) -> None:
    before = await _materials(manager, lifecycle)
    kek = LocalKekProvider.load(kek_path).rotate()
    failing = FailingWrapProvider.load(kek_path)
    failing.fail_after = 5

    with pytest.raises(KekUnavailable):
        await KeyLifecycle(db_pool, failing, manager).rewrap_data_keys(actor=ALICE, batch_size=2)

    kek_versions = [
        row["kek_version"] for row in await db_pool.fetch("SELECT kek_version FROM tv_data_keys")
    ]
    assert sorted(kek_versions) == ["1", "1", "2", "2", "2", "2"]  # two batches of 2 committed

    resumed = KeyLifecycle(db_pool, LocalKekProvider.load(kek_path), manager)
    assert await resumed.rewrap_data_keys(actor=BOB, batch_size=2) == 2

    assert {v.kek for v in await resumed.list_versions()} == {kek}
    assert await _materials(manager, resumed) == before


async def test_rewrap_unavailable_changes_nothing(
    db_pool: asyncpg.Pool, kek_path: Path, manager: DataKeyManager
) -> None:
    LocalKekProvider.load(kek_path).rotate()
    before = await db_pool.fetch("SELECT * FROM tv_data_keys ORDER BY template, purpose")

    broken = KeyLifecycle(db_pool, UnreachableProvider.load(kek_path), manager)
    with pytest.raises(KekUnavailable):
        await broken.rewrap_data_keys(actor=ALICE)

    assert await db_pool.fetch("SELECT * FROM tv_data_keys ORDER BY template, purpose") == before


# -- KeyChangeListener -----------------------------------------------------------------------


async def test_listener_updates_replica(
    database_dsn: str, db_pool: asyncpg.Pool, kek_path: Path, lifecycle: KeyLifecycle
) -> None:
    replica = DataKeyManager(db_pool, LocalKekProvider.load(kek_path))
    changes: list[dict[str, Any]] = []
    listener = KeyChangeListener(database_dsn, replica, on_change=changes.append)
    await listener.start()
    try:
        assert (await replica.active("cards", Purpose.AEAD)).version == 1

        await lifecycle.rotate("cards", Purpose.AEAD, actor=ALICE)

        async def replica_sees_v2() -> bool:
            return (await replica.active("cards", Purpose.AEAD)).version == 2

        await _eventually(replica_sees_v2, "the replica to see version 2")
        assert {"template": "cards", "purpose": "aead", "version": 2, "event": "created"} in (
            changes
        )

        # A payload without a template clears every template's keys, here iban's.
        iban_key = await replica.active("iban", Purpose.AEAD)
        await db_pool.execute("SELECT pg_notify('tv_key_changes', 'not json')")

        async def iban_reloaded() -> bool:
            return await replica.active("iban", Purpose.AEAD) is not iban_key

        await _eventually(iban_reloaded, "the malformed notification to clear the cache")
        assert all(isinstance(change.get("template"), str) for change in changes)
    finally:
        await listener.stop()


async def test_listener_survives_termination(
    database_dsn: str, db_pool: asyncpg.Pool, kek_path: Path, lifecycle: KeyLifecycle
) -> None:
    replica = DataKeyManager(db_pool, LocalKekProvider.load(kek_path))
    changes: list[dict[str, Any]] = []
    listener = KeyChangeListener(database_dsn, replica, on_change=changes.append)
    await listener.start()
    try:
        old_pid = listener.backend_pid
        assert old_pid is not None
        assert await db_pool.fetchval("SELECT pg_terminate_backend($1)", old_pid)

        async def reconnected() -> bool:
            return listener.backend_pid not in (None, old_pid)

        await _eventually(reconnected, "the listener to reconnect")
        assert (await replica.active("cards", Purpose.INDEX)).version == 1

        await lifecycle.rotate("cards", Purpose.INDEX, actor=ALICE)

        async def notified() -> bool:
            return any(change["purpose"] == "index" for change in changes)

        await _eventually(notified, "the notification after reconnecting")
        assert (await replica.active("cards", Purpose.INDEX)).version == 2
    finally:
        await listener.stop()
    assert listener.backend_pid is None


async def test_listener_start_twice(database_dsn: str, manager: DataKeyManager) -> None:
    listener = KeyChangeListener(database_dsn, manager)
    await listener.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            await listener.start()
    finally:
        await listener.stop()

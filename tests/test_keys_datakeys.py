"""DataKeyManager against a real PostgreSQL database and a real local KEK file."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import asyncpg
import pytest

from keys.datakeys import DataKey, DataKeyManager, Purpose, associated_data
from keys.errors import (
    DataKeyNotFound,
    KekNotFound,
    KekUnavailable,
    KeyDestroyed,
    UnwrapError,
)
from keys.local import LocalKekProvider
from keys.provider import KekRef

TEMPLATES = ["cards", "iban"]


class CountingProvider(LocalKekProvider):
    """Counts unwrap calls and makes each one slow enough for concurrent callers to overlap."""

    unwrap_calls = 0
    _count_lock = threading.Lock()

    def unwrap(self, wrapped_key: bytes, kek: KekRef, *, associated_data: bytes) -> bytes:
        with self._count_lock:
            self.unwrap_calls += 1
        time.sleep(0.05)
        return super().unwrap(wrapped_key, kek, associated_data=associated_data)


class UnreachableProvider(LocalKekProvider):
    """Simulates a remote provider whose server is unreachable."""

    def unwrap(self, wrapped_key: bytes, kek: KekRef, *, associated_data: bytes) -> bytes:
        raise KekUnavailable(self.name, "connection refused")


@pytest.fixture
def kek_path(tmp_path: Path) -> Path:
    return tmp_path / "kek.json"


@pytest.fixture
def provider(kek_path: Path) -> LocalKekProvider:
    return LocalKekProvider.create(kek_path)


async def _rows(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM tv_data_keys ORDER BY template, purpose, version")


# -- ensure ----------------------------------------------------------------------------------


async def test_ensure_creates_version_1(db_pool: asyncpg.Pool, provider: LocalKekProvider) -> None:
    manager = DataKeyManager(db_pool, provider)

    await manager.ensure(TEMPLATES)

    rows = await _rows(db_pool)
    assert len(rows) == len(TEMPLATES) * len(Purpose)
    for row in rows:
        assert row["version"] == 1
        assert row["state"] == "active"
        assert row["kek_provider"] == "local"
        assert row["kek_key_id"] == provider.describe().key_id
        assert row["kek_version"] == "1"


async def test_ensure_twice_keeps_keys(db_pool: asyncpg.Pool, provider: LocalKekProvider) -> None:
    manager = DataKeyManager(db_pool, provider)
    await manager.ensure(TEMPLATES)
    before = await _rows(db_pool)

    await manager.ensure(TEMPLATES + ["names"])

    after = await _rows(db_pool)
    assert len(after) == (len(TEMPLATES) + 1) * len(Purpose)
    existing_rows = [row for row in after if row["template"] in TEMPLATES]
    assert [row["wrapped_key"] for row in existing_rows] == [row["wrapped_key"] for row in before]


async def test_ensure_concurrent_managers(db_pool: asyncpg.Pool, kek_path: Path) -> None:
    first = DataKeyManager(db_pool, LocalKekProvider.create(kek_path))
    second = DataKeyManager(db_pool, LocalKekProvider.load(kek_path))

    await asyncio.gather(first.ensure(TEMPLATES), second.ensure(TEMPLATES))

    counts = await db_pool.fetch(
        "SELECT template, purpose, count(*) AS versions,"
        " count(*) FILTER (WHERE state = 'active') AS active"
        " FROM tv_data_keys GROUP BY template, purpose"
    )
    assert len(counts) == len(TEMPLATES) * len(Purpose)
    for row in counts:
        assert row["versions"] == 1
        assert row["active"] == 1
    for template in TEMPLATES:
        for purpose in Purpose:
            first_key = await first.active(template, purpose)
            second_key = await second.active(template, purpose)
            assert first_key.material == second_key.material


async def test_ensure_empty_list(db_pool: asyncpg.Pool, provider: LocalKekProvider) -> None:
    await DataKeyManager(db_pool, provider).ensure([])

    assert await _rows(db_pool) == []


# -- stored form -----------------------------------------------------------------------------


async def test_keys_stored_wrapped(db_pool: asyncpg.Pool, provider: LocalKekProvider) -> None:
    manager = DataKeyManager(db_pool, provider)
    await manager.ensure(TEMPLATES)

    for row in await _rows(db_pool):
        key = await manager.get(row["template"], Purpose(row["purpose"]), row["version"])
        wrapped = bytes(row["wrapped_key"])
        assert len(key.material) == 32
        assert wrapped != key.material
        assert key.material not in wrapped
        assert key.material[:16] not in wrapped
        assert key.material[16:] not in wrapped


async def test_keys_are_distinct(db_pool: asyncpg.Pool, provider: LocalKekProvider) -> None:
    manager = DataKeyManager(db_pool, provider)
    await manager.ensure(TEMPLATES)

    materials = {
        (await manager.active(template, purpose)).material
        for template in TEMPLATES
        for purpose in Purpose
    }

    assert len(materials) == len(TEMPLATES) * len(Purpose)


async def test_wrapped_key_bound_to_row(db_pool: asyncpg.Pool, provider: LocalKekProvider) -> None:
    await DataKeyManager(db_pool, provider).ensure(TEMPLATES)
    await db_pool.execute(
        "UPDATE tv_data_keys SET wrapped_key ="
        " (SELECT wrapped_key FROM tv_data_keys WHERE template = 'cards' AND purpose = 'fpe')"
        " WHERE template = 'iban' AND purpose = 'fpe'"
    )

    with pytest.raises(UnwrapError):
        await DataKeyManager(db_pool, provider).active("iban", Purpose.FPE)


def test_associated_data_names_row() -> None:
    assert associated_data("cards", Purpose.AEAD, 3) == b"tokenvault/data-key/v1\0cards\0aead\x003"


def test_repr_hides_material() -> None:
    material = bytes(range(32))
    key = DataKey("cards", Purpose.FPE, 2, material, "active")

    text = repr(key)

    assert text == "DataKey(template='cards', purpose=fpe, version=2, state='active')"
    assert "material" not in text
    assert material.hex() not in text
    assert repr(material) not in text
    assert str(key) == text


# -- get and active --------------------------------------------------------------------------


async def test_get_unknown_version(db_pool: asyncpg.Pool, provider: LocalKekProvider) -> None:
    manager = DataKeyManager(db_pool, provider)
    await manager.ensure(TEMPLATES)

    with pytest.raises(DataKeyNotFound, match="cards/fpe v9 does not exist"):
        await manager.get("cards", Purpose.FPE, 9)


async def test_get_destroyed_version(db_pool: asyncpg.Pool, provider: LocalKekProvider) -> None:
    manager = DataKeyManager(db_pool, provider)
    await manager.ensure(TEMPLATES)
    await db_pool.execute(
        "UPDATE tv_data_keys SET state = 'destroyed', wrapped_key = NULL"
        " WHERE template = 'cards' AND purpose = 'aead'"
    )
    manager.clear_cache()

    with pytest.raises(KeyDestroyed, match="cards/aead v1 was destroyed"):
        await manager.get("cards", Purpose.AEAD, 1)


async def test_get_returns_decrypt_only(db_pool: asyncpg.Pool, provider: LocalKekProvider) -> None:
    manager = DataKeyManager(db_pool, provider)
    await manager.ensure(TEMPLATES)
    await db_pool.execute(
        "UPDATE tv_data_keys SET state = 'decrypt_only'"
        " WHERE template = 'cards' AND purpose = 'fpe'"
    )
    manager.clear_cache()

    key = await manager.get("cards", Purpose.FPE, 1)

    assert key.state == "decrypt_only"
    with pytest.raises(DataKeyNotFound, match="no active version"):
        await manager.active("cards", Purpose.FPE)


async def test_active_before_ensure(db_pool: asyncpg.Pool, provider: LocalKekProvider) -> None:
    with pytest.raises(DataKeyNotFound, match="cards/index has no active version"):
        await DataKeyManager(db_pool, provider).active("cards", Purpose.INDEX)


async def test_active_is_cached(db_pool: asyncpg.Pool, kek_path: Path) -> None:
    provider = CountingProvider.create(kek_path)
    await DataKeyManager(db_pool, provider).ensure(["cards"])
    manager = DataKeyManager(db_pool, provider)
    provider.unwrap_calls = 0

    first = await manager.active("cards", Purpose.FPE)
    await db_pool.execute("DELETE FROM tv_data_keys")
    second = await manager.active("cards", Purpose.FPE)

    assert second is first
    assert provider.unwrap_calls == 1


async def test_concurrent_first_requests_unwrap_once(db_pool: asyncpg.Pool, kek_path: Path) -> None:
    provider = CountingProvider.create(kek_path)
    await DataKeyManager(db_pool, provider).ensure(["cards"])
    manager = DataKeyManager(db_pool, provider)
    provider.unwrap_calls = 0

    keys = await asyncio.gather(
        *(manager.active("cards", Purpose.AEAD) for _ in range(5)),
        *(manager.get("cards", Purpose.AEAD, 1) for _ in range(5)),
    )

    assert provider.unwrap_calls == 1
    assert all(key is keys[0] for key in keys)


async def test_clear_cache_rereads(db_pool: asyncpg.Pool, provider: LocalKekProvider) -> None:
    manager = DataKeyManager(db_pool, provider)
    await manager.ensure(["cards"])
    old = await manager.active("cards", Purpose.FPE)
    await db_pool.execute(
        "UPDATE tv_data_keys SET state = 'decrypt_only'"
        " WHERE template = 'cards' AND purpose = 'fpe'"
    )
    await db_pool.execute(
        "INSERT INTO tv_data_keys"
        " (template, purpose, version, state, kek_provider, kek_key_id, kek_version, wrapped_key)"
        " SELECT template, purpose, 2, 'active', kek_provider, kek_key_id, kek_version, wrapped_key"
        " FROM tv_data_keys WHERE template = 'cards' AND purpose = 'fpe'"
    )

    assert await manager.active("cards", Purpose.FPE) is old
    manager.clear_cache()

    # The copied row's associated data names version 1, so version 2 must fail to unwrap.
    with pytest.raises(UnwrapError):
        await manager.active("cards", Purpose.FPE)
    assert (await manager.get("cards", Purpose.FPE, 1)).state == "decrypt_only"


# -- provider failures and KEK rotation ------------------------------------------------------


async def test_unreachable_provider_propagates(db_pool: asyncpg.Pool, kek_path: Path) -> None:
    await DataKeyManager(db_pool, LocalKekProvider.create(kek_path)).ensure(["cards"])
    manager = DataKeyManager(db_pool, UnreachableProvider.load(kek_path))

    with pytest.raises(KekUnavailable, match="KEK provider local is unavailable"):
        await manager.active("cards", Purpose.FPE)
    with pytest.raises(KekUnavailable):
        await manager.ensure(["cards"])


async def test_row_of_other_provider(db_pool: asyncpg.Pool, provider: LocalKekProvider) -> None:
    manager = DataKeyManager(db_pool, provider)
    await manager.ensure(["cards"])
    await db_pool.execute("UPDATE tv_data_keys SET kek_provider = 'vault-transit'")
    manager.clear_cache()

    with pytest.raises(KekNotFound, match="wrapped by KEK provider vault-transit"):
        await manager.active("cards", Purpose.FPE)


async def test_keys_survive_kek_rotation(db_pool: asyncpg.Pool, provider: LocalKekProvider) -> None:
    manager = DataKeyManager(db_pool, provider)
    await manager.ensure(["cards"])
    before = await manager.active("cards", Purpose.INDEX)

    rotated = provider.rotate()
    manager.clear_cache()
    await manager.ensure(["cards", "iban"])

    after = await manager.active("cards", Purpose.INDEX)
    assert after.material == before.material
    versions = {(row["template"], row["kek_version"]) for row in await _rows(db_pool)}
    assert versions == {("cards", "1"), ("iban", rotated.version)}

"""Migrations and the embedded server, against a real PostgreSQL."""

from __future__ import annotations

import asyncpg

from vault.store.db import migrate
from vault.store.embedded import EmbeddedPostgres


async def test_migrate_is_idempotent(db_pool: asyncpg.Pool) -> None:
    first = await migrate(db_pool)
    second = await migrate(db_pool)

    assert first == second
    assert first >= 1


async def test_schema_has_core_tables(db_pool: asyncpg.Pool) -> None:
    rows = await db_pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    names = {row["table_name"] for row in rows}

    assert {"tv_data_keys", "tv_tokens", "tv_audit_log", "tv_audit_checkpoints"} <= names


def test_embedded_server_listens_on_loopback_only(pg_server: EmbeddedPostgres) -> None:
    dsn = pg_server.dsn()

    assert "@127.0.0.1:" in dsn
    assert pg_server.password_file.stat().st_mode & 0o077 == 0

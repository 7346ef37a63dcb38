"""Connection pool set-up and schema migrations."""

from __future__ import annotations

import logging
from importlib import resources

import asyncpg

logger = logging.getLogger(__name__)

# Any fixed 64-bit number works: it only has to be the same for every replica.
_MIGRATION_LOCK_ID = 0x746F6B656E76  # "tokenv"


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """Open a pool to ``dsn``; connections use UTC and the JSON codec for jsonb columns."""

    async def _init(connection: asyncpg.Connection) -> None:
        import json

        await connection.set_type_codec(
            "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )

    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init,
        server_settings={"timezone": "UTC", "application_name": "tokenvault"},
    )
    assert pool is not None
    return pool


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("vault.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


async def migrate(pool: asyncpg.Pool) -> int:
    """Apply the migrations this build contains and the database lacks; return the schema version.

    An advisory lock serialises replicas that start at the same time.
    """
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_ID)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS tv_schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {
            row["version"]
            for row in await connection.fetch("SELECT version FROM tv_schema_migrations")
        }
        current = max(applied, default=0)
        for version, name, sql in _migrations():
            if version in applied:
                continue
            logger.info("applying schema migration %s", name)
            await connection.execute(sql)
            await connection.execute(
                "INSERT INTO tv_schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            current = max(current, version)
        return current


async def ensure_database(admin_dsn: str, name: str) -> None:
    """Create database ``name`` through ``admin_dsn`` unless it exists."""
    connection = await asyncpg.connect(admin_dsn)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            # Identifiers cannot be bound as parameters; quote_ident makes the name safe.
            quoted = await connection.fetchval("SELECT quote_ident($1)", name)
            await connection.execute(f"CREATE DATABASE {quoted}")
            logger.info("created database %s", name)
    finally:
        await connection.close()

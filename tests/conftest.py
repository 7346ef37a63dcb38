"""Shared fixtures: one embedded PostgreSQL server per test session, a fresh database per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from vault.store.db import create_pool, ensure_database, migrate
from vault.store.embedded import EmbeddedPostgres

TESTS_DIR = Path(__file__).resolve().parent
DATA_DIR = TESTS_DIR / "data"


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg-state"))
    server.start()
    yield server
    server.destroy()


@pytest_asyncio.fixture(loop_scope="session")
async def database_dsn(pg_server: EmbeddedPostgres) -> AsyncIterator[str]:
    """DSN of a new, migrated database that only this test uses."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    await ensure_database(pg_server.dsn(), name)
    dsn = pg_server.dsn(name)
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
    finally:
        await pool.close()
    yield dsn


@pytest_asyncio.fixture(loop_scope="session")
async def db_pool(database_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_dsn, min_size=1, max_size=5)
    yield pool
    await pool.close()

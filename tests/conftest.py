"""Shared fixtures: one embedded PostgreSQL server per test session, a fresh database per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

# The embedded PostgreSQL and SoftHSM are started by fork/exec while gRPC threads run. gRPC's
# fork handlers are not needed for that, and they print a notice each time.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from keys import softhsm  # noqa: E402
from keys.softhsm import SoftHsm
from vault.store.db import create_pool, ensure_database, migrate
from vault.store.embedded import EmbeddedPostgres

TESTS_DIR = Path(__file__).resolve().parent
DATA_DIR = TESTS_DIR / "data"

# SoftHSM2 reads its configuration once per process, so the whole session shares one
# environment with these tokens.
HSM_TOKEN = "tokenvault-test"
HSM_SPARE_TOKEN = "tokenvault-spare"


@pytest.fixture(scope="session")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """The one SoftHSM2 environment of the test session."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        # Records the current value, so it is restored after SoftHsm.create replaces it.
        monkeypatch.delenv(softhsm.CONFIG_ENV, raising=False)
        yield SoftHsm.create(tmp_path_factory.mktemp("softhsm"), [HSM_TOKEN, HSM_SPARE_TOKEN])


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

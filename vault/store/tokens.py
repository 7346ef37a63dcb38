"""Vaulted token rows in PostgreSQL.

Every method takes a whole batch and costs one round trip (inserts: one transaction of two
statements), so a request of thousands of items makes a handful of queries. Expired rows are
invisible to reads and are deleted by ``purge_expired``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from vault.telemetry import Telemetry, db_span


@dataclass(frozen=True, repr=False)
class NewToken:
    template: str
    token: str
    ciphertext: bytes
    key_version: int
    value_index: bytes | None = None
    index_key_version: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    expires_at: datetime | None = None

    def __repr__(self) -> str:
        return f"NewToken(template={self.template!r}, key_version={self.key_version})"


@dataclass(frozen=True, repr=False)
class StoredToken:
    template: str
    token: str
    ciphertext: bytes
    key_version: int
    metadata: Mapping[str, str]
    expires_at: datetime | None

    def __repr__(self) -> str:
        return f"StoredToken(template={self.template!r}, key_version={self.key_version})"


_LIVE = "(t.expires_at IS NULL OR t.expires_at > now())"


class StaleDataKey(Exception):
    """A row was sealed with a key version that is no longer active.

    Another replica rotated or destroyed it, so the caller drops its cached keys for
    ``template`` and seals the row again.
    """

    def __init__(self, template: str) -> None:
        super().__init__(template)
        self.template = template


async def _lock_active_keys(connection: asyncpg.Connection, rows: Sequence[NewToken]) -> None:
    """Share-lock the key versions the rows use and check that each is still active.

    A destruction locks the same key row for update before it counts the rows a version
    protects. So either the count includes these rows, or this insert finds the version gone.
    """
    wanted = {(row.template, "aead", row.key_version) for row in rows}
    wanted |= {
        (row.template, "index", row.index_key_version)
        for row in rows
        if row.index_key_version is not None
    }
    keys = sorted(wanted)
    found = await connection.fetch(
        """
        SELECT k.template, k.purpose, k.version, k.state
        FROM tv_data_keys k
        JOIN unnest($1::text[], $2::text[], $3::int[]) AS w(template, purpose, version)
          ON k.template = w.template AND k.purpose = w.purpose AND k.version = w.version
        ORDER BY k.template, k.purpose, k.version
        FOR SHARE OF k
        """,
        [key[0] for key in keys],
        [key[1] for key in keys],
        [key[2] for key in keys],
    )
    states = {(r["template"], r["purpose"], r["version"]): r["state"] for r in found}
    for key in keys:
        if states.get(key) != "active":
            raise StaleDataKey(key[0])


class TokenStore:
    def __init__(self, pool: asyncpg.Pool, telemetry: Telemetry | None = None) -> None:
        self._pool = pool
        self._telemetry = telemetry

    async def find_by_index(
        self, keys: Sequence[tuple[str, bytes]]
    ) -> dict[tuple[str, bytes], str]:
        """Return the live token for each (template, value index) that has one."""
        if not keys:
            return {}
        with db_span(self._telemetry, "db.tokens.find_by_index", "SELECT"):
            rows = await self._find_by_index(keys)
        return {(row["template"], bytes(row["value_index"])): row["token"] for row in rows}

    async def _find_by_index(self, keys: Sequence[tuple[str, bytes]]) -> list[asyncpg.Record]:
        return await self._pool.fetch(
            f"""
            SELECT t.template, t.value_index, t.token
            FROM tv_tokens t
            JOIN unnest($1::text[], $2::bytea[]) AS k(template, value_index)
              ON t.template = k.template AND t.value_index = k.value_index
            WHERE {_LIVE}
            """,  # noqa: S608 - _LIVE is a constant
            [template for template, _ in keys],
            [index for _, index in keys],
        )

    async def insert(self, rows: Sequence[NewToken]) -> set[tuple[str, str]]:
        """Insert rows that collide with nothing; return the (template, token) pairs stored.

        A row is skipped when its token is taken, or when a convergent row for the same value
        exists. Expired convergent rows for the same values are deleted first, so an expired
        token's value gets a new token. The transaction commits before this returns.
        """
        if not rows:
            return set()
        indexed = [row for row in rows if row.value_index is not None]
        with db_span(self._telemetry, "db.tokens.insert", "INSERT", **{"db.rows": len(rows)}):
            return await self._insert(rows, indexed)

    async def _insert(
        self, rows: Sequence[NewToken], indexed: Sequence[NewToken]
    ) -> set[tuple[str, str]]:
        async with self._pool.acquire() as connection, connection.transaction():
            await _lock_active_keys(connection, rows)
            if indexed:
                await connection.execute(
                    """
                    DELETE FROM tv_tokens t
                    USING unnest($1::text[], $2::bytea[]) AS k(template, value_index)
                    WHERE t.template = k.template AND t.value_index = k.value_index
                      AND t.expires_at IS NOT NULL AND t.expires_at <= now()
                    """,
                    [row.template for row in indexed],
                    [row.value_index for row in indexed],
                )
            stored = await connection.fetch(
                """
                INSERT INTO tv_tokens (template, token, ciphertext, key_version, value_index,
                                       index_key_version, metadata, expires_at)
                SELECT template, token, ciphertext, key_version, value_index, index_key_version,
                       metadata::jsonb, expires_at
                FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int[], $5::bytea[],
                            $6::int[], $7::text[], $8::timestamptz[])
                  AS r(template, token, ciphertext, key_version, value_index, index_key_version,
                       metadata, expires_at)
                ON CONFLICT DO NOTHING
                RETURNING template, token
                """,
                [row.template for row in rows],
                [row.token for row in rows],
                [row.ciphertext for row in rows],
                [row.key_version for row in rows],
                [row.value_index for row in rows],
                [row.index_key_version for row in rows],
                [json.dumps(dict(row.metadata)) for row in rows],
                [row.expires_at for row in rows],
            )
        return {(row["template"], row["token"]) for row in stored}

    async def fetch(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredToken]:
        """Return the live row for each (template, token) that has one."""
        if not keys:
            return {}
        with db_span(self._telemetry, "db.tokens.fetch", "SELECT"):
            rows = await self._fetch(keys)
        return {
            (row["template"], row["token"]): StoredToken(
                template=row["template"],
                token=row["token"],
                ciphertext=bytes(row["ciphertext"]),
                key_version=row["key_version"],
                metadata=row["metadata"] or {},
                expires_at=row["expires_at"],
            )
            for row in rows
        }

    async def _fetch(self, keys: Sequence[tuple[str, str]]) -> list[asyncpg.Record]:
        return await self._pool.fetch(
            f"""
            SELECT t.template, t.token, t.ciphertext, t.key_version, t.metadata, t.expires_at
            FROM tv_tokens t
            JOIN unnest($1::text[], $2::text[]) AS k(template, token)
              ON t.template = k.template AND t.token = k.token
            WHERE {_LIVE}
            """,  # noqa: S608 - _LIVE is a constant
            [template for template, _ in keys],
            [token for _, token in keys],
        )

    async def purge_expired(self, *, limit: int = 10_000) -> int:
        """Delete up to ``limit`` expired rows; return how many were deleted."""
        result = await self._pool.execute(
            """
            DELETE FROM tv_tokens WHERE ctid IN (
                SELECT ctid FROM tv_tokens
                WHERE expires_at IS NOT NULL AND expires_at <= now()
                LIMIT $1)
            """,
            limit,
        )
        return int(result.split()[-1])

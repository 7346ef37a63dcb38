"""A replica whose key cache is stale never stores rows under a rotated or destroyed key."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from keys.datakeys import DataKeyManager, Purpose
from keys.lifecycle import KeyLifecycle
from keys.local import LocalKekProvider
from vault.formats import default_templates
from vault.formats.base import Side
from vault.modes.vaulted import TokenizeJob, VaultedTokenizer
from vault.store.tokens import TokenStore

TEMPLATE = default_templates()["email"]


async def test_stale_replica_seals_with_new_version(db_pool: asyncpg.Pool, tmp_path: Path) -> None:
    provider = LocalKekProvider.create(tmp_path / "kek.json")
    replica_a = DataKeyManager(db_pool, provider)
    replica_b = DataKeyManager(db_pool, provider)
    await replica_a.ensure([TEMPLATE.name])
    tokenizer = VaultedTokenizer(replica_a, TokenStore(db_pool))
    # Replica A caches version 1; replica B rotates without A hearing about it.
    assert (await replica_a.active(TEMPLATE.name, Purpose.AEAD)).version == 1
    await KeyLifecycle(db_pool, provider, replica_b).rotate(TEMPLATE.name, Purpose.AEAD, actor="b")

    split = TEMPLATE.split("stale@example.com", Side.VALUE)
    [token] = await tokenizer.tokenize([TokenizeJob(TEMPLATE, split)])

    assert isinstance(token, str)
    versions = await db_pool.fetch("SELECT key_version FROM tv_tokens WHERE template = 'email'")
    assert [row["key_version"] for row in versions] == [2]
    [revealed] = await tokenizer.detokenize([(TEMPLATE, TEMPLATE.split(token, Side.TOKEN))])
    assert getattr(revealed, "value", None) == "stale@example.com"

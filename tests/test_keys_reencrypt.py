"""Re-encryption jobs against a real PostgreSQL, with rows written by VaultedTokenizer."""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import random
import string
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keys.datakeys import DataKey, DataKeyManager, Purpose
from keys.lifecycle import KeyLifecycle, KeyState
from keys.local import LocalKekProvider
from keys.reencrypt import (
    JobExists,
    JobNotFound,
    JobStateError,
    Reencryptor,
    token_digest,
)
from vault.formats import build_template, default_templates
from vault.formats.base import Side, Template
from vault.modes.vaulted import (
    Revealed,
    TokenizeJob,
    VaultedTokenizer,
    associated_data,
    value_index,
)
from vault.store.tokens import NewToken, TokenStore

EMAIL = default_templates()["email"]  # vaulted and convergent
PLAIN = build_template("email_plain", {"type": "email", "mode": "vaulted", "convergent": False})
ROWS = 400
BATCH = 100
ACTOR = "custodian-a"


class SimulatedCrash(Exception):
    """Stands in for a process that dies in the middle of a batch."""


class CrashingKeys(DataKeyManager):
    """Raises SimulatedCrash from its ``crash_on_call``-th ``get``.

    The runner loads each batch's keys after locking the batch's rows and before updating
    them, so the crash rolls back a batch in progress.
    """

    def __init__(self, pool: asyncpg.Pool, provider: LocalKekProvider, crash_on_call: int) -> None:
        super().__init__(pool, provider)
        self.calls = 0
        self.crash_on_call = crash_on_call

    async def get(self, template: str, purpose: Purpose, version: int) -> DataKey:
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise SimulatedCrash
        return await super().get(template, purpose, version)


class GatedKeys(DataKeyManager):
    """Blocks its ``block_on_call``-th ``get`` until ``release`` is set, inside a batch."""

    def __init__(self, pool: asyncpg.Pool, provider: LocalKekProvider, block_on_call: int) -> None:
        super().__init__(pool, provider)
        self.calls = 0
        self.block_on_call = block_on_call
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def get(self, template: str, purpose: Purpose, version: int) -> DataKey:
        self.calls += 1
        if self.calls == self.block_on_call:
            self.entered.set()
            await self.release.wait()
        return await super().get(template, purpose, version)


class FakeTime:
    """A fake clock: a sleep advances it by the time slept, and each reading adds 1 ms."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[], Awaitable[None]] | None = None

    def clock(self) -> float:
        self.now += 0.001
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            await self.on_sleep()


# -- fixtures and helpers


@pytest.fixture
def provider(tmp_path: Path) -> LocalKekProvider:
    return LocalKekProvider.create(tmp_path / "kek.json")


@pytest_asyncio.fixture(loop_scope="session")
async def keys(db_pool: asyncpg.Pool, provider: LocalKekProvider) -> AsyncIterator[DataKeyManager]:
    manager = DataKeyManager(db_pool, provider)
    await manager.ensure([EMAIL.name, PLAIN.name])
    yield manager


@pytest.fixture
def lifecycle(
    db_pool: asyncpg.Pool, provider: LocalKekProvider, keys: DataKeyManager
) -> KeyLifecycle:
    return KeyLifecycle(db_pool, provider, keys)


@pytest.fixture
def tokenizer(db_pool: asyncpg.Pool, keys: DataKeyManager) -> VaultedTokenizer:
    return VaultedTokenizer(keys, TokenStore(db_pool))


def make_emails(count: int, prefix: str) -> list[str]:
    generator = random.Random(f"{prefix}-{count}")
    letters = string.ascii_letters
    return [
        f"{prefix}{i}.{''.join(generator.choices(letters, k=8))}@example.org" for i in range(count)
    ]


async def tokenize_all(
    tokenizer: VaultedTokenizer, template: Template, values: list[str]
) -> list[str]:
    results = await tokenizer.tokenize(
        [TokenizeJob(template, template.split(value, Side.VALUE)) for value in values]
    )
    failures = [type(result).__name__ for result in results if not isinstance(result, str)]
    assert failures == []
    return [result for result in results if isinstance(result, str)]


async def detokenize_all(
    tokenizer: VaultedTokenizer, template: Template, tokens: list[str]
) -> list[str]:
    results = await tokenizer.detokenize(
        [(template, template.split(token, Side.TOKEN)) for token in tokens]
    )
    failures = [type(result).__name__ for result in results if not isinstance(result, Revealed)]
    assert failures == []
    return [result.value for result in results if isinstance(result, Revealed)]


async def rotate(lifecycle: KeyLifecycle, template: Template, *purposes: Purpose) -> None:
    for purpose in purposes:
        await lifecycle.rotate(template.name, purpose, actor=ACTOR)


async def version_counts(pool: asyncpg.Pool, template: Template) -> dict[int, int]:
    rows = await pool.fetch(
        "SELECT key_version, count(*) AS n FROM tv_tokens WHERE template = $1 GROUP BY 1",
        template.name,
    )
    return {row["key_version"]: row["n"] for row in rows}


async def index_version_counts(pool: asyncpg.Pool, template: Template) -> dict[int | None, int]:
    rows = await pool.fetch(
        "SELECT index_key_version, count(*) AS n FROM tv_tokens WHERE template = $1 GROUP BY 1",
        template.name,
    )
    return {row["index_key_version"]: row["n"] for row in rows}


async def seed_rows(
    tokenizer: VaultedTokenizer, template: Template, count: int = ROWS, prefix: str = "old"
) -> tuple[list[str], list[str]]:
    values = make_emails(count, prefix)
    return values, await tokenize_all(tokenizer, template, values)


async def seal_row(keys: DataKeyManager, template: Template, token: str, value: str) -> NewToken:
    """Build a row the way VaultedTokenizer seals one, with the active keys."""
    canonical_token = template.split(token, Side.TOKEN).canonical
    canonical_value = template.split(value, Side.VALUE).canonical
    aead = await keys.active(template.name, Purpose.AEAD)
    index = await keys.active(template.name, Purpose.INDEX)
    nonce = os.urandom(12)
    ciphertext = AESGCM(aead.material).encrypt(
        nonce,
        canonical_value.encode(),
        associated_data(template.name, canonical_token, aead.version),
    )
    return NewToken(
        template=template.name,
        token=canonical_token,
        ciphertext=nonce + ciphertext,
        key_version=aead.version,
        value_index=value_index(index.material, template.name, canonical_value),
        index_key_version=index.version,
    )


# -- running to completion


async def test_run_moves_convergent_rows_to_target(
    db_pool: asyncpg.Pool,
    keys: DataKeyManager,
    lifecycle: KeyLifecycle,
    tokenizer: VaultedTokenizer,
) -> None:
    values, tokens = await seed_rows(tokenizer, EMAIL)
    await rotate(lifecycle, EMAIL, Purpose.AEAD, Purpose.INDEX)
    reencryptor = Reencryptor(db_pool, keys)

    job = await reencryptor.start(EMAIL.name, actor=ACTOR, batch_size=BATCH, convergent=True)
    assert job.status == "running"
    assert job.target_version == 2
    assert job.target_index_version == 2
    assert job.rows_total == ROWS
    assert job.rows_per_second is None

    final = await reencryptor.run(job.id)

    assert final.status == "done"
    assert final.rows_done == ROWS
    assert final.rows_total == ROWS
    assert final.rows_left == 0
    assert final.finished_at is not None
    assert final.error is None
    assert final.rows_per_second is not None and final.rows_per_second > 0
    assert await version_counts(db_pool, EMAIL) == {2: ROWS}
    assert await index_version_counts(db_pool, EMAIL) == {2: ROWS}
    assert await detokenize_all(tokenizer, EMAIL, tokens) == values
    assert await tokenize_all(tokenizer, EMAIL, values) == tokens


async def test_run_non_convergent_leaves_index_alone(
    db_pool: asyncpg.Pool,
    keys: DataKeyManager,
    lifecycle: KeyLifecycle,
    tokenizer: VaultedTokenizer,
) -> None:
    values, tokens = await seed_rows(tokenizer, PLAIN)
    await rotate(lifecycle, PLAIN, Purpose.AEAD)
    reencryptor = Reencryptor(db_pool, keys)

    job = await reencryptor.start(PLAIN.name, actor=ACTOR, batch_size=BATCH)
    final = await reencryptor.run(job.id)

    assert job.target_index_version is None
    assert final.status == "done"
    assert final.rows_done == ROWS
    assert await version_counts(db_pool, PLAIN) == {2: ROWS}
    assert await index_version_counts(db_pool, PLAIN) == {None: ROWS}
    assert await detokenize_all(tokenizer, PLAIN, tokens) == values


async def test_run_with_nothing_to_do_finishes(
    db_pool: asyncpg.Pool, keys: DataKeyManager, tokenizer: VaultedTokenizer
) -> None:
    await seed_rows(tokenizer, EMAIL, count=20)
    reencryptor = Reencryptor(db_pool, keys)

    job = await reencryptor.start(EMAIL.name, actor=ACTOR, convergent=True)
    final = await reencryptor.run(job.id)

    assert job.rows_total == 0
    assert final.status == "done"
    assert final.rows_done == 0


# -- crash, cancellation and resumption


async def test_crash_mid_batch_then_resume(
    db_pool: asyncpg.Pool,
    provider: LocalKekProvider,
    keys: DataKeyManager,
    lifecycle: KeyLifecycle,
    tokenizer: VaultedTokenizer,
) -> None:
    values, tokens = await seed_rows(tokenizer, EMAIL)
    await rotate(lifecycle, EMAIL, Purpose.AEAD, Purpose.INDEX)
    job = await Reencryptor(db_pool, keys).start(
        EMAIL.name, actor=ACTOR, batch_size=BATCH, convergent=True
    )
    # Each batch loads aead v1, aead v2 and index v2: call 8 is inside the third batch.
    crashing = CrashingKeys(db_pool, provider, crash_on_call=8)

    with pytest.raises(SimulatedCrash):
        await Reencryptor(db_pool, crashing).run(job.id)

    after_crash = await Reencryptor(db_pool, keys).status(job.id)
    assert after_crash.status == "running"
    assert after_crash.rows_done == 2 * BATCH
    assert await version_counts(db_pool, EMAIL) == {1: ROWS - 2 * BATCH, 2: 2 * BATCH}
    assert await detokenize_all(tokenizer, EMAIL, tokens) == values

    final = await Reencryptor(db_pool, keys).resume(job.id)

    assert final.status == "done"
    assert final.rows_done == ROWS
    assert final.rows_total == ROWS
    assert await version_counts(db_pool, EMAIL) == {2: ROWS}
    assert await detokenize_all(tokenizer, EMAIL, tokens) == values


async def test_cancel_inside_batch_then_resume(
    db_pool: asyncpg.Pool,
    provider: LocalKekProvider,
    keys: DataKeyManager,
    lifecycle: KeyLifecycle,
    tokenizer: VaultedTokenizer,
) -> None:
    values, tokens = await seed_rows(tokenizer, PLAIN)
    await rotate(lifecycle, PLAIN, Purpose.AEAD)
    job = await Reencryptor(db_pool, keys).start(PLAIN.name, actor=ACTOR, batch_size=BATCH)
    # A non-convergent batch loads aead v1 and v2: call 3 opens the second batch.
    gated = GatedKeys(db_pool, provider, block_on_call=3)
    task = asyncio.create_task(Reencryptor(db_pool, gated).run(job.id))
    await gated.entered.wait()

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    reencryptor = Reencryptor(db_pool, keys)
    after_cancel = await reencryptor.status(job.id)
    assert after_cancel.status == "running"
    assert after_cancel.rows_done == BATCH
    assert await version_counts(db_pool, PLAIN) == {1: ROWS - BATCH, 2: BATCH}

    final = await reencryptor.run(job.id)

    assert final.status == "done"
    assert final.rows_done == ROWS
    assert await version_counts(db_pool, PLAIN) == {2: ROWS}
    assert await detokenize_all(tokenizer, PLAIN, tokens) == values


async def test_stop_event_ends_run_between_batches(
    db_pool: asyncpg.Pool,
    keys: DataKeyManager,
    lifecycle: KeyLifecycle,
    tokenizer: VaultedTokenizer,
) -> None:
    await seed_rows(tokenizer, PLAIN)
    await rotate(lifecycle, PLAIN, Purpose.AEAD)
    fake = FakeTime()
    reencryptor = Reencryptor(db_pool, keys, clock=fake.clock, sleep=fake.sleep)
    job = await reencryptor.start(
        PLAIN.name, actor=ACTOR, batch_size=BATCH, max_rows_per_second=10_000
    )
    stop = asyncio.Event()

    async def stop_after_two_batches() -> None:
        if len(fake.sleeps) == 2:
            stop.set()

    fake.on_sleep = stop_after_two_batches

    stopped = await reencryptor.run(job.id, stop=stop)

    assert stopped.status == "running"
    assert stopped.rows_done == 2 * BATCH
    assert stopped.rows_per_second is not None

    final = await reencryptor.run(job.id)

    assert final.status == "done"
    assert final.rows_done == ROWS
    assert await version_counts(db_pool, PLAIN) == {2: ROWS}


# -- single runner, job control


async def test_second_runner_returns_without_processing(
    db_pool: asyncpg.Pool,
    keys: DataKeyManager,
    lifecycle: KeyLifecycle,
    tokenizer: VaultedTokenizer,
) -> None:
    values, tokens = await seed_rows(tokenizer, PLAIN)
    await rotate(lifecycle, PLAIN, Purpose.AEAD)
    fake = FakeTime()
    first_replica = Reencryptor(db_pool, keys, clock=fake.clock, sleep=fake.sleep)
    job = await first_replica.start(
        PLAIN.name, actor=ACTOR, batch_size=BATCH, max_rows_per_second=10_000
    )
    # The first runner waits in its throttle sleep after one batch, still holding the lock.
    sleeping = asyncio.Event()
    wake = asyncio.Event()

    async def hold_after_first_batch() -> None:
        if len(fake.sleeps) == 1:
            sleeping.set()
            await wake.wait()

    fake.on_sleep = hold_after_first_batch
    first = asyncio.create_task(first_replica.run(job.id))
    await sleeping.wait()
    other_replica = Reencryptor(db_pool, keys)

    second = await other_replica.run(job.id)
    resumed = await other_replica.resume(job.id)

    assert second.status == "running"
    assert second.rows_done == BATCH
    assert resumed.rows_done == BATCH
    assert await version_counts(db_pool, PLAIN) == {1: ROWS - BATCH, 2: BATCH}

    wake.set()
    final = await first

    assert final.status == "done"
    assert final.rows_done == ROWS
    assert await detokenize_all(tokenizer, PLAIN, tokens) == values


async def test_start_twice_raises_job_exists(
    db_pool: asyncpg.Pool,
    keys: DataKeyManager,
    lifecycle: KeyLifecycle,
    tokenizer: VaultedTokenizer,
) -> None:
    await seed_rows(tokenizer, EMAIL, count=50)
    await rotate(lifecycle, EMAIL, Purpose.AEAD)
    reencryptor = Reencryptor(db_pool, keys)
    job = await reencryptor.start(EMAIL.name, actor=ACTOR)

    with pytest.raises(JobExists) as raised:
        await reencryptor.start(EMAIL.name, actor="custodian-b", convergent=True)

    assert raised.value.job_id == job.id
    assert str(job.id) in str(raised.value)

    await reencryptor.run(job.id)
    again = await reencryptor.start(EMAIL.name, actor=ACTOR)

    assert again.id != job.id
    assert again.rows_total == 0


async def test_start_rejects_invalid_limits(db_pool: asyncpg.Pool, keys: DataKeyManager) -> None:
    reencryptor = Reencryptor(db_pool, keys)

    with pytest.raises(ValueError, match="batch_size"):
        await reencryptor.start(EMAIL.name, actor=ACTOR, batch_size=0)
    with pytest.raises(ValueError, match="max_rows_per_second"):
        await reencryptor.start(EMAIL.name, actor=ACTOR, max_rows_per_second=0)


async def test_pause_before_run_then_resume(
    db_pool: asyncpg.Pool,
    keys: DataKeyManager,
    lifecycle: KeyLifecycle,
    tokenizer: VaultedTokenizer,
) -> None:
    values, tokens = await seed_rows(tokenizer, EMAIL)
    await rotate(lifecycle, EMAIL, Purpose.AEAD, Purpose.INDEX)
    reencryptor = Reencryptor(db_pool, keys)
    job = await reencryptor.start(EMAIL.name, actor=ACTOR, batch_size=BATCH, convergent=True)

    paused = await reencryptor.pause(job.id)
    paused_again = await reencryptor.pause(job.id)
    not_run = await reencryptor.run(job.id)

    assert paused.status == "paused"
    assert paused_again.status == "paused"
    assert not_run.status == "paused"
    assert not_run.rows_done == 0

    final = await reencryptor.resume(job.id)

    assert final.status == "done"
    assert final.rows_done == ROWS
    assert await detokenize_all(tokenizer, EMAIL, tokens) == values
    with pytest.raises(JobStateError):
        await reencryptor.pause(job.id)
    with pytest.raises(JobStateError):
        await reencryptor.resume(job.id)


async def test_pause_during_run_then_resume(
    db_pool: asyncpg.Pool,
    keys: DataKeyManager,
    lifecycle: KeyLifecycle,
    tokenizer: VaultedTokenizer,
) -> None:
    values, tokens = await seed_rows(tokenizer, EMAIL)
    await rotate(lifecycle, EMAIL, Purpose.AEAD, Purpose.INDEX)
    fake = FakeTime()
    reencryptor = Reencryptor(db_pool, keys, clock=fake.clock, sleep=fake.sleep)
    job = await reencryptor.start(
        EMAIL.name, actor=ACTOR, batch_size=BATCH, max_rows_per_second=10_000, convergent=True
    )

    async def pause_after_first_batch() -> None:
        if len(fake.sleeps) == 1:
            await reencryptor.pause(job.id)

    fake.on_sleep = pause_after_first_batch

    paused = await reencryptor.run(job.id)

    assert paused.status == "paused"
    assert paused.rows_done == BATCH

    final = await reencryptor.resume(job.id)

    assert final.status == "done"
    assert final.rows_done == ROWS
    assert final.rows_total == ROWS
    assert await version_counts(db_pool, EMAIL) == {2: ROWS}
    assert await detokenize_all(tokenizer, EMAIL, tokens) == values


async def test_resume_unfinished_runs_only_running_jobs(
    db_pool: asyncpg.Pool,
    keys: DataKeyManager,
    lifecycle: KeyLifecycle,
    tokenizer: VaultedTokenizer,
) -> None:
    await seed_rows(tokenizer, EMAIL, count=100)
    await seed_rows(tokenizer, PLAIN, count=100)
    await rotate(lifecycle, EMAIL, Purpose.AEAD)
    await rotate(lifecycle, PLAIN, Purpose.AEAD)
    reencryptor = Reencryptor(db_pool, keys)
    running = await reencryptor.start(EMAIL.name, actor=ACTOR, batch_size=30)
    paused = await reencryptor.start(PLAIN.name, actor=ACTOR, batch_size=30)
    await reencryptor.pause(paused.id)

    tasks = await Reencryptor(db_pool, keys).resume_unfinished(asyncio.Event())
    results = await asyncio.gather(*tasks)

    assert [result.id for result in results] == [running.id]
    assert results[0].status == "done"
    assert (await reencryptor.status(paused.id)).status == "paused"
    unfinished = await reencryptor.jobs(unfinished_only=True)
    assert [job.id for job in unfinished] == [paused.id]
    assert [job.id for job in await reencryptor.jobs(template=EMAIL.name)] == [running.id]
    assert len(await reencryptor.jobs()) == 2


# -- throttling


async def test_throttle_keeps_average_rate(
    db_pool: asyncpg.Pool,
    keys: DataKeyManager,
    lifecycle: KeyLifecycle,
    tokenizer: VaultedTokenizer,
) -> None:
    await seed_rows(tokenizer, PLAIN, count=300)
    await rotate(lifecycle, PLAIN, Purpose.AEAD)
    fake = FakeTime()
    reencryptor = Reencryptor(db_pool, keys, clock=fake.clock, sleep=fake.sleep)
    max_rate = 50
    job = await reencryptor.start(
        PLAIN.name, actor=ACTOR, batch_size=BATCH, max_rows_per_second=max_rate
    )
    run_started = fake.now
    rates_after_sleep: list[float] = []

    async def record_rate() -> None:
        status = await reencryptor.status(job.id)
        rates_after_sleep.append(status.rows_done / (fake.now - run_started))

    fake.on_sleep = record_rate

    final = await reencryptor.run(job.id)

    assert final.status == "done"
    # One second's allowance per batch: 300 rows at 50 rows/s make 6 batches and 6 sleeps.
    assert len(fake.sleeps) == 6
    assert all(rate <= max_rate for rate in rates_after_sleep)
    assert final.rows_done / (fake.now - run_started) <= max_rate
    assert sum(fake.sleeps) >= 300 / max_rate - 1


# -- integrity failures and unusable keys


async def test_tampered_row_fails_job_with_digest(
    db_pool: asyncpg.Pool,
    keys: DataKeyManager,
    lifecycle: KeyLifecycle,
    tokenizer: VaultedTokenizer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    values, tokens = await seed_rows(tokenizer, EMAIL)
    victim = 137
    canonical = EMAIL.split(tokens[victim], Side.TOKEN).canonical
    await db_pool.execute(
        "UPDATE tv_tokens SET ciphertext = set_byte(ciphertext, 20, get_byte(ciphertext, 20) # 1)"
        " WHERE template = $1 AND token = $2",
        EMAIL.name,
        canonical,
    )
    await rotate(lifecycle, EMAIL, Purpose.AEAD, Purpose.INDEX)
    reencryptor = Reencryptor(db_pool, keys)
    job = await reencryptor.start(EMAIL.name, actor=ACTOR, batch_size=BATCH, convergent=True)

    with caplog.at_level(logging.DEBUG, logger="keys.reencrypt"):
        final = await reencryptor.run(job.id)

    assert final.status == "failed"
    assert final.error is not None
    assert "1 row " in final.error
    assert token_digest(EMAIL.name, canonical) in final.error
    assert canonical not in final.error
    assert values[victim] not in final.error
    assert canonical not in caplog.text
    assert values[victim] not in caplog.text
    assert final.rows_done == ROWS - 1
    assert final.rows_left == 1
    assert final.finished_at is not None
    assert await version_counts(db_pool, EMAIL) == {1: 1, 2: ROWS - 1}
    others = tokens[:victim] + tokens[victim + 1 :]
    expected = values[:victim] + values[victim + 1 :]
    assert await detokenize_all(tokenizer, EMAIL, others) == expected


@pytest.mark.parametrize("state", ["retired", "destroyed"])
async def test_unusable_old_key_fails_job(
    state: str,
    db_pool: asyncpg.Pool,
    keys: DataKeyManager,
    lifecycle: KeyLifecycle,
    tokenizer: VaultedTokenizer,
) -> None:
    await seed_rows(tokenizer, PLAIN, count=50)
    await rotate(lifecycle, PLAIN, Purpose.AEAD)
    reencryptor = Reencryptor(db_pool, keys)
    job = await reencryptor.start(PLAIN.name, actor=ACTOR)
    # Load v1 into the cache first: the job must still see the state change in the table.
    await keys.get(PLAIN.name, Purpose.AEAD, 1)
    if state == "retired":
        await lifecycle.set_state(PLAIN.name, Purpose.AEAD, 1, KeyState.RETIRED, actor=ACTOR)
    else:
        request = await lifecycle.propose_destroy(
            PLAIN.name, Purpose.AEAD, 1, actor=ACTOR, force=True
        )
        await lifecycle.approve_destroy(request.id, actor="custodian-b")

    final = await reencryptor.run(job.id)

    assert final.status == "failed"
    assert final.error is not None
    assert f"{PLAIN.name}/aead v1" in final.error
    assert state in final.error
    assert final.rows_done == 0
    assert await version_counts(db_pool, PLAIN) == {1: 50}


async def test_resume_failed_job_after_reinstating_key(
    db_pool: asyncpg.Pool,
    keys: DataKeyManager,
    lifecycle: KeyLifecycle,
    tokenizer: VaultedTokenizer,
) -> None:
    values, tokens = await seed_rows(tokenizer, PLAIN, count=50)
    await rotate(lifecycle, PLAIN, Purpose.AEAD)
    await lifecycle.set_state(PLAIN.name, Purpose.AEAD, 1, KeyState.RETIRED, actor=ACTOR)
    reencryptor = Reencryptor(db_pool, keys)
    job = await reencryptor.start(PLAIN.name, actor=ACTOR)
    failed = await reencryptor.run(job.id)
    await lifecycle.set_state(PLAIN.name, Purpose.AEAD, 1, KeyState.DECRYPT_ONLY, actor=ACTOR)

    final = await reencryptor.resume(job.id)

    assert failed.status == "failed"
    assert final.status == "done"
    assert final.error is None
    assert final.rows_done == 50
    assert await detokenize_all(tokenizer, PLAIN, tokens) == values


async def test_set_running_reports_state_errors(
    db_pool: asyncpg.Pool,
    keys: DataKeyManager,
    lifecycle: KeyLifecycle,
    tokenizer: VaultedTokenizer,
) -> None:
    await seed_rows(tokenizer, PLAIN, count=50)
    await rotate(lifecycle, PLAIN, Purpose.AEAD)
    await lifecycle.set_state(PLAIN.name, Purpose.AEAD, 1, KeyState.RETIRED, actor=ACTOR)
    reencryptor = Reencryptor(db_pool, keys)
    failed = await reencryptor.run((await reencryptor.start(PLAIN.name, actor=ACTOR)).id)
    newer = await reencryptor.start(PLAIN.name, actor=ACTOR)
    await reencryptor.pause(newer.id)

    with pytest.raises(JobExists) as raised:
        await reencryptor.set_running(failed.id)
    running = await reencryptor.set_running(newer.id)

    assert failed.status == "failed"
    assert raised.value.job_id == newer.id
    assert running.status == "running"
    assert running.rows_done == 0
    with pytest.raises(JobNotFound):
        await reencryptor.set_running(newer.id + 100)


# -- concurrent writers


async def test_live_traffic_during_job(
    db_pool: asyncpg.Pool,
    keys: DataKeyManager,
    lifecycle: KeyLifecycle,
    tokenizer: VaultedTokenizer,
) -> None:
    values, tokens = await seed_rows(tokenizer, EMAIL)
    await rotate(lifecycle, EMAIL, Purpose.AEAD, Purpose.INDEX)
    reencryptor = Reencryptor(db_pool, keys)
    job = await reencryptor.start(EMAIL.name, actor=ACTOR, batch_size=40, convergent=True)
    new_values = make_emails(200, "new")
    new_tokens: list[str] = []

    async def traffic() -> None:
        for start in range(0, len(new_values), 20):
            chunk = new_values[start : start + 20]
            new_tokens.extend(await tokenize_all(tokenizer, EMAIL, chunk))
            await asyncio.sleep(0)

    final, _ = await asyncio.gather(reencryptor.run(job.id), traffic())

    assert final.status == "done"
    assert final.rows_done == ROWS
    assert await version_counts(db_pool, EMAIL) == {2: ROWS + len(new_values)}
    assert await detokenize_all(tokenizer, EMAIL, tokens) == values
    assert await detokenize_all(tokenizer, EMAIL, new_tokens) == new_values
    assert await tokenize_all(tokenizer, EMAIL, values + new_values) == tokens + new_tokens


async def test_stale_replica_writes_at_new_version(
    db_pool: asyncpg.Pool,
    provider: LocalKekProvider,
    keys: DataKeyManager,
    lifecycle: KeyLifecycle,
    tokenizer: VaultedTokenizer,
) -> None:
    values, tokens = await seed_rows(tokenizer, EMAIL)
    # A replica whose key cache still has version 1 as active, before its cache is cleared.
    stale_keys = DataKeyManager(db_pool, provider)
    await stale_keys.active(EMAIL.name, Purpose.AEAD)
    await stale_keys.active(EMAIL.name, Purpose.INDEX)
    stale = VaultedTokenizer(stale_keys, TokenStore(db_pool))
    await rotate(lifecycle, EMAIL, Purpose.AEAD, Purpose.INDEX)
    fake = FakeTime()
    reencryptor = Reencryptor(db_pool, keys, clock=fake.clock, sleep=fake.sleep)
    job = await reencryptor.start(
        EMAIL.name, actor=ACTOR, batch_size=BATCH, max_rows_per_second=10_000, convergent=True
    )
    stale_values: list[str] = []
    stale_tokens: list[str] = []
    behind_cursor = 0

    async def write_stale_rows() -> None:
        nonlocal behind_cursor
        if len(fake.sleeps) != 2:
            return
        cursor = await db_pool.fetchval(
            "SELECT cursor_token FROM tv_reencrypt_jobs WHERE id = $1", job.id
        )
        for attempt in range(5):
            chunk = make_emails(20, f"stale{attempt}-")
            stale_values.extend(chunk)
            stale_tokens.extend(await tokenize_all(stale, EMAIL, chunk))
            behind_cursor = await db_pool.fetchval(
                "SELECT count(*) FROM tv_tokens"
                " WHERE template = $1 AND key_version = 1 AND token < $2",
                EMAIL.name,
                cursor,
            )
            if behind_cursor:
                return

    fake.on_sleep = write_stale_rows

    final = await reencryptor.run(job.id)

    # The stale replica's inserts found their key version no longer active, reloaded the keys
    # and sealed with version 2, so no row was left behind the cursor at version 1.
    assert stale_values
    assert behind_cursor == 0
    assert final.status == "done"
    assert final.rows_done == ROWS
    assert final.rows_total == final.rows_done
    assert await version_counts(db_pool, EMAIL) == {2: ROWS + len(stale_values)}
    assert await index_version_counts(db_pool, EMAIL) == {2: ROWS + len(stale_values)}
    assert await detokenize_all(tokenizer, EMAIL, tokens + stale_tokens) == values + stale_values
    assert await tokenize_all(tokenizer, EMAIL, stale_values) == stale_tokens


async def test_second_token_for_value_clears_old_index(
    db_pool: asyncpg.Pool,
    keys: DataKeyManager,
    lifecycle: KeyLifecycle,
    tokenizer: VaultedTokenizer,
) -> None:
    values, tokens = await seed_rows(tokenizer, EMAIL, count=50)
    await rotate(lifecycle, EMAIL, Purpose.AEAD, Purpose.INDEX)
    # A row for values[0] indexed under the new key, as a lookup that tried only the new
    # index key during the rotation would write: the value now has two tokens.
    local, domain = values[0].split("@")
    other_token = f"{codecs.encode(local, 'rot13')}@{domain}"  # same shape, other letters
    duplicate = await seal_row(keys, EMAIL, other_token, values[0])
    assert await TokenStore(db_pool).insert([duplicate]) == {(EMAIL.name, duplicate.token)}
    reencryptor = Reencryptor(db_pool, keys)
    job = await reencryptor.start(EMAIL.name, actor=ACTOR, batch_size=20, convergent=True)

    final = await reencryptor.run(job.id)

    assert final.status == "done"
    assert final.rows_done == 50
    old_row = await db_pool.fetchrow(
        "SELECT key_version, value_index, index_key_version FROM tv_tokens"
        " WHERE template = $1 AND token = $2",
        EMAIL.name,
        EMAIL.split(tokens[0], Side.TOKEN).canonical,
    )
    assert old_row["key_version"] == 2
    assert old_row["value_index"] is None
    assert old_row["index_key_version"] is None
    assert await detokenize_all(tokenizer, EMAIL, tokens) == values
    assert await detokenize_all(tokenizer, EMAIL, [duplicate.token]) == [values[0]]
    assert await tokenize_all(tokenizer, EMAIL, values) == [duplicate.token] + tokens[1:]

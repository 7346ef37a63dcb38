"""Rate limits on a real PostgreSQL: bucket arithmetic, refill, sharing and concurrent calls."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from vault.abuse.ratelimit import RateLimited, RateLimiter
from vault.errors import ResourceExhausted
from vault.policy import RateLimit
from vault.store.db import create_pool

CALLER = "spiffe://example.org/payments/gateway"


class FakeClock:
    """A clock that moves only when the test advances it."""

    def __init__(self) -> None:
        self.now = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


async def admitted(limiter: RateLimiter, items: int, limit: RateLimit) -> bool:
    try:
        await limiter.consume(CALLER, "detokenize", items, limit)
    except RateLimited:
        return False
    return True


async def test_burst_then_rejection(db_pool: asyncpg.Pool) -> None:
    limiter = RateLimiter(db_pool, clock=FakeClock())
    limit = RateLimit(rate=2, burst=10)

    await limiter.consume(CALLER, "detokenize", 4, limit)
    await limiter.consume(CALLER, "detokenize", 6, limit)
    with pytest.raises(RateLimited) as caught:
        await limiter.consume(CALLER, "detokenize", 3, limit)

    # The bucket is empty, so 3 items at 2 items per second take 1.5 s.
    assert caught.value.retry_after_seconds == pytest.approx(1.5)
    assert str(caught.value) == (
        "rate limit for detokenize exceeded: 2 items per second, burst 10; retry after 1.5 s"
    )
    assert isinstance(caught.value, ResourceExhausted)


async def test_retry_after_counts_tokens_left(db_pool: asyncpg.Pool) -> None:
    limiter = RateLimiter(db_pool, clock=FakeClock())
    limit = RateLimit(rate=50, burst=500)

    await limiter.consume(CALLER, "detokenize", 440, limit)
    with pytest.raises(RateLimited) as caught:
        await limiter.consume(CALLER, "detokenize", 120, limit)

    # 60 tokens left, 60 more needed at 50 items per second.
    assert caught.value.retry_after_seconds == pytest.approx(1.2)
    assert str(caught.value).endswith("50 items per second, burst 500; retry after 1.2 s")


async def test_shown_retry_after_rounds_up(db_pool: asyncpg.Pool) -> None:
    limiter = RateLimiter(db_pool, clock=FakeClock())
    limit = RateLimit(rate=3, burst=3)

    await limiter.consume(CALLER, "detokenize", 3, limit)
    with pytest.raises(RateLimited) as caught:
        await limiter.consume(CALLER, "detokenize", 1, limit)

    assert caught.value.retry_after_seconds == pytest.approx(1 / 3)
    assert str(caught.value).endswith("retry after 0.4 s")


async def test_rejected_call_consumes_nothing(db_pool: asyncpg.Pool) -> None:
    limiter = RateLimiter(db_pool, clock=FakeClock())
    limit = RateLimit(rate=1, burst=10)

    await limiter.consume(CALLER, "detokenize", 8, limit)

    assert not await admitted(limiter, 5, limit)
    assert not await admitted(limiter, 3, limit)
    assert await admitted(limiter, 2, limit)
    assert not await admitted(limiter, 1, limit)


async def test_refill_follows_clock(db_pool: asyncpg.Pool) -> None:
    clock = FakeClock()
    limiter = RateLimiter(db_pool, clock=clock)
    limit = RateLimit(rate=2, burst=10)
    await limiter.consume(CALLER, "detokenize", 10, limit)

    clock.advance(1.5)

    assert await admitted(limiter, 3, limit)
    assert not await admitted(limiter, 1, limit)

    clock.advance(0.5)

    assert await admitted(limiter, 1, limit)
    assert not await admitted(limiter, 1, limit)


async def test_refill_stops_at_burst(db_pool: asyncpg.Pool) -> None:
    clock = FakeClock()
    limiter = RateLimiter(db_pool, clock=clock)
    limit = RateLimit(rate=2, burst=10)
    await limiter.consume(CALLER, "detokenize", 10, limit)

    clock.advance(3600)

    assert await admitted(limiter, 10, limit)
    assert not await admitted(limiter, 1, limit)


async def test_fractional_refill_accumulates(db_pool: asyncpg.Pool) -> None:
    clock = FakeClock()
    limiter = RateLimiter(db_pool, clock=clock)
    limit = RateLimit(rate=0.1, burst=1)
    await limiter.consume(CALLER, "detokenize", 1, limit)

    # Nine rejected calls, 1 s apart, each store the refill so far; together with the tenth
    # second they make exactly one token.
    for _ in range(9):
        clock.advance(1)
        assert not await admitted(limiter, 1, limit)
    clock.advance(1)

    assert await admitted(limiter, 1, limit)


async def test_clock_going_back_adds_nothing(db_pool: asyncpg.Pool) -> None:
    clock = FakeClock()
    limiter = RateLimiter(db_pool, clock=clock)
    limit = RateLimit(rate=1, burst=5)
    await limiter.consume(CALLER, "detokenize", 5, limit)

    clock.advance(-60)
    assert not await admitted(limiter, 1, limit)

    # Back at the original time plus 2 s: the refill counts from the original time, not from
    # the earlier reading.
    clock.advance(62)
    assert await admitted(limiter, 2, limit)
    assert not await admitted(limiter, 1, limit)


async def test_request_above_burst_never_passes(db_pool: asyncpg.Pool) -> None:
    limiter = RateLimiter(db_pool, clock=FakeClock())
    limit = RateLimit(rate=50, burst=500)

    with pytest.raises(RateLimited) as caught:
        await limiter.consume(CALLER, "detokenize", 501, limit)

    assert math.isinf(caught.value.retry_after_seconds)
    assert "a request of 501 items is larger than the burst" in str(caught.value)
    assert "send at most 500 items per call" in str(caught.value)
    # Nothing was taken: the full burst still passes.
    assert await admitted(limiter, 500, limit)


async def test_zero_items_always_pass(db_pool: asyncpg.Pool) -> None:
    limiter = RateLimiter(db_pool, clock=FakeClock())
    limit = RateLimit(rate=1, burst=1)
    await limiter.consume(CALLER, "detokenize", 1, limit)

    assert await admitted(limiter, 0, limit)


async def test_buckets_per_identity_and_operation(db_pool: asyncpg.Pool) -> None:
    limiter = RateLimiter(db_pool, clock=FakeClock())
    limit = RateLimit(rate=1, burst=5)
    await limiter.consume(CALLER, "detokenize", 5, limit)

    await limiter.consume(CALLER, "tokenize", 5, limit)
    await limiter.consume("spiffe://example.org/other", "detokenize", 5, limit)
    with pytest.raises(RateLimited):
        await limiter.consume(CALLER, "detokenize", 1, limit)


async def test_two_replicas_share_bucket(db_pool: asyncpg.Pool, database_dsn: str) -> None:
    clock = FakeClock()
    other_pool = await create_pool(database_dsn, min_size=1, max_size=2)
    try:
        first = RateLimiter(db_pool, clock=clock)
        second = RateLimiter(other_pool, clock=clock)
        limit = RateLimit(rate=1, burst=10)

        await first.consume(CALLER, "detokenize", 6, limit)
        await second.consume(CALLER, "detokenize", 4, limit)

        with pytest.raises(RateLimited):
            await first.consume(CALLER, "detokenize", 1, limit)
        with pytest.raises(RateLimited):
            await second.consume(CALLER, "detokenize", 1, limit)
    finally:
        await other_pool.close()


async def test_concurrent_calls_never_over_admit(database_dsn: str) -> None:
    # Ten connections, so many statements really wait on the same row lock at once.
    pool = await create_pool(database_dsn, min_size=10, max_size=10)
    try:
        limiter = RateLimiter(pool, clock=FakeClock())
        limit = RateLimit(rate=1, burst=20)

        results = await asyncio.gather(*(admitted(limiter, 1, limit) for _ in range(50)))
    finally:
        await pool.close()

    assert results.count(True) == 20
    assert results.count(False) == 30


async def test_concurrent_calls_with_database_clock(database_dsn: str) -> None:
    # At 0.001 items per second the test would have to run for 1000 s to earn one more token.
    pool = await create_pool(database_dsn, min_size=10, max_size=10)
    try:
        limiter = RateLimiter(pool)
        limit = RateLimit(rate=0.001, burst=60)

        results = await asyncio.gather(*(admitted(limiter, 3, limit) for _ in range(50)))
    finally:
        await pool.close()

    assert results.count(True) == 20


async def test_database_clock_retry_after(db_pool: asyncpg.Pool) -> None:
    limiter = RateLimiter(db_pool)
    limit = RateLimit(rate=0.001, burst=2)
    await limiter.consume(CALLER, "detokenize", 2, limit)

    with pytest.raises(RateLimited) as caught:
        await limiter.consume(CALLER, "detokenize", 1, limit)

    # One token at 0.001 per second is 1000 s, less the refill during this test.
    assert 990 < caught.value.retry_after_seconds <= 1000


async def test_database_failure_propagates(database_dsn: str) -> None:
    pool = await create_pool(database_dsn, min_size=1, max_size=1)
    limiter = RateLimiter(pool)
    await pool.close()

    with pytest.raises(asyncpg.InterfaceError):
        await limiter.consume(CALLER, "detokenize", 1, RateLimit(rate=1, burst=5))


async def test_invalid_arguments_raise(db_pool: asyncpg.Pool) -> None:
    limiter = RateLimiter(db_pool)
    cases = [
        (-1, RateLimit(rate=1, burst=5), "items must be zero or more"),
        (1, RateLimit(rate=0, burst=5), "rate must be a positive number"),
        (1, RateLimit(rate=float("nan"), burst=5), "rate must be a positive number"),
        (1, RateLimit(rate=1, burst=0), "burst must be at least 1"),
    ]

    for items, limit, expected in cases:
        with pytest.raises(ValueError, match=expected):
            await limiter.consume(CALLER, "detokenize", items, limit)


async def test_message_shows_rate(db_pool: asyncpg.Pool) -> None:
    limiter = RateLimiter(db_pool, clock=FakeClock())
    cases = [(50.0, "50 items per second"), (0.5, "0.5 items per second"), (2e6, "2000000 items")]

    for rate, expected in cases:
        # A new identity per case, so each starts with a full bucket.
        identity = f"spiffe://example.org/rate-{rate}"
        limit = RateLimit(rate=rate, burst=1)
        await limiter.consume(identity, "tokenize", 1, limit)

        with pytest.raises(RateLimited) as caught:
            await limiter.consume(identity, "tokenize", 1, limit)

        assert expected in str(caught.value)

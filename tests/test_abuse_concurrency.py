"""The per-replica limit on calls in flight per identity."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from vault.abuse.concurrency import ConcurrencyLimiter, TooManyConcurrentCalls
from vault.errors import ResourceExhausted

CALLER = "spiffe://example.org/payments/gateway"


async def hold_slot(
    limiter: ConcurrencyLimiter,
    identity: str,
    limit: int,
    entered: asyncio.Event,
    release: asyncio.Event,
) -> None:
    async with limiter.slot(identity, limit):
        entered.set()
        await release.wait()


async def start_holders(
    limiter: ConcurrencyLimiter, identity: str, limit: int, count: int, release: asyncio.Event
) -> list[asyncio.Task[None]]:
    tasks = []
    for _ in range(count):
        entered = asyncio.Event()
        tasks.append(asyncio.create_task(hold_slot(limiter, identity, limit, entered, release)))
        await entered.wait()
    return tasks


async def test_call_above_limit_rejected() -> None:
    limiter = ConcurrencyLimiter()
    release = asyncio.Event()
    holders = await start_holders(limiter, CALLER, 3, 3, release)

    with pytest.raises(TooManyConcurrentCalls) as caught:
        async with limiter.slot(CALLER, 3):
            pytest.fail("the fourth call entered its slot")

    assert isinstance(caught.value, ResourceExhausted)
    assert caught.value.limit == 3
    assert "3 calls from this identity are already in flight" in str(caught.value)
    assert limiter.in_flight(CALLER) == 3

    release.set()
    await asyncio.gather(*holders)

    assert limiter.in_flight(CALLER) == 0


async def test_slot_free_after_call_finishes() -> None:
    limiter = ConcurrencyLimiter()
    release = asyncio.Event()
    holders = await start_holders(limiter, CALLER, 2, 2, release)
    release.set()
    await asyncio.gather(*holders)

    async with limiter.slot(CALLER, 2):
        assert limiter.in_flight(CALLER) == 1


async def test_slot_released_on_exception() -> None:
    limiter = ConcurrencyLimiter()

    with pytest.raises(RuntimeError, match="handler failed"):
        async with limiter.slot(CALLER, 1):
            raise RuntimeError("handler failed")

    assert limiter.in_flight(CALLER) == 0
    async with limiter.slot(CALLER, 1):
        assert limiter.in_flight(CALLER) == 1


async def test_slot_released_on_cancellation() -> None:
    limiter = ConcurrencyLimiter()
    entered = asyncio.Event()
    holder = asyncio.create_task(hold_slot(limiter, CALLER, 1, entered, asyncio.Event()))
    await entered.wait()

    holder.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await holder

    assert limiter.in_flight(CALLER) == 0


async def test_rejected_call_takes_no_slot() -> None:
    limiter = ConcurrencyLimiter()

    async with limiter.slot(CALLER, 1):
        for _ in range(5):
            with pytest.raises(TooManyConcurrentCalls):
                async with limiter.slot(CALLER, 1):
                    pass
        assert limiter.in_flight(CALLER) == 1

    assert limiter.in_flight(CALLER) == 0


async def test_limits_per_identity() -> None:
    limiter = ConcurrencyLimiter()

    async with limiter.slot(CALLER, 1):
        async with limiter.slot("spiffe://example.org/other", 1):
            assert limiter.in_flight(CALLER) == 1
            assert limiter.in_flight("spiffe://example.org/other") == 1


async def test_no_limit_counts_nothing() -> None:
    limiter = ConcurrencyLimiter()

    async with limiter.slot(CALLER, None), limiter.slot(CALLER, None):
        assert limiter.in_flight(CALLER) == 0


async def test_invalid_limit_raises() -> None:
    limiter = ConcurrencyLimiter()

    with pytest.raises(ValueError, match="at least 1, got 0"):
        async with limiter.slot(CALLER, 0):
            pass

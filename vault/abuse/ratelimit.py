"""Token-bucket rate limits per caller identity and operation, shared by all replicas.

A bucket contains up to ``burst`` tokens and refills at ``rate`` tokens per second. One token pays
for one item, not one call, so a detokenize batch of 200 values costs 200 tokens. A call is
admitted whole or rejected whole: a rejected call consumes nothing, and a later call that fits
may still pass. A call with more items than ``burst`` can never pass, whatever the wait.

The buckets live in PostgreSQL (table ``tv_rate_buckets``) so that every replica draws from the
same balance. There is no in-memory fallback: if the database fails, the error propagates and
the call fails instead of running unlimited.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

import asyncpg

from vault.errors import ResourceExhausted
from vault.policy import RateLimit

# One statement, so the refill, the check and the debit happen under the row lock that
# INSERT ... ON CONFLICT DO UPDATE takes. $1 identity, $2 operation, $3 items, $4 burst,
# $5 rate (items per second), $6 current time or NULL for the database clock.
#
# A new bucket starts full. For an existing one, the balance is the stored tokens plus the
# refill since refilled_at, capped at burst. The call takes $3 tokens if the balance covers
# them, and otherwise leaves the balance as it is. Storing the refilled balance with the new
# time on a rejection does not change the bucket, because min(burst, t + r*a) + r*b capped at
# burst equals min(burst, t + r*(a + b)). If the clock reads earlier than refilled_at (an
# injected clock, or a clock step), greatest() keeps the refill at zero and the stored time.
_CONSUME_SQL = """
INSERT INTO tv_rate_buckets AS bucket (identity, operation, tokens, refilled_at, last_allowed)
VALUES (
    $1, $2,
    CASE WHEN $3::bigint <= $4::numeric THEN $4::numeric - $3::bigint ELSE $4::numeric END,
    coalesce($6::timestamptz, clock_timestamp()),
    $3::bigint <= $4::numeric
)
ON CONFLICT (identity, operation) DO UPDATE
SET (tokens, refilled_at, last_allowed) = (
    SELECT
        CASE WHEN refill.available >= $3::bigint
             THEN refill.available - $3::bigint
             ELSE refill.available END,
        greatest(bucket.refilled_at, excluded.refilled_at),
        refill.available >= $3::bigint
    FROM (
        SELECT least(
            $4::numeric,
            bucket.tokens + $5::numeric * greatest(
                0, extract(epoch FROM excluded.refilled_at - bucket.refilled_at)
            )
        ) AS available
    ) AS refill
)
RETURNING last_allowed, tokens
"""


class RateLimited(ResourceExhausted):
    """A call needs more tokens than its bucket holds: maps to RESOURCE_EXHAUSTED.

    ``retry_after_seconds`` is the wait until the bucket has enough tokens for the same call,
    if no other call takes them first. It is ``math.inf`` when the call has more items than the
    burst and so can never pass.
    """

    def __init__(
        self, operation: str, limit: RateLimit, items: int, retry_after_seconds: float
    ) -> None:
        rule = f"{_format_rate(limit.rate)} items per second, burst {limit.burst}"
        if math.isinf(retry_after_seconds):
            message = (
                f"rate limit for {operation} exceeded: {rule}; a request of {items} items is "
                f"larger than the burst and can never pass, so send at most {limit.burst} items "
                f"per call"
            )
        else:
            # Rounded up, so a caller that waits the shown time finds enough tokens.
            rounded_up = math.ceil(retry_after_seconds * 10) / 10
            message = f"rate limit for {operation} exceeded: {rule}; retry after {rounded_up:.1f} s"
        super().__init__(message)
        self.operation = operation
        self.limit = limit
        self.items = items
        self.retry_after_seconds = retry_after_seconds


class RateLimiter:
    """Token buckets in PostgreSQL, one per (identity, operation).

    ``clock`` returns the current time as a timezone-aware datetime. Without it the statement
    uses the database's ``clock_timestamp()``, so replicas with skewed clocks still agree;
    tests inject a clock to move time forward without waiting.
    """

    def __init__(self, pool: asyncpg.Pool, *, clock: Callable[[], datetime] | None = None) -> None:
        self._pool = pool
        self._clock = clock

    async def consume(self, identity: str, operation: str, items: int, limit: RateLimit) -> None:
        """Take ``items`` tokens from the bucket of ``identity`` and ``operation``.

        Raises RateLimited, having taken nothing, if the bucket has fewer than ``items``
        tokens. A call with zero items passes without touching the database. Database errors
        propagate.
        """
        _validate(items, limit)
        if items == 0:
            return
        if items > limit.burst:
            raise RateLimited(operation, limit, items, math.inf)

        now = self._clock() if self._clock is not None else None
        if now is not None and now.tzinfo is None:
            raise ValueError("the rate limiter clock must return a timezone-aware datetime")

        row = await self._pool.fetchrow(
            _CONSUME_SQL,
            identity,
            operation,
            items,
            Decimal(limit.burst),
            # str() gives the shortest decimal that round-trips, so a rate of 0.1 stays 0.1.
            Decimal(str(limit.rate)),
            now,
        )
        assert row is not None  # INSERT ... ON CONFLICT DO UPDATE always returns its row.
        if row["last_allowed"]:
            return

        missing = Decimal(items) - row["tokens"]
        raise RateLimited(operation, limit, items, float(missing) / limit.rate)


def _format_rate(rate: float) -> str:
    # "50" rather than "50.0", and never the exponent form that the "g" format picks for 1e6.
    return str(int(rate)) if float(rate).is_integer() else str(rate)


def _validate(items: int, limit: RateLimit) -> None:
    if items < 0:
        raise ValueError(f"items must be zero or more, got {items}")
    if not limit.rate > 0 or not math.isfinite(limit.rate):
        raise ValueError(f"rate limit rate must be a positive number, got {limit.rate}")
    if limit.burst < 1:
        raise ValueError(f"rate limit burst must be at least 1, got {limit.burst}")

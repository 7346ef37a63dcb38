"""Limit on calls in flight per caller identity, counted on this replica only.

The counter lives in this process, so the limit applies per replica. Behind a load balancer
with N replicas, one identity can have up to N x limit calls in flight in total: 3 replicas
with a limit of 8 allow 24. gRPC clients keep one HTTP/2 connection to one replica for many
calls, so a caller can also meet the limit on one replica while the others are idle.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from vault.errors import ResourceExhausted


class TooManyConcurrentCalls(ResourceExhausted):
    """The identity already has ``limit`` calls in flight here: maps to RESOURCE_EXHAUSTED."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"concurrent call limit exceeded: {limit} calls from this identity are already in "
            f"flight on this server; retry after one of them finishes"
        )
        self.limit = limit


class ConcurrencyLimiter:
    """Counts the calls in flight per identity and rejects a call above the limit at once.

    Not thread-safe: every ``slot`` must run on one event loop, as the handlers of one
    ``grpc.aio`` server do. The check and the increment have no ``await`` between them, so
    concurrent tasks cannot both take the last slot.
    """

    def __init__(self) -> None:
        self._in_flight: dict[str, int] = {}

    def in_flight(self, identity: str) -> int:
        return self._in_flight.get(identity, 0)

    @asynccontextmanager
    async def slot(self, identity: str, limit: int | None) -> AsyncIterator[None]:
        """Hold one of the ``limit`` slots of ``identity`` for the body of the ``async with``.

        Raises TooManyConcurrentCalls without waiting if all slots are taken. The slot is
        released however the body ends, including by an exception or cancellation. A ``limit``
        of None means no limit, and the call is not counted.
        """
        if limit is None:
            yield
            return
        if limit < 1:
            raise ValueError(f"concurrent call limit must be at least 1, got {limit}")

        current = self._in_flight.get(identity, 0)
        if current >= limit:
            raise TooManyConcurrentCalls(limit)
        self._in_flight[identity] = current + 1
        try:
            yield
        finally:
            self._release(identity)

    def _release(self, identity: str) -> None:
        remaining = self._in_flight[identity] - 1
        # Dropping idle identities keeps the map as small as the set of active callers.
        if remaining:
            self._in_flight[identity] = remaining
        else:
            del self._in_flight[identity]

"""Splitting a large input into requests the server accepts, keeping results in input order."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from tokenvault_client.errors import NotFoundError, PermissionDeniedError, TokenvaultClientError

ItemT = TypeVar("ItemT")
OutcomeT = TypeVar("OutcomeT")


def chunked(items: Sequence[ItemT], size: int) -> Iterator[Sequence[ItemT]]:
    """Yield consecutive slices of at most ``size`` items, in order."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def call_in_chunks(
    items: Sequence[ItemT],
    chunk_size: int,
    send: Callable[[Sequence[ItemT]], list[OutcomeT]],
    fail_item: Callable[[ItemT, TokenvaultClientError], OutcomeT],
) -> list[OutcomeT]:
    """Send ``items`` in chunks of at most ``chunk_size`` and return all outcomes in input order.

    The server fails a whole request with NOT_FOUND or PERMISSION_DENIED only when no item in
    it is usable. Splitting must not turn item-level failures into a failed call, so when such
    a chunk fails, each of its items gets ``fail_item(item, error)`` as its outcome. If every
    chunk failed that way, the first error is raised instead, as one large request would have.
    Any other error is raised at once. Chunks sent before it have already been processed by
    the server.
    """
    outcomes: list[OutcomeT] = []
    first_rejection: TokenvaultClientError | None = None
    any_chunk_accepted = False

    for chunk in chunked(items, chunk_size):
        try:
            chunk_outcomes = send(chunk)
        except (NotFoundError, PermissionDeniedError) as error:
            if first_rejection is None:
                first_rejection = error
            chunk_outcomes = [fail_item(item, error) for item in chunk]
        else:
            any_chunk_accepted = True
        outcomes.extend(chunk_outcomes)

    if first_rejection is not None and not any_chunk_accepted:
        raise first_rejection
    return outcomes

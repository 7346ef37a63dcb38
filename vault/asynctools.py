"""Small asyncio helpers shared by the background tasks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

logger = logging.getLogger(__name__)

# How long stopping waits for a cancelled background task before giving up on it.
STOP_TIMEOUT_SECONDS = 10.0


async def wait_event(event: asyncio.Event, seconds: float | None) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; return whether it was set.

    ``asyncio.timeout`` is used rather than ``asyncio.wait_for``, which on Python 3.11 can drop
    a cancellation that arrives as the event is set, leaving a cancelled loop running.
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def cancel_and_wait(tasks: Sequence[asyncio.Task[object]], name: str) -> None:
    """Cancel ``tasks`` and wait for them, at most STOP_TIMEOUT_SECONDS, so a stop never hangs."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_SECONDS)
    if pending:
        logger.error("%s did not stop within %.0f s; leaving it", name, STOP_TIMEOUT_SECONDS)

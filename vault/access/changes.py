"""Keeps a replica's in-memory copy of an access table (revocations, suspensions) current.

Triggers on ``tv_revocations`` and ``tv_suspensions`` send ``NOTIFY tv_access_changes`` with
the table name on every committed change. ``AccessTableWatcher`` runs LISTEN on a dedicated
connection and reloads its table when a notification names it. Because a notification is lost
while that connection is down, it also reloads every ``poll_seconds`` through the pool.

Staleness bound: ``check_fresh()`` raises Unavailable when the last successful reload began more
than ``max_staleness_seconds`` ago. A reload that begins after a change committed includes it,
so a replica's checks either reflect every change committed more than ``max_staleness_seconds``
ago or raise Unavailable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg

from vault.asynctools import cancel_and_wait, wait_event
from vault.errors import Unavailable

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL = "tv_access_changes"
DEFAULT_POLL_SECONDS = 2.0
DEFAULT_MAX_STALENESS_SECONDS = 5.0
RELOAD_TIMEOUT_SECONDS = 5.0
# At one failed reload every 2 s, this logs a repeated failure about once a minute.
_LOG_EVERY_N_FAILURES = 30

_DATABASE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class AccessTableWatcher:
    """Calls ``reload`` on each notification for ``table``, after a reconnect, and periodically.

    Reloads never overlap. ``reload_now()`` reloads at once and returns when done, so the
    replica that changed the table reflects its own change as soon as the change call returns.
    """

    def __init__(
        self,
        dsn: str,
        *,
        table: str,
        reload: Callable[[], Awaitable[None]],
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        max_staleness_seconds: float | None = DEFAULT_MAX_STALENESS_SECONDS,
        health_check_interval: float = 30.0,
    ) -> None:
        if poll_seconds <= 0:
            raise ValueError("poll_seconds must be greater than 0")
        if max_staleness_seconds is not None and max_staleness_seconds <= poll_seconds:
            raise ValueError("max_staleness_seconds must be greater than poll_seconds")
        self._dsn = dsn
        self._table = table
        self._reload = reload
        self._poll_seconds = poll_seconds
        self._max_staleness = max_staleness_seconds
        self._health_check_interval = health_check_interval
        self._application_name = f"tokenvault-{table.removeprefix('tv_')}-listener"
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._connection: asyncpg.Connection | None = None
        self._backend_pid: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reloaded_at: float | None = None
        self._failures = 0

    @property
    def backend_pid(self) -> int | None:
        """PID of the PostgreSQL backend that is listening, or None while disconnected."""
        return self._backend_pid

    @property
    def seconds_since_reload(self) -> float | None:
        """Age of the in-memory copy: seconds since its reload began, None before the first."""
        if self._reloaded_at is None:
            return None
        return time.monotonic() - self._reloaded_at

    async def start(self) -> None:
        """LISTEN, load the table once, then start the listener and poll tasks.

        A failure of the first connection or the first load is raised, so a replica does not
        start serving without the list.
        """
        if self._tasks:
            raise RuntimeError(f"the watcher of {self._table} is already started")
        await self._connect()
        try:
            await self.reload_now()
        except BaseException:
            await self._close_connection()
            raise
        for name, work in (("listener", self._supervise()), ("poll", self._poll())):
            task = asyncio.create_task(work, name=f"{self._application_name}-{name}")
            task.add_done_callback(self._log_unexpected_end)
            self._tasks.append(task)
        logger.info(
            "watching %s for changes on channel %s, and reloading every %.1f s",
            self._table,
            NOTIFY_CHANNEL,
            self._poll_seconds,
        )

    async def stop(self) -> None:
        """Stop both tasks and close the listening connection."""
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks, f"the {self._table} watcher")
        await self._close_connection()
        logger.info("stopped watching %s", self._table)

    async def reload_now(self) -> None:
        """Reload the table now; a failure is raised and the previous copy stays."""
        async with self._lock:
            began = time.monotonic()
            async with asyncio.timeout(RELOAD_TIMEOUT_SECONDS):
                await self._reload()
            self._reloaded_at = began

    def check_fresh(self) -> None:
        """Raise Unavailable unless the copy is younger than ``max_staleness_seconds``."""
        if self._max_staleness is None:
            return
        age = self.seconds_since_reload
        if age is None or age > self._max_staleness:
            raise Unavailable(
                f"the {self._table.removeprefix('tv_')} list could not be reloaded from the "
                "database recently enough to be trusted; try again later"
            )

    # -- periodic reload

    async def _poll(self) -> None:
        while True:
            await wait_event(self._wake, self._poll_seconds)
            # Cleared before the reload, so a notification that arrives during it causes one more.
            self._wake.clear()
            try:
                await self.reload_now()
            except _DATABASE_ERRORS as exc:
                self._failures += 1
                if self._failures % _LOG_EVERY_N_FAILURES == 1:
                    logger.warning(
                        "failed to reload %s (%d failures in a row): %s",
                        self._table,
                        self._failures,
                        exc,
                    )
                continue
            if self._failures:
                logger.info(
                    "reloaded %s again after %d failures in a row", self._table, self._failures
                )
                self._failures = 0

    # -- listener connection, as in keys.lifecycle.KeyChangeListener

    async def _connect(self) -> None:
        connection = await asyncpg.connect(
            self._dsn, server_settings={"application_name": self._application_name}
        )
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _connection: lost.set())
        try:
            await connection.add_listener(NOTIFY_CHANNEL, self._on_notification)
        except BaseException:
            connection.terminate()
            raise
        self._connection = connection
        self._lost = lost
        self._backend_pid = connection.get_server_pid()

    async def _supervise(self) -> None:
        while True:
            await self._wait_until_lost()
            await self._close_connection()
            logger.warning(
                "lost the connection that listens for changes of %s; reconnecting", self._table
            )
            await self._reconnect()
            # Notifications sent while disconnected are lost.
            self._wake.set()

    async def _wait_until_lost(self) -> None:
        connection = self._connection
        while connection is not None and not connection.is_closed():
            if await wait_event(self._lost, self._health_check_interval):
                return
            try:
                await connection.fetchval("SELECT 1", timeout=5)
            except _DATABASE_ERRORS as exc:
                logger.warning("health check of the %s listener failed: %s", self._table, exc)
                return

    async def _reconnect(self) -> None:
        delay = 0.5
        attempt = 0
        while True:
            await asyncio.sleep(delay)
            attempt += 1
            try:
                await self._connect()
            except _DATABASE_ERRORS as exc:
                delay = min(delay * 2, 10.0)
                logger.warning(
                    "failed to reconnect the %s listener (attempt %d): %s; retrying in %.1f s",
                    self._table,
                    attempt,
                    exc,
                    delay,
                )
                continue
            logger.info("reconnected the %s listener after %d attempts", self._table, attempt)
            return

    async def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        self._backend_pid = None
        if connection is None or connection.is_closed():
            return
        try:
            await connection.close(timeout=5)
        except _DATABASE_ERRORS:
            connection.terminate()

    def _on_notification(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            change = json.loads(payload)
        except ValueError:
            change = None
        table = change.get("table") if isinstance(change, dict) else None
        if table is None:
            logger.warning(
                "malformed notification on %s; reloading %s", NOTIFY_CHANNEL, self._table
            )
        if table is None or table == self._table:
            self._wake.set()

    def _log_unexpected_end(self, task: asyncio.Task[None]) -> None:
        # Only an error the loops do not expect ends a task before stop(). The copy then ages
        # past max_staleness_seconds and check_fresh() refuses, so the gate fails closed.
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "the %s task of the %s watcher stopped; the list is no longer reloaded",
                task.get_name(),
                self._table,
                exc_info=task.exception(),
            )

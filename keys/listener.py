"""Cross-replica cache invalidation for data keys, through PostgreSQL LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from keys.datakeys import DataKeyManager
from keys.lifecycle import NOTIFY_CHANNEL
from vault.asynctools import cancel_and_wait, wait_event

logger = logging.getLogger(__name__)

LISTENER_APPLICATION_NAME = "tokenvault-key-listener"


class KeyChangeListener:
    """Clears a DataKeyManager's cache when any process changes a data key.

    It runs LISTEN tv_key_changes on a dedicated connection and clears the cache of the template
    named in each notification, so every replica uses a new key version within seconds.

    After a lost connection it logs, reconnects with a backoff from 0.5 s doubling to 10 s, and
    then clears the whole cache, because notifications sent while disconnected are lost. Every
    ``health_check_interval`` seconds it runs ``SELECT 1``, so a connection that died silently
    is noticed. ``on_change`` receives each parsed notification after the cache was cleared.
    """

    def __init__(
        self,
        dsn: str,
        keys: DataKeyManager,
        *,
        on_change: Callable[[dict[str, Any]], None] | None = None,
        health_check_interval: float = 30.0,
    ) -> None:
        self._dsn = dsn
        self._keys = keys
        self._on_change = on_change
        self._health_check_interval = health_check_interval
        self._connection: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backend_pid: int | None = None

    @property
    def backend_pid(self) -> int | None:
        """PID of the PostgreSQL backend that is listening, or None while disconnected."""
        return self._backend_pid

    async def start(self) -> None:
        """Connect and LISTEN, then watch the connection in a background task.

        Returns once LISTEN is in place. A failure of this first connection is raised.
        """
        if self._task is not None:
            raise RuntimeError("KeyChangeListener is already started")
        await self._connect()
        self._task = asyncio.create_task(self._supervise(), name=LISTENER_APPLICATION_NAME)
        self._task.add_done_callback(self._log_unexpected_end)
        logger.info("listening for data key changes on channel %s", NOTIFY_CHANNEL)

    async def stop(self) -> None:
        """Stop the background task and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task], "the data key listener")
        await self._close_connection()
        logger.info("stopped listening for data key changes")

    # -- helpers

    async def _connect(self) -> None:
        connection = await asyncpg.connect(
            self._dsn, server_settings={"application_name": LISTENER_APPLICATION_NAME}
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
        # Changes committed before LISTEN took effect sent no notification to this connection.
        self._keys.clear_cache()
        self._backend_pid = connection.get_server_pid()

    async def _supervise(self) -> None:
        while True:
            await self._wait_until_lost()
            self._backend_pid = None
            await self._close_connection()
            logger.warning("lost the connection that listens for data key changes; reconnecting")
            await self._reconnect()

    async def _wait_until_lost(self) -> None:
        connection = self._connection
        while connection is not None and not connection.is_closed():
            if await wait_event(self._lost, self._health_check_interval):
                return
            try:
                await connection.fetchval("SELECT 1", timeout=5)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning("health check of the key change listener failed: %s", exc)
                return

    async def _reconnect(self) -> None:
        delay = 0.5
        attempt = 0
        while True:
            await asyncio.sleep(delay)
            attempt += 1
            try:
                await self._connect()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                delay = min(delay * 2, 10.0)
                logger.warning(
                    "failed to reconnect the key change listener (attempt %d): %s; "
                    "retrying in %.1f s",
                    attempt,
                    exc,
                    delay,
                )
                continue
            logger.info(
                "reconnected the key change listener after %d attempts; cleared the whole "
                "data key cache, because notifications sent while disconnected are lost",
                attempt,
            )
            return

    async def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        self._backend_pid = None
        if connection is None or connection.is_closed():
            return
        try:
            await connection.close(timeout=5)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            connection.terminate()

    @staticmethod
    def _log_unexpected_end(task: asyncio.Task[None]) -> None:
        # Only an error that _reconnect does not expect ends the task before stop(). Without
        # this line, the replica would keep serving stale keys with nothing in the log.
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "the key change listener stopped; data key caches are no longer cleared "
                "when keys change elsewhere",
                exc_info=task.exception(),
            )

    def _on_notification(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            change = json.loads(payload)
        except ValueError:
            change = None
        template = change.get("template") if isinstance(change, dict) else None
        if not isinstance(change, dict) or not isinstance(template, str):
            logger.warning(
                "ignored a malformed notification on %s; cleared the whole data key cache",
                NOTIFY_CHANNEL,
            )
            self._keys.clear_cache()
            return

        self._keys.clear_cache(template)
        logger.debug(
            "data key %s/%s v%s: %s; cleared the cache of template %s",
            template,
            change.get("purpose"),
            change.get("version"),
            change.get("event"),
            template,
        )
        if self._on_change is not None:
            try:
                self._on_change(change)
            except Exception:
                logger.exception("the on_change callback of the key change listener failed")

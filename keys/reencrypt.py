"""Online, resumable re-encryption of a template's vaulted rows to its active key versions.

After a custodian rotates a template's AEAD key (and, for a convergent template, its index
key), existing rows still decrypt with the version they record. A job moves them to the
versions that were active when the job started, in batches, while the service keeps serving:

- Each batch is one transaction on the runner's connection. It locks the job row, locks the
  next rows after the job's cursor with ``FOR UPDATE`` (``SKIP LOCKED`` would skip rows),
  rewrites them, and advances the cursor and ``rows_done``. A crash loses at most the
  uncommitted batch, and the next run redoes exactly that batch.
- Only one runner works on a job across all replicas. It holds a session advisory lock keyed
  by the job id on the same connection that writes the batches, so a dropped connection loses
  the lock and the uncommitted batch together.
- A row needs work when its version is below the target (``<``, not ``<>``), so rows written
  under a newer version after a later rotation are never moved back to an older one.
- When the cursor passes the last token, rows still below the target (a replica whose key
  cache is stale can write them behind the cursor) start another pass from the first token.
  A pass from the first token that leaves only rows it failed to decrypt ends the job as
  failed. Such rows are counted and left unchanged, and the error names the first one by the
  digest of its token.

Readers are not blocked: ``FOR UPDATE`` only makes concurrent writers of the same rows wait.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keys.datakeys import DataKey, DataKeyManager, Purpose
from keys.errors import DataKeyNotFound, KeyDestroyed, KeyProviderError, KeyRetired
from vault.modes.vaulted import _NONCE_BYTES, associated_data, value_index

logger = logging.getLogger(__name__)

# First key of the two-key advisory lock form ("tvre"), and the job id is the second. Locks
# taken with a single bigint key, such as the migration lock, live in a separate key space.
_LOCK_CLASS = 0x74767265
_PROGRESS_LOG_SECONDS = 10.0
# A concurrent tokenize can insert a row with one of a batch's new value indexes after the
# conflict check. The update then fails, and the batch is redone up to this many times.
_MAX_BATCH_ATTEMPTS = 3
_UNFINISHED = ("running", "paused")

_JOB_COLUMNS = (
    "id, template, status, target_version, target_index_version, rows_done, rows_total,"
    " batch_size, max_rows_per_second, cursor_token, started_by, started_at, updated_at,"
    " finished_at, error"
)
_SELECT_JOB_BY_ID = f"SELECT {_JOB_COLUMNS} FROM tv_reencrypt_jobs WHERE id = $1"  # noqa: S608
_SELECT_JOBS = (
    f"SELECT {_JOB_COLUMNS} FROM tv_reencrypt_jobs"  # noqa: S608 - constant columns
    " WHERE ($1::text IS NULL OR template = $1)"
    " AND (NOT $2::boolean OR status = ANY($3::text[]))"
    " ORDER BY id"
)

# Rows of a template that still need work. $3 is NULL for a job that leaves the value index
# alone, which makes the second comparison NULL and leaves only the AEAD condition. Rows
# without a value index have a NULL index_key_version and need no index work either.
_COUNT_PENDING = """
    SELECT count(*) FROM tv_tokens
    WHERE template = $1 AND (key_version < $2 OR index_key_version < $3::int)
"""

# The empty string sorts before every token, so the first pass needs no separate query and
# the range condition can always use the primary key index.
_SELECT_BATCH = """
    SELECT token, ciphertext, key_version, value_index, index_key_version
    FROM tv_tokens
    WHERE template = $1 AND token > $4
      AND (key_version < $2 OR index_key_version < $3::int)
    ORDER BY token
    LIMIT $5
    FOR UPDATE
"""

_UPDATE_TOKENS = """
    UPDATE tv_tokens AS t
    SET ciphertext = u.ciphertext, key_version = u.key_version,
        value_index = u.value_index, index_key_version = u.index_key_version
    FROM unnest($2::text[], $3::bytea[], $4::int[], $5::bytea[], $6::int[])
      AS u(token, ciphertext, key_version, value_index, index_key_version)
    WHERE t.template = $1 AND t.token = u.token
"""


@dataclass(frozen=True)
class JobStatus:
    """One re-encryption job as stored, plus the rate of the run in this process.

    ``rows_per_second`` is the rows re-encrypted by the current run divided by its elapsed
    time. It is None before the run's first batch, and when this process is not running the
    job.
    """

    id: int
    template: str
    status: str
    target_version: int
    target_index_version: int | None
    rows_done: int
    rows_total: int
    rows_left: int
    rows_per_second: float | None
    started_by: str
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    error: str | None


class ReencryptError(Exception):
    """Base class of the errors that ``Reencryptor`` raises about jobs."""


class JobExists(ReencryptError):
    """The template already has an unfinished (running or paused) job."""

    def __init__(self, template: str, job_id: int) -> None:
        super().__init__(template, job_id)
        self.template = template
        self.job_id = job_id

    def __str__(self) -> str:
        return (
            f"template {self.template} already has unfinished re-encryption job {self.job_id}."
            " Resume it or wait for it to finish instead of starting another"
        )


class JobNotFound(ReencryptError):
    """No re-encryption job has the requested id."""


class JobStateError(ReencryptError):
    """The job's status does not allow the requested change, such as resuming a done job."""


class _JobFailure(Exception):
    """Ends the current run with status 'failed'. Its message becomes the job's error."""


class _Outcome(enum.Enum):
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"  # the caller's stop event was set, and the job stays running
    NOT_RUNNING = "not running"  # the job row was paused or finished by someone else


@dataclass
class _Run:
    """State of one run of a job in this process."""

    job_id: int
    template: str
    target_version: int
    target_index_version: int | None
    batch_limit: int
    max_rows_per_second: int | None
    started: float
    last_progress_log: float
    rows_done: int
    rows_total: int
    # True while the current pass began at the first token in this run, so its failure count
    # covers every row that still needs work.
    full_pass: bool
    rows: int = 0
    batches: int = 0
    pass_failures: int = 0
    first_failure: str | None = None
    index_cleared: int = 0

    def rate(self, now: float) -> float | None:
        if self.batches == 0:
            return None
        elapsed = now - self.started
        return self.rows / elapsed if elapsed > 0 else None


@dataclass
class _Resealed:
    token: str
    ciphertext: bytes
    key_version: int
    value_index: bytes | None
    index_key_version: int | None
    reindexed: bool


@dataclass(frozen=True)
class _Batch:
    running: bool
    selected: int = 0
    reencrypted: int = 0
    failed: tuple[str, ...] = ()
    index_cleared: int = 0
    rows_done: int = 0
    rows_total: int = 0


def token_digest(template: str, canonical_token: str) -> str:
    """Return the first 16 hex digits of SHA-256 over ``template:token``.

    The audit table stores the full digest of the same string, so the two can be matched.
    """
    return hashlib.sha256(f"{template}:{canonical_token}".encode()).hexdigest()[:16]


def _label(template: str, purpose: Purpose, version: int) -> str:
    return f"{template}/{purpose.value} v{version}"


def _lock_id(job_id: int) -> int:
    # The second lock key is an int4. Ids past 2**31 wrap, so two jobs could share a lock,
    # which only makes them wait for each other.
    return job_id % 2**31


class Reencryptor:
    """Starts, runs, pauses and resumes re-encryption jobs stored in ``tv_reencrypt_jobs``."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        keys: DataKeyManager,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._pool = pool
        self._keys = keys
        self._clock = clock
        self._sleep = sleep
        self._runs: dict[int, _Run] = {}

    # -- job control

    async def start(
        self,
        template: str,
        *,
        actor: str,
        batch_size: int = 500,
        max_rows_per_second: int | None = None,
        convergent: bool = False,
    ) -> JobStatus:
        """Create a running job that moves ``template``'s rows to its active key versions.

        The target is the active AEAD version, and with ``convergent`` also the active index
        version, read from the table rather than the key cache, which may be stale after a
        rotation on another replica. ``rows_total`` is the count of rows below the target.
        Call ``run`` to process the job. Raises JobExists if the template has an unfinished
        job, DataKeyNotFound if a purpose has no active version, and the key manager's errors
        if the target key fails to load.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if max_rows_per_second is not None and max_rows_per_second < 1:
            raise ValueError(f"max_rows_per_second must be at least 1, got {max_rows_per_second}")

        async with self._pool.acquire() as connection:
            target = await self._active_version(connection, template, Purpose.AEAD)
            index_target = None
            if convergent:
                index_target = await self._active_version(connection, template, Purpose.INDEX)
            # Load the target keys now, so a KEK problem fails here and not in the first batch.
            await self._keys.get(template, Purpose.AEAD, target)
            if index_target is not None:
                await self._keys.get(template, Purpose.INDEX, index_target)

            total = await connection.fetchval(_COUNT_PENDING, template, target, index_target)
            row = None
            while row is None:
                existing = await self._unfinished_job_id(connection, template)
                if existing is not None:
                    raise JobExists(template, existing)
                # DO NOTHING covers the one-unfinished-job-per-template index: a concurrent
                # start makes this insert return no row, and the loop then finds that job.
                row = await connection.fetchrow(
                    "INSERT INTO tv_reencrypt_jobs"  # noqa: S608 - _JOB_COLUMNS is a constant
                    " (template, target_version, target_index_version, rows_total, batch_size,"
                    " max_rows_per_second, started_by)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7)"
                    f" ON CONFLICT DO NOTHING RETURNING {_JOB_COLUMNS}",
                    template,
                    target,
                    index_target,
                    total,
                    batch_size,
                    max_rows_per_second,
                    actor,
                )

        logger.info(
            "started re-encryption job %d for template %s by %s: target aead v%d, index v%s,"
            " %d rows to re-encrypt, batch size %d, max %s rows/s",
            row["id"],
            template,
            actor,
            target,
            index_target,
            total,
            batch_size,
            max_rows_per_second,
        )
        return self._status_of(row)

    async def pause(self, job_id: int) -> JobStatus:
        """Set a running job to paused, so its runner stops before the next batch.

        Waits for a batch in progress to commit, because each batch locks the job row. Pausing
        a paused job returns its status. Raises JobStateError for a done or failed job.
        """
        row = await self._pool.fetchrow(
            "UPDATE tv_reencrypt_jobs"  # noqa: S608 - _JOB_COLUMNS is a constant
            " SET status = 'paused', updated_at = now()"
            f" WHERE id = $1 AND status = 'running' RETURNING {_JOB_COLUMNS}",
            job_id,
        )
        if row is None:
            status = await self.status(job_id)
            if status.status == "paused":
                return status
            raise JobStateError(
                f"re-encryption job {job_id} is {status.status}, but only a running job can be"
                " paused"
            )
        logger.info(
            "paused re-encryption job %d for template %s at %d of %d rows",
            job_id,
            row["template"],
            row["rows_done"],
            row["rows_total"],
        )
        return self._status_of(row)

    async def resume(self, job_id: int, *, stop: asyncio.Event | None = None) -> JobStatus:
        """Set a paused, failed or running job to running with ``set_running``, then ``run`` it.

        A running job whose runner died (its advisory lock is free) continues from its cursor.
        If its runner is alive, ``run`` returns the status without starting a second one.
        """
        await self.set_running(job_id)
        return await self.run(job_id, stop=stop)

    async def set_running(self, job_id: int) -> JobStatus:
        """Set a paused, failed or running job to running, without running it.

        A caller that runs the job in a background task calls this first, so it can report
        the new status and any error at once. Raises JobNotFound, JobStateError for a done
        job, and JobExists when the template of a failed job has another unfinished job.
        """
        while True:
            try:
                return await self._set_running_once(job_id)
            except asyncpg.UniqueViolationError:
                # Another job for the template started between the check and the update. It
                # has committed, so the next attempt's check finds it and raises JobExists.
                continue

    async def _set_running_once(self, job_id: int) -> JobStatus:
        async with self._pool.acquire() as connection, connection.transaction():
            before = await connection.fetchrow(
                "SELECT template, status FROM tv_reencrypt_jobs WHERE id = $1 FOR UPDATE",
                job_id,
            )
            if before is None:
                raise JobNotFound(f"re-encryption job {job_id} not found")
            if before["status"] == "done":
                raise JobStateError(
                    f"re-encryption job {job_id} is done and cannot resume. Start a new job"
                    " to re-encrypt to a newer key version"
                )
            if before["status"] == "failed":
                other = await self._unfinished_job_id(connection, before["template"])
                if other is not None:
                    raise JobExists(before["template"], other)
            row = await connection.fetchrow(
                "UPDATE tv_reencrypt_jobs"  # noqa: S608 - _JOB_COLUMNS is a constant
                " SET status = 'running', error = NULL, finished_at = NULL, updated_at = now()"
                f" WHERE id = $1 RETURNING {_JOB_COLUMNS}",
                job_id,
            )

        logger.info(
            "resuming re-encryption job %d for template %s (was %s) at %d of %d rows",
            job_id,
            row["template"],
            before["status"],
            row["rows_done"],
            row["rows_total"],
        )
        return self._status_of(row)

    async def status(self, job_id: int) -> JobStatus:
        """Return one job's status. Raises JobNotFound for an unknown id."""
        row = await self._pool.fetchrow(
            _SELECT_JOB_BY_ID,
            job_id,
        )
        if row is None:
            raise JobNotFound(f"re-encryption job {job_id} not found")
        return self._status_of(row)

    async def jobs(
        self, *, template: str | None = None, unfinished_only: bool = False
    ) -> list[JobStatus]:
        """Return jobs, oldest first, optionally of one template or only running and paused."""
        rows = await self._pool.fetch(
            _SELECT_JOBS,
            template,
            unfinished_only,
            list(_UNFINISHED),
        )
        return [self._status_of(row) for row in rows]

    async def resume_unfinished(self, stop: asyncio.Event) -> list[asyncio.Task[JobStatus]]:
        """Start a ``run`` task for every job in status running, for server start-up.

        Every replica may call it: the advisory lock lets one runner per job proceed, and the
        others return at once. Paused jobs stay paused. The caller keeps and awaits the tasks.
        """
        running = [job for job in await self.jobs(unfinished_only=True) if job.status == "running"]
        if running:
            logger.info(
                "resuming %d running re-encryption jobs: %s",
                len(running),
                ", ".join(str(job.id) for job in running),
            )
        return [
            asyncio.create_task(self.run(job.id, stop=stop), name=f"reencrypt-job-{job.id}")
            for job in running
        ]

    # -- running

    async def run(self, job_id: int, *, stop: asyncio.Event | None = None) -> JobStatus:
        """Process a running job's batches until it is done, paused, stopped or failed.

        Returns at once, without processing, when the job is not running or another runner
        holds its advisory lock. Setting ``stop`` ends the run between batches and leaves the
        job running, so ``resume`` or ``resume_unfinished`` continues it. Rows that fail to
        decrypt and unusable keys end the job as failed, with the reason in ``error``. Other
        errors (database, cancellation) propagate and leave the job running.
        """
        while True:
            status = await self.status(job_id)
            if status.status != "running":
                return status

            outcome = await self._run_with_lock(job_id, stop)
            if outcome is None:
                status = await self.status(job_id)
                logger.debug(
                    "re-encryption job %d is being run by another runner; not starting a second",
                    job_id,
                )
                return status
            try:
                # The run's rate is still registered, so this status reports it.
                status = await self.status(job_id)
            finally:
                self._runs.pop(job_id, None)
            # A pause followed by a resume can land while this runner still holds the lock,
            # so the resumed run found the lock taken and returned. Take the job back here.
            if outcome is _Outcome.NOT_RUNNING and status.status == "running":
                continue
            return status

    async def _run_with_lock(self, job_id: int, stop: asyncio.Event | None) -> _Outcome | None:
        """Run the job under its advisory lock, or return None if another runner holds it."""
        async with self._pool.acquire() as connection:
            locked = await connection.fetchval(
                "SELECT pg_try_advisory_lock($1, $2)", _LOCK_CLASS, _lock_id(job_id)
            )
            if not locked:
                return None
            try:
                return await self._run_locked(connection, job_id, stop)
            except BaseException:
                self._runs.pop(job_id, None)
                raise
            finally:
                await self._unlock(connection, job_id)

    async def _run_locked(
        self, connection: asyncpg.Connection, job_id: int, stop: asyncio.Event | None
    ) -> _Outcome:
        try:
            return await self._run_job(connection, job_id, stop)
        except asyncio.CancelledError:
            logger.info(
                "re-encryption job %d cancelled; the uncommitted batch rolled back and the"
                " job stays running",
                job_id,
            )
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            logger.error(
                "re-encryption job %d stopped by a database error (%s: %s); the job stays"
                " running, so resume it to continue after its last committed batch",
                job_id,
                type(exc).__name__,
                exc,
            )
            raise

    async def _unlock(self, connection: asyncpg.Connection, job_id: int) -> None:
        try:
            await connection.execute(
                "SELECT pg_advisory_unlock($1, $2)", _LOCK_CLASS, _lock_id(job_id)
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            # The pool resets or closes the connection on release, and either frees the lock.
            logger.warning(
                "failed to release the lock of re-encryption job %d (%s); the connection"
                " reset releases it",
                job_id,
                type(exc).__name__,
            )

    async def _run_job(
        self, connection: asyncpg.Connection, job_id: int, stop: asyncio.Event | None
    ) -> _Outcome:
        row = await connection.fetchrow(
            _SELECT_JOB_BY_ID,
            job_id,
        )
        if row is None or row["status"] != "running":
            return _Outcome.NOT_RUNNING

        now = self._clock()
        batch_limit = row["batch_size"]
        if row["max_rows_per_second"] is not None:
            # A batch of at most one second's allowance keeps the rate smooth.
            batch_limit = min(batch_limit, row["max_rows_per_second"])
        run = _Run(
            job_id=job_id,
            template=row["template"],
            target_version=row["target_version"],
            target_index_version=row["target_index_version"],
            batch_limit=batch_limit,
            max_rows_per_second=row["max_rows_per_second"],
            started=now,
            last_progress_log=now,
            rows_done=row["rows_done"],
            rows_total=row["rows_total"],
            full_pass=row["cursor_token"] is None,
        )
        self._runs[job_id] = run
        logger.info(
            "running re-encryption job %d for template %s: target aead v%d, index v%s,"
            " %d of %d rows done",
            job_id,
            run.template,
            run.target_version,
            run.target_index_version,
            run.rows_done,
            run.rows_total,
        )

        try:
            return await self._run_batches(connection, run, stop)
        except _JobFailure as failure:
            await self._finish(connection, run, "failed", str(failure))
            logger.error(
                "re-encryption job %d for template %s failed after %d rows in this run: %s",
                job_id,
                run.template,
                run.rows,
                failure,
            )
            return _Outcome.FAILED

    async def _run_batches(
        self, connection: asyncpg.Connection, run: _Run, stop: asyncio.Event | None
    ) -> _Outcome:
        while True:
            if stop is not None and stop.is_set():
                logger.info(
                    "re-encryption job %d for template %s stopped by its caller after %d rows in"
                    " this run; it stays running and continues on resume",
                    run.job_id,
                    run.template,
                    run.rows,
                )
                return _Outcome.STOPPED

            batch = await self._batch(connection, run)
            if not batch.running:
                logger.info(
                    "re-encryption job %d for template %s is no longer running; runner stops",
                    run.job_id,
                    run.template,
                )
                return _Outcome.NOT_RUNNING
            if batch.selected == 0:
                outcome = await self._end_pass(connection, run)
                if outcome is not None:
                    return outcome
                continue

            self._record_batch(run, batch)
            await self._throttle(run, stop)

    def _record_batch(self, run: _Run, batch: _Batch) -> None:
        run.batches += 1
        run.rows += batch.reencrypted
        run.rows_done = batch.rows_done
        run.rows_total = batch.rows_total
        run.index_cleared += batch.index_cleared
        if batch.failed:
            if run.first_failure is None:
                run.first_failure = batch.failed[0]
            run.pass_failures += len(batch.failed)
            logger.warning(
                "re-encryption job %d for template %s: %d rows of this batch failed their"
                " integrity check and were left unchanged; first token digest %s",
                run.job_id,
                run.template,
                len(batch.failed),
                batch.failed[0],
            )
        if batch.index_cleared:
            logger.warning(
                "re-encryption job %d for template %s: %d rows share their value with a token"
                " already indexed under index key v%s; their value index was cleared, so"
                " lookups of that value return the other token",
                run.job_id,
                run.template,
                batch.index_cleared,
                run.target_index_version,
            )

        now = self._clock()
        if now - run.last_progress_log >= _PROGRESS_LOG_SECONDS:
            run.last_progress_log = now
            logger.info(
                "re-encryption job %d for template %s: %d of %d rows done, %.0f rows/s",
                run.job_id,
                run.template,
                run.rows_done,
                run.rows_total,
                run.rate(now) or 0.0,
            )

    async def _throttle(self, run: _Run, stop: asyncio.Event | None) -> None:
        """Sleep until the run's average rate is at most ``max_rows_per_second``."""
        if run.max_rows_per_second is None:
            return
        delay = run.rows / run.max_rows_per_second - (self._clock() - run.started)
        if delay <= 0:
            return
        if stop is None:
            await self._sleep(delay)
            return
        sleeper = asyncio.ensure_future(self._sleep(delay))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopper.cancel()

    async def _end_pass(self, connection: asyncpg.Connection, run: _Run) -> _Outcome | None:
        """Finish the job, or start another pass from the first token and return None."""
        async with connection.transaction():
            job = await connection.fetchrow(
                "SELECT status FROM tv_reencrypt_jobs WHERE id = $1 FOR UPDATE", run.job_id
            )
            if job is None or job["status"] != "running":
                return _Outcome.NOT_RUNNING
            remaining = await connection.fetchval(
                _COUNT_PENDING, run.template, run.target_version, run.target_index_version
            )
            if remaining == 0:
                await self._finish(connection, run, "done", None)
                logger.info(
                    "re-encryption job %d for template %s done: %d rows at aead v%d, index v%s;"
                    " %d value indexes cleared in this run",
                    run.job_id,
                    run.template,
                    run.rows_done,
                    run.target_version,
                    run.target_index_version,
                    run.index_cleared,
                )
                return _Outcome.DONE
            if run.full_pass and run.first_failure is not None and remaining <= run.pass_failures:
                if run.pass_failures == 1:
                    rows, was = "1 row", "was"
                else:
                    rows, was = f"{run.pass_failures} rows", "were"
                raise _JobFailure(
                    f"{rows} of template {run.template} failed to decrypt (AES-GCM integrity"
                    f" check) and {was} not re-encrypted. The first in token order has token"
                    f" digest {run.first_failure} (the first 16 hex digits of SHA-256 over"
                    " 'template:token', as in the audit table). Restore or delete those rows,"
                    " then resume the job"
                )
            await connection.execute(
                "UPDATE tv_reencrypt_jobs SET cursor_token = NULL,"
                " rows_total = rows_done + $2, updated_at = now() WHERE id = $1",
                run.job_id,
                remaining,
            )

        logger.info(
            "re-encryption job %d for template %s: %d rows still need work after the last"
            " token; starting another pass from the first token",
            run.job_id,
            run.template,
            remaining,
        )
        run.rows_total = run.rows_done + remaining
        run.full_pass = True
        run.pass_failures = 0
        run.first_failure = None
        return None

    async def _finish(
        self, connection: asyncpg.Connection, run: _Run, status: str, error: str | None
    ) -> None:
        await connection.execute(
            "UPDATE tv_reencrypt_jobs SET status = $2, error = $3, finished_at = now(),"
            " updated_at = now() WHERE id = $1",
            run.job_id,
            status,
            error,
        )

    # -- one batch

    async def _batch(self, connection: asyncpg.Connection, run: _Run) -> _Batch:
        for attempt in range(1, _MAX_BATCH_ATTEMPTS + 1):
            try:
                async with connection.transaction():
                    return await self._batch_in_transaction(connection, run)
            except asyncpg.UniqueViolationError:
                logger.info(
                    "re-encryption job %d for template %s: a concurrent insert took one of the"
                    " batch's new value indexes; redoing the batch (attempt %d of %d)",
                    run.job_id,
                    run.template,
                    attempt,
                    _MAX_BATCH_ATTEMPTS,
                )
        raise _JobFailure(
            f"a batch failed {_MAX_BATCH_ATTEMPTS} times in a row because concurrent inserts"
            " took its new value indexes. Resume the job to retry"
        )

    async def _batch_in_transaction(self, connection: asyncpg.Connection, run: _Run) -> _Batch:
        # Locking the job row orders each batch against pause() and a second writer.
        job = await connection.fetchrow(
            "SELECT status, cursor_token FROM tv_reencrypt_jobs WHERE id = $1 FOR UPDATE",
            run.job_id,
        )
        if job is None or job["status"] != "running":
            return _Batch(running=False)
        rows = await connection.fetch(
            _SELECT_BATCH,
            run.template,
            run.target_version,
            run.target_index_version,
            job["cursor_token"] or "",
            run.batch_limit,
        )
        if not rows:
            return _Batch(running=True)

        keys = await self._batch_keys(connection, run, rows)
        resealed: list[_Resealed] = []
        failed: list[str] = []
        for row in rows:
            try:
                resealed.append(self._reseal(run, row, keys))
            except (InvalidTag, ValueError):
                # InvalidTag: altered or moved ciphertext. ValueError: a blob shorter than a
                # nonce, or a plaintext that is not UTF-8 (only a convergent job decodes it).
                failed.append(token_digest(run.template, row["token"]))
        cleared = await self._clear_index_conflicts(connection, run, resealed)

        if resealed:
            await connection.execute(
                _UPDATE_TOKENS,
                run.template,
                [item.token for item in resealed],
                [item.ciphertext for item in resealed],
                [item.key_version for item in resealed],
                [item.value_index for item in resealed],
                [item.index_key_version for item in resealed],
            )
        progress = await connection.fetchrow(
            "UPDATE tv_reencrypt_jobs SET cursor_token = $2, rows_done = rows_done + $3,"
            " rows_total = GREATEST(rows_total, rows_done + $3), updated_at = now()"
            " WHERE id = $1 RETURNING rows_done, rows_total",
            run.job_id,
            rows[-1]["token"],
            len(resealed),
        )
        return _Batch(
            running=True,
            selected=len(rows),
            reencrypted=len(resealed),
            failed=tuple(failed),
            index_cleared=cleared,
            rows_done=progress["rows_done"],
            rows_total=progress["rows_total"],
        )

    async def _batch_keys(
        self, connection: asyncpg.Connection, run: _Run, rows: Sequence[asyncpg.Record]
    ) -> dict[tuple[Purpose, int], DataKey]:
        """Load every key a batch needs, after checking each version's state in the table.

        The key manager's cache can still hold a version that was retired or destroyed until
        its cache is cleared, so the state comes from ``tv_data_keys`` in the batch's
        transaction.
        """
        versions = {row["key_version"] for row in rows}
        if min(versions) < run.target_version:
            versions.add(run.target_version)
        needed = [(Purpose.AEAD, version) for version in sorted(versions)]
        if run.target_index_version is not None and any(
            row["index_key_version"] is not None
            and row["index_key_version"] < run.target_index_version
            for row in rows
        ):
            needed.append((Purpose.INDEX, run.target_index_version))

        state_rows = await connection.fetch(
            "SELECT purpose, version, state FROM tv_data_keys"
            " WHERE template = $1 AND purpose = ANY($2::text[]) AND version = ANY($3::int[])",
            run.template,
            sorted({purpose.value for purpose, _ in needed}),
            sorted({version for _, version in needed}),
        )
        states = {(row["purpose"], row["version"]): row["state"] for row in state_rows}

        keys: dict[tuple[Purpose, int], DataKey] = {}
        for purpose, version in needed:
            label = _label(run.template, purpose, version)
            state = states.get((purpose.value, version))
            if state is None:
                raise _JobFailure(f"data key {label} does not exist")
            if state == "retired":
                raise _JobFailure(
                    f"data key {label} is retired, so the job cannot use it; reinstate it to"
                    " decrypt_only (tokenvault keys reinstate), then resume the job"
                )
            if state == "destroyed":
                raise _JobFailure(
                    f"data key {label} was destroyed, so rows that need it cannot be"
                    " re-encrypted and the job cannot finish"
                )
            try:
                keys[(purpose, version)] = await self._keys.get(run.template, purpose, version)
            except (KeyDestroyed, KeyRetired, DataKeyNotFound) as exc:
                raise _JobFailure(str(exc)) from exc
            except KeyProviderError as exc:
                # UnwrapError has no message by design, so its class name is the reason.
                reason = str(exc) or type(exc).__name__
                raise _JobFailure(f"failed to load data key {label}: {reason}") from exc
        return keys

    def _reseal(
        self, run: _Run, row: asyncpg.Record, keys: dict[tuple[Purpose, int], DataKey]
    ) -> _Resealed:
        """Decrypt one row with its recorded version and seal it for the target versions.

        Raises InvalidTag or ValueError when the row fails to decrypt or decode.
        """
        token = row["token"]
        version = row["key_version"]
        blob = bytes(row["ciphertext"])
        plaintext = AESGCM(keys[(Purpose.AEAD, version)].material).decrypt(
            blob[:_NONCE_BYTES],
            blob[_NONCE_BYTES:],
            associated_data(run.template, token, version),
        )

        ciphertext, key_version = blob, version
        if version < run.target_version:
            nonce = os.urandom(_NONCE_BYTES)
            sealed = AESGCM(keys[(Purpose.AEAD, run.target_version)].material).encrypt(
                nonce, plaintext, associated_data(run.template, token, run.target_version)
            )
            ciphertext, key_version = nonce + sealed, run.target_version

        index = bytes(row["value_index"]) if row["value_index"] is not None else None
        index_version = row["index_key_version"]
        reindexed = False
        if (
            run.target_index_version is not None
            and index_version is not None
            and index_version < run.target_index_version
        ):
            index_key = keys[(Purpose.INDEX, run.target_index_version)]
            # The canonical value is the plaintext, as VaultedTokenizer seals it.
            index = value_index(index_key.material, run.template, plaintext.decode())
            index_version = run.target_index_version
            reindexed = True
        return _Resealed(token, ciphertext, key_version, index, index_version, reindexed)

    async def _clear_index_conflicts(
        self, connection: asyncpg.Connection, run: _Run, resealed: list[_Resealed]
    ) -> int:
        """Clear the new value index of rows whose value already has a token under it.

        A lookup during the rotation that tries only the new index key misses a row that still
        has an old-key index, so that value gets a second token. Both tokens keep working. The
        one already indexed under the new key stays the lookup result, and the older row loses
        its index, which would otherwise break the unique index. Returns the count of cleared
        rows.
        """
        candidates = [item for item in resealed if item.reindexed]
        if not candidates:
            return 0
        indexed_rows = await connection.fetch(
            "SELECT value_index FROM tv_tokens"
            " WHERE template = $1 AND value_index = ANY($2::bytea[])"
            " AND token <> ALL($3::text[])",
            run.template,
            [item.value_index for item in candidates],
            [item.token for item in candidates],
        )
        indexed = {bytes(row["value_index"]) for row in indexed_rows}
        cleared = 0
        for item in candidates:
            assert item.value_index is not None
            if item.value_index in indexed:
                item.value_index = None
                item.index_key_version = None
                cleared += 1
            else:
                # Two rows of one batch with the same value: the first in token order keeps it.
                indexed.add(item.value_index)
        return cleared

    # -- helpers

    async def _active_version(
        self, connection: asyncpg.Connection, template: str, purpose: Purpose
    ) -> int:
        version = await connection.fetchval(
            "SELECT version FROM tv_data_keys"
            " WHERE template = $1 AND purpose = $2 AND state = 'active'",
            template,
            purpose.value,
        )
        if version is None:
            raise DataKeyNotFound(
                f"data key {template}/{purpose.value} has no active version to re-encrypt to"
            )
        return int(version)

    @staticmethod
    async def _unfinished_job_id(
        connection: asyncpg.Connection | asyncpg.Pool, template: str
    ) -> int | None:
        job_id = await connection.fetchval(
            "SELECT id FROM tv_reencrypt_jobs WHERE template = $1 AND status = ANY($2::text[])",
            template,
            list(_UNFINISHED),
        )
        return int(job_id) if job_id is not None else None

    def _status_of(self, row: asyncpg.Record) -> JobStatus:
        run = self._runs.get(row["id"])
        return JobStatus(
            id=row["id"],
            template=row["template"],
            status=row["status"],
            target_version=row["target_version"],
            target_index_version=row["target_index_version"],
            rows_done=row["rows_done"],
            rows_total=row["rows_total"],
            rows_left=max(row["rows_total"] - row["rows_done"], 0),
            rows_per_second=run.rate(self._clock()) if run is not None else None,
            started_by=row["started_by"],
            started_at=row["started_at"],
            updated_at=row["updated_at"],
            finished_at=row["finished_at"],
            error=row["error"],
        )

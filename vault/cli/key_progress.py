"""Following a re-encryption job: polling, the progress bar and its figures."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

from tokenvault_client import (
    DeadlineExceededError,
    KeyAdminClient,
    ReencryptionJob,
    TokenvaultClientError,
    UnavailableError,
)

from vault.cli.key_tables import job_table, progress_percent, write_json, write_text

EXIT_OK = 0
EXIT_JOB_UNFINISHED = 1
EXIT_FAILURE = 2

POLL_INTERVAL_SECONDS = 0.5
DEFAULT_WAIT_SECONDS = 3600.0
# When standard error is not a terminal (a log file, CI), a progress line at most this often.
PLAIN_PROGRESS_INTERVAL_SECONDS = 5.0
# Columns kept for the figures after the bar, such as " 45.0%  4,500/10,000 rows  1,100 rows/s
# ETA 0:00:05" (52 columns), with room for larger numbers.
BAR_FIGURES_RESERVE = 64
# Statuses in which a followed job no longer changes on its own. A paused job waits for resume.
STOPPED_JOB_STATUSES = frozenset({"done", "failed", "paused"})


# Following a job


def _follow_and_report(
    client: KeyAdminClient, job: ReencryptionJob, args: argparse.Namespace
) -> int:
    reporter = ProgressReporter(sys.stderr, tty=sys.stderr.isatty())
    try:
        result = follow_job(
            client.get_reencryption,
            job,
            timeout=args.wait_timeout,
            reporter=reporter,
            interval=POLL_INTERVAL_SECONDS,
        )
    finally:
        reporter.close()

    final = result.job
    if args.json:
        write_json(final)
    else:
        write_text(job_table([final]))

    if result.timed_out:
        print(
            f"job {final.job_id} is still {final.status} after {args.wait_timeout:g} s. Follow "
            f"it with `tokenvault keys status {final.job_id} --watch`",
            file=sys.stderr,
        )
        return EXIT_JOB_UNFINISHED
    if final.status == "done":
        return EXIT_OK
    if final.status == "paused":
        print(
            f"job {final.job_id} is paused at {final.rows_done:,} of {final.rows_total:,} rows. "
            f"Resume it with `tokenvault keys resume {final.job_id}`",
            file=sys.stderr,
        )
    else:
        print(f"job {final.job_id} failed: {final.error or 'no reason given'}", file=sys.stderr)
    return EXIT_JOB_UNFINISHED


@dataclasses.dataclass(frozen=True)
class FollowResult:
    """Last state seen of a followed job, and whether the wait ended before the job stopped."""

    job: ReencryptionJob
    timed_out: bool


def follow_job(
    fetch: Callable[[int], ReencryptionJob],
    job: ReencryptionJob,
    *,
    timeout: float,
    reporter: ProgressReporter,
    interval: float = POLL_INTERVAL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> FollowResult:
    """Poll ``fetch(job_id)`` every ``interval`` seconds until the job is done, failed or paused.

    Gives up after ``timeout`` seconds. UNAVAILABLE and DEADLINE_EXCEEDED while polling are
    retried, so a server restart does not end the wait. If the wait ends while the server is
    unreachable, the last error is raised.
    """
    deadline = clock() + timeout
    reporter.update(job)
    last_error: TokenvaultClientError | None = None
    while job.status not in STOPPED_JOB_STATUSES:
        remaining = deadline - clock()
        if remaining <= 0:
            if last_error is not None:
                raise last_error
            return FollowResult(job, timed_out=True)
        sleep(min(interval, remaining))
        try:
            job = fetch(job.job_id)
        except (UnavailableError, DeadlineExceededError) as error:
            if last_error is None:
                reporter.note(f"polling job {job.job_id} failed: {error}; retrying")
            last_error = error
            continue
        last_error = None
        reporter.update(job)
    return FollowResult(job, timed_out=False)


class ProgressReporter:
    """Progress display of a job: a bar redrawn in place on a terminal, else a line every 5 s."""

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool,
        clock: Callable[[], float] = time.monotonic,
        columns: Callable[[], int] = lambda: shutil.get_terminal_size().columns,
    ) -> None:
        self._stream = stream
        self._tty = tty
        self._clock = clock
        self._columns = columns
        self._bar_shown = False
        self._last_line_at: float | None = None
        self._last_job: ReencryptionJob | None = None
        self._last_written: ReencryptionJob | None = None
        # First observation (clock time, rows done), the baseline of the observed rate.
        self._baseline: tuple[float, int] | None = None

    def update(self, job: ReencryptionJob) -> None:
        job = self._with_rate(job)
        self._last_job = job
        if self._tty:
            # \r returns to the line start and \x1b[K clears what a longer bar left behind.
            self._stream.write("\r" + render_progress_bar(job, self._columns()) + "\x1b[K")
            self._bar_shown = True
        else:
            now = self._clock()
            due = (
                self._last_line_at is None
                or now - self._last_line_at >= PLAIN_PROGRESS_INTERVAL_SECONDS
                or job.status in STOPPED_JOB_STATUSES
            )
            if due:
                self._stream.write(format_progress_line(job) + "\n")
                self._last_line_at = now
                self._last_written = job
        self._stream.flush()

    def _with_rate(self, job: ReencryptionJob) -> ReencryptionJob:
        # The server reports rate 0 when another process runs the job, for example another
        # replica. Progress then shows the rate observed since this display started instead.
        now = self._clock()
        if self._baseline is None:
            self._baseline = (now, job.rows_done)
        if job.rows_per_second > 0 or job.status != "running":
            return job
        started_at, rows_at_start = self._baseline
        elapsed = now - started_at
        if elapsed <= 0 or job.rows_done <= rows_at_start:
            return job
        observed = (job.rows_done - rows_at_start) / elapsed
        return dataclasses.replace(job, rows_per_second=observed)

    def note(self, message: str) -> None:
        """Write a message on its own line, below the bar when one is shown."""
        self._end_bar()
        self._stream.write(message + "\n")
        self._stream.flush()

    def close(self) -> None:
        """End the bar line, or write the last state if no line has shown it yet."""
        if self._tty:
            self._end_bar()
        elif self._last_job is not None and self._last_job != self._last_written:
            self._stream.write(format_progress_line(self._last_job) + "\n")
            self._last_written = self._last_job
        self._stream.flush()

    def _end_bar(self) -> None:
        if self._bar_shown:
            self._stream.write("\n")
            self._bar_shown = False


# Progress formatting


def estimate_seconds_left(job: ReencryptionJob) -> float | None:
    """Return the rows left divided by the current rate, or None when there is no rate yet.

    The estimate assumes the rate stays at the server's measurement for the current run.
    """
    if job.status == "done" or job.rows_left <= 0:
        return 0.0
    if job.status != "running" or job.rows_per_second <= 0:
        return None
    return job.rows_left / job.rows_per_second


def format_duration(seconds: float | None) -> str:
    """Format seconds as H:MM:SS, rounded up, or "?" for None."""
    if seconds is None:
        return "?"
    whole = int(-(-seconds // 1))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _progress_figures(job: ReencryptionJob) -> str:
    return (
        f"{progress_percent(job):5.1f}%  {job.rows_done:,}/{job.rows_total:,} rows  "
        f"{job.rows_per_second:,.0f} rows/s  ETA {format_duration(estimate_seconds_left(job))}"
    )


def render_progress_bar(job: ReencryptionJob, columns: int) -> str:
    """Render the bar line for a terminal ``columns`` wide, the bar 10 to 40 cells wide.

    The bar width depends only on ``columns`` and the job id, so it stays put while the figures
    change. A line longer than the terminal is cut, because a wrapped line cannot be redrawn.
    """
    prefix = f"job {job.job_id} {job.status:<7} "
    width = max(10, min(40, columns - len(prefix) - BAR_FIGURES_RESERVE))
    filled = int(width * progress_percent(job) / 100)
    line = f"{prefix}[{'#' * filled}{'.' * (width - filled)}] {_progress_figures(job)}"
    # The last column stays empty: some terminals wrap when a line fills it.
    return line[: max(columns - 1, 1)]


def format_progress_line(job: ReencryptionJob) -> str:
    """Format the progress line written when standard error is not a terminal."""
    return f"job {job.job_id} {job.status}: {_progress_figures(job).lstrip()}"

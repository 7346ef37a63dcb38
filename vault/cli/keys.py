"""`tokenvault keys`: key custodian commands.

`init-local` creates a local KEK file. Every other subcommand calls the KeyAdmin service of a
running server through ``tokenvault_client.KeyAdminClient``, which needs the scope admin:keys
(the dev caller `custodian` has it). Output is an aligned table, or one JSON document on
standard output with --json.

Exit codes: 0 on success. 1 when the job that `reencrypt --wait` or `status --watch` follows
failed, was paused, or was still running at --timeout. 2 for usage, connection and call errors,
with the message on standard error.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc
from tokenvault_client import (
    DeadlineExceededError,
    DestroyRequest,
    KekVersion,
    KeyAdminClient,
    KeyEvent,
    KeyVersion,
    ReencryptionJob,
    TokenvaultClientError,
    UnavailableError,
)

from keys.local import LocalKekProvider
from vault.cli.connection import (
    CommandError,
    add_connection_arguments,
    describe_call_error,
    positive_float,
    positive_int,
    resolve_connection,
)

EXIT_OK = 0
EXIT_JOB_UNFINISHED = 1
EXIT_FAILURE = 2

DEFAULT_CALLER = "custodian"
# Data key purposes as the KeyAdmin API names them: FF1, AES-256-GCM and the HMAC value index.
PURPOSES = ("fpe", "aead", "index")
MAX_EVENT_LIMIT = 1000

POLL_INTERVAL_SECONDS = 0.5
DEFAULT_WAIT_SECONDS = 3600.0
# When standard error is not a terminal (a log file, CI), a progress line at most this often.
PLAIN_PROGRESS_INTERVAL_SECONDS = 5.0
# Columns kept for the figures after the bar, such as " 45.0%  4,500/10,000 rows  1,100 rows/s
# ETA 0:00:05" (52 columns), with room for larger numbers.
BAR_FIGURES_RESERVE = 64
# Statuses in which a followed job no longer changes on its own. A paused job waits for resume.
STOPPED_JOB_STATUSES = frozenset({"done", "failed", "paused"})

AdminAction = Callable[[KeyAdminClient, argparse.Namespace], int]

KEYS_DESCRIPTION = """\
Manage keys. init-local creates a local KEK file. Every other command calls the KeyAdmin
service of a running server, which needs the scope admin:keys. The default caller, custodian,
has it in the dev policy. Output is an aligned table, or one JSON document with --json.

Exit codes: 0 on success. 1 when the job that `reencrypt --wait` or `status --watch` follows
failed, was paused or was still running at --timeout. 2 for usage, connection and call errors.
"""


# Parsers


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keys",
        help="manage keys: local KEK files, rotation, re-encryption and destruction",
        description=KEYS_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    init = commands.add_parser(
        "init-local",
        help="create a local KEK file (development and tests only)",
        description=(
            "Create a KEK file holding one random 256-bit key, with mode 0600. "
            "An existing file is never overwritten. Point [kek] file at it in the settings."
        ),
    )
    init.add_argument("file", type=Path, help="path of the KEK file to create")
    init.set_defaults(func=init_local)

    _add_key_parsers(commands)
    _add_reencryption_parsers(commands)
    _add_destroy_parsers(commands)

    events = _admin_parser(
        commands,
        "events",
        run_events,
        help_text="show the key event log, newest first",
    )
    events.add_argument("--template", metavar="NAME", help="only events of this template")
    events.add_argument(
        "--limit",
        type=_event_limit,
        default=100,
        metavar="N",
        help=f"maximum events to show, 1 to {MAX_EVENT_LIMIT} (default: %(default)s)",
    )


def _add_key_parsers(commands: argparse._SubParsersAction) -> None:
    listing = _admin_parser(
        commands,
        "list",
        run_list,
        help_text="list data key versions with their state, KEK and protected rows",
    )
    listing.add_argument("--template", metavar="NAME", help="only this template")

    rotate = _admin_parser(
        commands,
        "rotate",
        run_rotate,
        help_text="make a new data key version active; older versions keep decrypting",
    )
    rotate.add_argument("--template", required=True, metavar="NAME", help="template to rotate")
    rotate.add_argument(
        "--purpose",
        dest="purposes",
        action="append",
        choices=PURPOSES,
        default=[],
        help="purpose to rotate, repeatable (default: every purpose the template uses)",
    )

    _admin_parser(
        commands,
        "rotate-kek",
        run_rotate_kek,
        help_text="create a new KEK version and rewrap every data key under it",
    )

    retire = _admin_parser(
        commands,
        "retire",
        run_retire,
        help_text="retire a decrypt_only key version so that nothing can use it",
    )
    _add_key_version_arguments(retire)
    reinstate = _admin_parser(
        commands,
        "reinstate",
        run_reinstate,
        help_text="return a retired key version to decrypt_only",
    )
    _add_key_version_arguments(reinstate)


def _add_reencryption_parsers(commands: argparse._SubParsersAction) -> None:
    reencrypt = _admin_parser(
        commands,
        "reencrypt",
        run_reencrypt,
        help_text="start moving a template's vaulted rows to its active key versions",
        wait_flag="--wait",
    )
    reencrypt.add_argument(
        "--template", required=True, metavar="NAME", help="template whose rows to re-encrypt"
    )
    reencrypt.add_argument(
        "--batch-size",
        type=positive_int,
        default=0,
        metavar="N",
        help="rows per transaction (default: the server's, 500)",
    )
    reencrypt.add_argument(
        "--max-rows-per-second",
        type=positive_int,
        default=0,
        metavar="N",
        help="upper bound on the job's average rate, so that serving continues (default: none)",
    )
    reencrypt.add_argument(
        "--wait", action="store_true", help="follow the job until it is done, failed or paused"
    )

    status = _admin_parser(
        commands,
        "status",
        run_status,
        help_text="show re-encryption jobs, or one job",
        wait_flag="--watch",
    )
    status.add_argument(
        "job_id",
        nargs="?",
        type=positive_int,
        metavar="JOB_ID",
        help="job to show (default: every job)",
    )
    status.add_argument(
        "--template", metavar="NAME", help="only jobs of this template (without JOB_ID)"
    )
    status.add_argument(
        "--watch",
        action="store_true",
        help="follow the job until it is done, failed or paused. Without JOB_ID, follow the "
        "only running or paused job",
    )

    for name, run, help_text in (
        ("pause", run_pause, "pause a running job after its current batch"),
        ("resume", run_resume, "resume a paused job"),
    ):
        parser = _admin_parser(commands, name, run, help_text=help_text)
        parser.add_argument("job_id", type=positive_int, metavar="JOB_ID")


def _add_destroy_parsers(commands: argparse._SubParsersAction) -> None:
    destroy = _admin_parser(
        commands,
        "destroy",
        run_destroy,
        help_text="propose destroying a key version; another custodian must approve",
    )
    _add_key_version_arguments(destroy)
    destroy.add_argument(
        "--force",
        action="store_true",
        help="destroy even though the version still protects data, which becomes unreadable",
    )

    for name, run, help_text in (
        ("approve", run_approve, "approve another custodian's destroy request"),
        ("cancel", run_cancel, "cancel a pending destroy request"),
    ):
        parser = _admin_parser(commands, name, run, help_text=help_text)
        parser.add_argument("request_id", type=positive_int, metavar="REQUEST_ID")

    requests = _admin_parser(
        commands,
        "requests",
        run_requests,
        help_text="list pending destroy requests",
    )
    requests.add_argument(
        "--all",
        dest="all_requests",
        action="store_true",
        help="include approved and cancelled requests",
    )


def _admin_parser(
    commands: argparse._SubParsersAction,
    name: str,
    action: AdminAction,
    *,
    help_text: str,
    wait_flag: str | None = None,
) -> argparse.ArgumentParser:
    """Add a subcommand that calls the KeyAdmin service through ``run_admin_command``.

    For a command that can follow a job with ``wait_flag``, --timeout bounds that wait and the
    request deadline moves to --request-timeout.
    """
    description = help_text[0].upper() + help_text[1:] + "."
    parser = commands.add_parser(name, help=help_text, description=description)
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of a table"
    )
    if wait_flag is not None:
        parser.add_argument(
            "--timeout",
            dest="wait_timeout",
            type=positive_float,
            default=DEFAULT_WAIT_SECONDS,
            metavar="SECONDS",
            help=f"how long {wait_flag} follows the job before giving up (default: %(default)s)",
        )
    add_connection_arguments(
        parser,
        default_caller=DEFAULT_CALLER,
        timeout_flag="--timeout" if wait_flag is None else "--request-timeout",
    )
    parser.set_defaults(func=run_admin_command, action=action)
    return parser


def _add_key_version_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--template", required=True, metavar="NAME")
    parser.add_argument("--purpose", required=True, choices=PURPOSES)
    parser.add_argument("--version", required=True, type=positive_int, metavar="N")


def _event_limit(text: str) -> int:
    limit = positive_int(text)
    if limit > MAX_EVENT_LIMIT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_EVENT_LIMIT}, got {limit}")
    return limit


# Running


def init_local(options: argparse.Namespace) -> int:
    provider = LocalKekProvider.create(options.file)
    print(f"created {options.file} with key id {provider.describe().key_id}")
    provider.close()
    return 0


def run_admin_command(args: argparse.Namespace) -> int:
    """Connect as the selected caller, run ``args.action`` and return its exit code.

    Connection and call errors are printed on standard error and give exit code 2.
    """
    command = f"tokenvault keys {args.keys_command}"
    target = ""
    try:
        target, tls = resolve_connection(args)
        with KeyAdminClient(target, tls, timeout=args.timeout) as client:
            return args.action(client, args)
    except CommandError as error:
        print(f"{command}: {error}", file=sys.stderr)
    except TokenvaultClientError as error:
        message = describe_admin_error(error, target, waits=hasattr(args, "wait_timeout"))
        print(f"{command}: {message}", file=sys.stderr)
    except BrokenPipeError:
        # The reader of standard output (for example `head`) has gone. Point stdout at
        # /dev/null so that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_FAILURE


def describe_admin_error(error: TokenvaultClientError, target: str, *, waits: bool) -> str:
    """Return the standard-error message for a failed KeyAdmin call, with a hint where useful.

    FAILED_PRECONDITION, such as a dual-control rejection, shows the server's message as it is.
    """
    if error.code == grpc.StatusCode.PERMISSION_DENIED:
        return (
            f"{error}. Key administration needs the scope admin:keys. Use --as custodian with "
            "the dev state, or a --cert whose identity the policy grants admin:keys"
        )
    if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        flag = "--request-timeout" if waits else "--timeout"
        return f"{error}. Raise {flag}"
    if error.code == grpc.StatusCode.UNIMPLEMENTED:
        return f"{error}. The server at {target} does not provide the KeyAdmin service"
    return describe_call_error(error, target)


def run_list(client: KeyAdminClient, args: argparse.Namespace) -> int:
    listing = client.list_keys(args.template or "")
    if args.json:
        write_json(listing)
        return EXIT_OK
    lines = [f"KEK for new data keys: {format_kek(listing.kek)}"]
    lines.append(key_table(listing.keys) if listing.keys else "no data keys")
    write_text("\n".join(lines))
    return EXIT_OK


def run_rotate(client: KeyAdminClient, args: argparse.Namespace) -> int:
    rotated = client.rotate_data_key(args.template, args.purposes)
    if args.json:
        write_json({"rotated": rotated})
        return EXIT_OK
    write_text(f"new active versions of {args.template}:\n{key_table(rotated)}")
    return EXIT_OK


def run_rotate_kek(client: KeyAdminClient, args: argparse.Namespace) -> int:
    rotation = client.rotate_kek()
    if args.json:
        write_json(rotation)
        return EXIT_OK
    write_text(
        f"KEK is now {format_kek(rotation.kek)}; rewrapped {rotation.rewrapped:,} data keys "
        "under it. No row was re-encrypted."
    )
    return EXIT_OK


def run_retire(client: KeyAdminClient, args: argparse.Namespace) -> int:
    return _set_key_state(client, args, "retired")


def run_reinstate(client: KeyAdminClient, args: argparse.Namespace) -> int:
    return _set_key_state(client, args, "decrypt_only")


def _set_key_state(client: KeyAdminClient, args: argparse.Namespace, state: str) -> int:
    key = client.set_key_state(args.template, args.purpose, args.version, state)
    if args.json:
        write_json(key)
        return EXIT_OK
    write_text(f"{key.template} {key.purpose} version {key.version} is now {key.state}")
    return EXIT_OK


def run_reencrypt(client: KeyAdminClient, args: argparse.Namespace) -> int:
    job = client.start_reencryption(
        args.template, batch_size=args.batch_size, max_rows_per_second=args.max_rows_per_second
    )
    if args.wait:
        return _follow_and_report(client, job, args)
    if args.json:
        write_json(job)
        return EXIT_OK
    write_text(
        f"started re-encryption job {job.job_id} for {job.template}: {job.rows_total:,} rows "
        f"to version {format_target(job)}. "
        f"Follow it with `tokenvault keys status {job.job_id} --watch`"
    )
    return EXIT_OK


def run_status(client: KeyAdminClient, args: argparse.Namespace) -> int:
    if args.job_id is not None and args.template:
        raise CommandError("pass either JOB_ID or --template, not both")
    if args.watch:
        job = (
            client.get_reencryption(args.job_id)
            if args.job_id is not None
            else _only_unfinished_job(client, args.template or "")
        )
        return _follow_and_report(client, job, args)

    if args.job_id is not None:
        job = client.get_reencryption(args.job_id)
        if args.json:
            write_json(job)
        else:
            write_text(job_table([job]))
        return EXIT_OK

    jobs = client.list_reencryptions(args.template or "")
    if args.json:
        write_json({"jobs": jobs})
    else:
        write_text(job_table(jobs) if jobs else "no re-encryption jobs")
    return EXIT_OK


def _only_unfinished_job(client: KeyAdminClient, template: str) -> ReencryptionJob:
    jobs = client.list_reencryptions(template, unfinished_only=True)
    scope = f" for template {template}" if template else ""
    if not jobs:
        raise CommandError(f"no running or paused re-encryption job{scope} to watch")
    if len(jobs) > 1:
        ids = ", ".join(str(job.job_id) for job in jobs)
        raise CommandError(
            f"several unfinished re-encryption jobs{scope} ({ids}). Pass one as JOB_ID"
        )
    return jobs[0]


def run_pause(client: KeyAdminClient, args: argparse.Namespace) -> int:
    return _write_job(client.pause_reencryption(args.job_id), args)


def run_resume(client: KeyAdminClient, args: argparse.Namespace) -> int:
    return _write_job(client.resume_reencryption(args.job_id), args)


def _write_job(job: ReencryptionJob, args: argparse.Namespace) -> int:
    if args.json:
        write_json(job)
    else:
        write_text(job_table([job]))
    return EXIT_OK


def run_destroy(client: KeyAdminClient, args: argparse.Namespace) -> int:
    request = client.propose_destroy(args.template, args.purpose, args.version, force=args.force)
    if args.json:
        write_json(request)
        return EXIT_OK
    forced = ", forced" if request.force else ""
    write_text(
        f"proposed destroy request {request.request_id}: {request.template} {request.purpose} "
        f"version {request.version}{forced}. Another custodian must approve it with "
        f"`tokenvault keys approve {request.request_id}`; cancel it with "
        f"`tokenvault keys cancel {request.request_id}`"
    )
    return EXIT_OK


def run_approve(client: KeyAdminClient, args: argparse.Namespace) -> int:
    request = client.approve_destroy(args.request_id)
    if args.json:
        write_json(request)
        return EXIT_OK
    subject = f"{request.template} {request.purpose} version {request.version}"
    if request.status == "approved":
        write_text(f"approved destroy request {request.request_id}: {subject} is destroyed")
    else:
        write_text(f"destroy request {request.request_id} for {subject} is {request.status}")
    return EXIT_OK


def run_cancel(client: KeyAdminClient, args: argparse.Namespace) -> int:
    request = client.cancel_destroy(args.request_id)
    if args.json:
        write_json(request)
        return EXIT_OK
    write_text(f"destroy request {request.request_id} is {request.status}")
    return EXIT_OK


def run_requests(client: KeyAdminClient, args: argparse.Namespace) -> int:
    requests = client.list_destroy_requests(pending_only=not args.all_requests)
    if args.json:
        write_json({"requests": requests})
        return EXIT_OK
    empty = "no destroy requests" if args.all_requests else "no pending destroy requests"
    write_text(request_table(requests) if requests else empty)
    return EXIT_OK


def run_events(client: KeyAdminClient, args: argparse.Namespace) -> int:
    events = client.list_key_events(args.template or "", limit=args.limit)
    if args.json:
        write_json({"events": events})
        return EXIT_OK
    write_text(event_table(events) if events else "no key events")
    return EXIT_OK


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


def progress_percent(job: ReencryptionJob) -> float:
    """Return the share of rows done from 0 to 100. A done job without rows counts as 100."""
    if job.rows_total > 0:
        return min(100.0, 100.0 * job.rows_done / job.rows_total)
    return 100.0 if job.status == "done" else 0.0


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


# Tables


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right_aligned: Collection[int] = ()
) -> str:
    """Align ``rows`` under ``headers`` in columns two spaces apart.

    Columns whose index is in ``right_aligned`` are padded on the left, as numbers are.
    Trailing spaces are removed from every line.
    """
    widths = [len(header) for header in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    lines = []
    for row in (headers, *rows):
        cells = [
            cell.rjust(widths[index]) if index in right_aligned else cell.ljust(widths[index])
            for index, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_time(value: datetime.datetime | None) -> str:
    """Format a timestamp as UTC ISO 8601 to the second, or "-" when unset."""
    if value is None:
        return "-"
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_kek(kek: KekVersion) -> str:
    """Format a KEK version as provider:key_id:version."""
    return f"{kek.provider}:{kek.key_id}:{kek.version}"


def format_target(job: ReencryptionJob) -> str:
    """Format the versions a job moves rows to, with the index key version when it has one."""
    if job.target_index_version > 0:
        return f"{job.target_version} (index {job.target_index_version})"
    return str(job.target_version)


def key_table(keys: Sequence[KeyVersion]) -> str:
    headers = ("TEMPLATE", "PURPOSE", "VERSION", "STATE", "KEK", "ROWS", "CREATED", "UPDATED")
    rows = [
        (
            key.template,
            key.purpose,
            str(key.version),
            key.state,
            format_kek(key.kek),
            "-" if key.rows is None else f"{key.rows:,}",
            format_time(key.created_at),
            format_time(key.updated_at),
        )
        for key in keys
    ]
    return format_table(headers, rows, right_aligned={2, 5})


def job_table(jobs: Sequence[ReencryptionJob]) -> str:
    headers = (
        "JOB",
        "TEMPLATE",
        "STATUS",
        "TARGET",
        "DONE",
        "TOTAL",
        "PERCENT",
        "ROWS/S",
        "STARTED BY",
        "STARTED",
        "UPDATED",
        "FINISHED",
        "ERROR",
    )
    rows = [
        (
            str(job.job_id),
            job.template,
            job.status,
            format_target(job),
            f"{job.rows_done:,}",
            f"{job.rows_total:,}",
            f"{progress_percent(job):.1f}%",
            f"{job.rows_per_second:,.0f}",
            job.started_by,
            format_time(job.started_at),
            format_time(job.updated_at),
            format_time(job.finished_at),
            job.error,
        )
        for job in jobs
    ]
    return format_table(headers, rows, right_aligned={0, 4, 5, 6, 7})


def request_table(requests: Sequence[DestroyRequest]) -> str:
    headers = (
        "REQUEST",
        "TEMPLATE",
        "PURPOSE",
        "VERSION",
        "FORCE",
        "STATUS",
        "PROPOSED BY",
        "PROPOSED",
        "APPROVED BY",
        "APPROVED",
    )
    rows = [
        (
            str(request.request_id),
            request.template,
            request.purpose,
            str(request.version),
            "yes" if request.force else "no",
            request.status,
            request.proposed_by,
            format_time(request.proposed_at),
            request.approved_by or "-",
            format_time(request.approved_at),
        )
        for request in requests
    ]
    return format_table(headers, rows, right_aligned={0, 3})


def event_table(events: Sequence[KeyEvent]) -> str:
    headers = ("ID", "TIME", "TEMPLATE", "PURPOSE", "VERSION", "EVENT", "FROM", "TO", "ACTOR")
    rows = [
        (
            str(event.event_id),
            format_time(event.occurred_at),
            event.template or "-",
            event.purpose or "-",
            str(event.version) if event.version else "-",
            event.event,
            event.from_state or "-",
            event.to_state or "-",
            event.actor,
        )
        for event in events
    ]
    return format_table(headers, rows, right_aligned={0, 4})


# Output


def to_json_document(value: Any) -> Any:
    """Convert results to JSON types.

    Dataclasses become objects, tuples arrays, and datetimes ISO 8601 strings with their offset.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: to_json_document(getattr(value, field.name))
            for field in dataclasses.fields(value)
        }
    if isinstance(value, dict):
        return {key: to_json_document(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_document(item) for item in value]
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return value


def write_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_json_document(value), indent=2) + "\n")
    sys.stdout.flush()


def write_text(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()

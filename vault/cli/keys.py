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
import os
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
from tokenvault_client import (
    KeyAdminClient,
    ReencryptionJob,
    TokenvaultClientError,
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

DEFAULT_CALLER = "custodian"
# Data key purposes as the KeyAdmin API names them: FF1, AES-256-GCM and the HMAC value index.
PURPOSES = ("fpe", "aead", "index")
MAX_EVENT_LIMIT = 1000

AdminAction = Callable[[KeyAdminClient, argparse.Namespace], int]

KEYS_DESCRIPTION = """\
Manage keys. init-local creates a local KEK file. Every other command calls the KeyAdmin
service of a running server, which needs the scope admin:keys. The default caller, custodian,
has it in the dev policy. Output is an aligned table, or one JSON document with --json.

Exit codes: 0 on success. 1 when the job that `reencrypt --wait` or `status --watch` follows
failed, was paused or was still running at --timeout. 2 for usage, connection and call errors.
"""


from vault.cli.key_progress import (  # noqa: E402 - after the constants they share
    DEFAULT_WAIT_SECONDS,
    EXIT_FAILURE,
    EXIT_OK,
    _follow_and_report,
)
from vault.cli.key_tables import (  # noqa: E402
    event_table,
    format_kek,
    format_target,
    job_table,
    key_table,
    request_table,
    write_json,
    write_text,
)

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

"""`tokenvault audit`: create the checkpoint signing key, export the trail and verify it.

Exit codes: 0 on success (for verify: the trail is intact). 1 when verify finds a broken link;
the first one is printed on standard output. 2 for usage errors, unreadable files and failed
database connections, with the message on standard error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import asyncpg

from vault.audit.export import ExportSummary, export
from vault.audit.signing import AuditKeyError, generate_keypair, key_id, load_verify_key
from vault.audit.verify import VerifyReport, verify_database, verify_export

EXIT_OK = 0
EXIT_BROKEN = 1
EXIT_USAGE = 2

AUDIT_DESCRIPTION = """\
Work with the tamper-evident audit trail. keygen creates the Ed25519 key pair that signs
checkpoints. export writes the events and checkpoints as JSON lines. verify checks an export or
the database with the public key alone.

Exit codes: 0 on success. 1 when verify finds the trail broken. 2 for usage, file and
connection errors.
"""


class _UsageError(Exception):
    """A problem with the arguments or the environment, printed before exiting with 2."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="create audit signing keys, export and verify the audit trail",
        description=AUDIT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")

    keygen = commands.add_parser(
        "keygen",
        help="create the Ed25519 key pair that signs audit checkpoints",
        description=(
            "Create an Ed25519 key pair. The private key file (mode 0600) is for the service; "
            "auditors need only the public key file. Existing files are never overwritten."
        ),
    )
    keygen.add_argument("--private", required=True, type=Path, metavar="FILE")
    keygen.add_argument("--public", required=True, type=Path, metavar="FILE")
    keygen.set_defaults(func=run_keygen)

    exporter = commands.add_parser(
        "export",
        help="write audit events and checkpoints as JSON lines",
        description="Write the audit events and checkpoints of a seq range as JSON lines.",
    )
    _add_database_arguments(exporter, required=True)
    _add_range_arguments(exporter)
    exporter.add_argument(
        "--output",
        type=Path,
        metavar="FILE",
        help="file to write, replaced if it exists (default: standard output)",
    )
    exporter.set_defaults(func=run_export)

    verifier = commands.add_parser(
        "verify",
        help="verify the audit hash chain and checkpoint signatures",
        description=(
            "Verify an export file or the database: every hash, every prev_hash link, gapless "
            "seq, every checkpoint signature, and that the events reach the last checkpoint. "
            "Events after the last checkpoint are not covered by a signature, and the summary "
            "says how many. Prints a one-line summary, or the first broken link and exits 1."
        ),
    )
    verifier.add_argument(
        "--public-key", required=True, type=Path, metavar="FILE", help="public key file"
    )
    source = _add_database_arguments(verifier, required=True)
    source.add_argument("--file", type=Path, metavar="EXPORT.jsonl", help="export to verify")
    _add_range_arguments(verifier)
    verifier.set_defaults(func=run_verify)

    # Imported here: the pull command needs the client library, the others only the database.
    from vault.audit.pull import add_pull_parser

    add_pull_parser(commands)


def _add_database_arguments(
    parser: argparse.ArgumentParser, *, required: bool
) -> argparse._MutuallyExclusiveGroup:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument(
        "--dsn",
        metavar="DSN",
        help="postgresql:// URL of the database (visible in the process list; prefer --dsn-env)",
    )
    group.add_argument(
        "--dsn-env", metavar="VAR", help="environment variable that contains the database URL"
    )
    return group


def _add_range_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from", dest="from_seq", type=_seq, metavar="N", help="first seq (default: 1)"
    )
    parser.add_argument(
        "--to", dest="to_seq", type=_seq, metavar="N", help="last seq (default: the latest)"
    )


def _seq(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if not 1 <= number < 2**63:
        raise argparse.ArgumentTypeError(f"must be from 1 to 2**63-1, got {number}")
    return number


# Commands


def run_keygen(options: argparse.Namespace) -> int:
    return _run(options, _keygen)


def run_export(options: argparse.Namespace) -> int:
    return _run(options, _export)


def run_verify(options: argparse.Namespace) -> int:
    return _run(options, _verify)


def _run(options: argparse.Namespace, command: Callable[[argparse.Namespace], int]) -> int:
    """Run ``command`` and turn expected failures into a message and exit code 2."""
    try:
        return command(options)
    except (_UsageError, AuditKeyError) as exc:
        _fail(options, str(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(options, f"{where}{exc.strerror or exc}")
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # The message names the failure; the DSN, which can hold a password, is never printed.
        _fail(options, f"database error {type(exc).__name__}: {exc}")
    return EXIT_USAGE


def _fail(options: argparse.Namespace, message: str) -> None:
    print(f"tokenvault audit {options.audit_command}: {message}", file=sys.stderr)


def _keygen(options: argparse.Namespace) -> int:
    verify_key = generate_keypair(options.private, options.public)
    print(
        f"created private key {options.private} (mode 0600) and public key {options.public},"
        f" key id {key_id(verify_key)}"
    )
    return EXIT_OK


def _export(options: argparse.Namespace) -> int:
    _check_range(options)
    dsn = _resolve_dsn(options)
    if options.output is None:
        summary = asyncio.run(_export_to(dsn, sys.stdout, options))
        destination = "standard output"
    else:
        try:
            with open(options.output, "w", encoding="utf-8") as out:
                summary = asyncio.run(_export_to(dsn, out, options))
        except BaseException:
            # A partial export would later look like a truncated trail.
            options.output.unlink(missing_ok=True)
            raise
        destination = str(options.output)
    print(
        f"exported {summary.events} events and {summary.checkpoints} checkpoints to {destination}",
        file=sys.stderr,
    )
    return EXIT_OK


async def _export_to(dsn: str, out: TextIO, options: argparse.Namespace) -> ExportSummary:
    return await export(dsn, out, from_seq=options.from_seq, to_seq=options.to_seq)


def _verify(options: argparse.Namespace) -> int:
    _check_range(options)
    verify_key = load_verify_key(options.public_key)
    report: VerifyReport
    if options.file is not None:
        report = verify_export(
            options.file, verify_key, from_seq=options.from_seq, to_seq=options.to_seq
        )
    else:
        report = asyncio.run(
            verify_database(_resolve_dsn(options), verify_key, options.from_seq, options.to_seq)
        )
    print(report.summary())
    return EXIT_OK if report.ok else EXIT_BROKEN


def _check_range(options: argparse.Namespace) -> None:
    if (
        options.from_seq is not None
        and options.to_seq is not None
        and options.from_seq > options.to_seq
    ):
        raise _UsageError(f"--from {options.from_seq} is after --to {options.to_seq}")


def _resolve_dsn(options: argparse.Namespace) -> str:
    if options.dsn_env is not None:
        dsn = os.environ.get(options.dsn_env)
        if not dsn:
            raise _UsageError(f"environment variable {options.dsn_env} is not set or empty")
        source = f"the value of {options.dsn_env}"
    else:
        dsn = options.dsn
        source = "--dsn"
    if not dsn.startswith(("postgresql://", "postgres://")):
        raise _UsageError(f"{source} must be a postgresql:// URL")
    return dsn

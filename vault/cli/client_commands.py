"""The ``tokenvault tokenize`` and ``tokenvault detokenize`` subcommands.

Both commands read values (or tokens) from arguments, a CSV or JSONL file, or standard input,
send them to a running server with ``tokenvault_client`` and write one JSON line per input
record to standard output, in input order. Exit codes: 0 when every item succeeded, 1 when
some items failed, 2 for usage, input, connection and whole-call errors. Messages on standard
error never contain a value or a token.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeAlias

from tokenvault_client import (
    DetokenizeItem,
    DetokenizeOutcome,
    ItemError,
    Reveal,
    TokenizeItem,
    TokenizeOutcome,
    TokenvaultClient,
    TokenvaultClientError,
)

# The redundant alias marks DEFAULT_TIMEOUT_SECONDS as re-exported: callers read it from here.
from vault.cli.connection import DEFAULT_TIMEOUT_SECONDS as DEFAULT_TIMEOUT_SECONDS
from vault.cli.connection import (
    CommandError,
    add_connection_arguments,
    describe_call_error,
    positive_int,
    resolve_connection,
)

EXIT_OK = 0
EXIT_ITEM_ERRORS = 1
EXIT_FAILURE = 2

JSONL_SUFFIXES = (".jsonl", ".ndjson")
# CSV columns that carry per-record settings rather than the value.
TEMPLATE_COLUMN = "template"
REFERENCE_COLUMN = "reference"
INPUT_FORMATS = ("csv", "jsonl", "lines")

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


@dataclass(frozen=True)
class InputRecord:
    """One value or token read from the input, with the settings its record carries.

    ``line`` is the 1-based line of the record in its source, or the position of a
    command-line argument. It becomes the output reference when the record has none.
    """

    line: int
    value: str = field(repr=False)
    template: str | None = None
    reference: str | None = None
    metadata: dict[str, str] | None = field(default=None, repr=False)

    @property
    def output_reference(self) -> str:
        return self.reference if self.reference else str(self.line)


# Parsers


def add_tokenize_parser(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Add the ``tokenize`` subcommand, whose ``func`` runs it and returns the exit code."""
    parser = subparsers.add_parser(
        "tokenize",
        help="replace values with tokens using a running server",
        description=(
            "Tokenize values and print one JSON line per input record, in input order: "
            '{"reference", "template", "token"} or {"reference", "template", "error"}. '
            "Exit code 0 when every item succeeded, 1 when some failed, 2 on other errors."
        ),
    )
    _add_input_arguments(parser, field_name="value")
    add_connection_arguments(parser, default_caller="gateway")
    parser.set_defaults(func=run_tokenize)
    return parser


def add_detokenize_parser(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Add the ``detokenize`` subcommand, whose ``func`` runs it and returns the exit code."""
    parser = subparsers.add_parser(
        "detokenize",
        help="turn tokens back into values using a running server",
        description=(
            "Detokenize tokens and print one JSON line per input record, in input order: "
            '{"reference", "template", "value", "metadata"} or '
            '{"reference", "template", "error"}; metadata appears only when non-empty. '
            "Exit code 0 when every item succeeded, 1 when some failed, 2 on other errors."
        ),
    )
    parser.add_argument(
        "--reveal",
        required=True,
        choices=[reveal.value for reveal in Reveal],
        help="return the whole value (full) or the value with its sensitive part masked",
    )
    parser.add_argument(
        "--purpose",
        default="",
        metavar="TEXT",
        help="reason for the access, such as a ticket id, recorded in the audit trail "
        "(at most 256 characters)",
    )
    _add_input_arguments(parser, field_name="token")
    add_connection_arguments(parser, default_caller="backoffice")
    parser.set_defaults(func=run_detokenize)
    return parser


def _add_input_arguments(parser: argparse.ArgumentParser, *, field_name: str) -> None:
    group = parser.add_argument_group("input")
    group.add_argument(
        "values",
        nargs="*",
        metavar=field_name.upper(),
        help=f"{field_name}s to send. Without them and without --file, one {field_name} per "
        "line is read from standard input",
    )
    group.add_argument(
        "--template",
        metavar="NAME",
        help="template for records that do not name their own (required unless every record does)",
    )
    group.add_argument(
        "--file",
        metavar="PATH",
        help="read records from PATH ('-' for standard input): JSONL when the name ends in "
        f".jsonl or .ndjson (fields {field_name}, template, reference"
        + (", metadata" if field_name == "value" else "")
        + "), otherwise CSV with a header row (optional template and reference columns)",
    )
    group.add_argument(
        "--format",
        choices=INPUT_FORMATS,
        help="format of --file, overriding the guess from its name ('lines' is one "
        f"{field_name} per line)",
    )
    group.add_argument(
        "--column",
        metavar="NAME",
        help=f"CSV column holding the {field_name}s (default: the first column other than "
        "template and reference)",
    )
    group.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="maximum items per request (default: the server's limit, or 1000 if the caller "
        "may not ask for it)",
    )


# Commands


def run_tokenize(args: argparse.Namespace) -> int:
    """Run ``tokenvault tokenize`` and return its exit code."""

    def call(client: TokenvaultClient, records: list[InputRecord]) -> list[dict[str, Any]]:
        items = [
            TokenizeItem(
                template=_record_template(record, args.template),
                value=record.value,
                reference=record.reference or "",
                metadata=record.metadata,
            )
            for record in records
        ]
        outcomes = client.tokenize(items)
        return [
            tokenize_output(record, outcome)
            for record, outcome in zip(records, outcomes, strict=True)
        ]

    return _run(args, "tokenize", value_field="value", call=call)


def run_detokenize(args: argparse.Namespace) -> int:
    """Run ``tokenvault detokenize`` and return its exit code."""
    reveal = Reveal(args.reveal)

    def call(client: TokenvaultClient, records: list[InputRecord]) -> list[dict[str, Any]]:
        items = [
            DetokenizeItem(
                template=_record_template(record, args.template),
                token=record.value,
                reference=record.reference or "",
            )
            for record in records
        ]
        outcomes = client.detokenize(items, reveal=reveal, purpose=args.purpose)
        return [
            detokenize_output(record, outcome)
            for record, outcome in zip(records, outcomes, strict=True)
        ]

    return _run(args, "detokenize", value_field="token", call=call)


def _run(
    args: argparse.Namespace,
    command: str,
    *,
    value_field: str,
    call: Callable[[TokenvaultClient, list[InputRecord]], list[dict[str, Any]]],
) -> int:
    target = ""
    try:
        # The connection settings are checked before reading input, so a missing certificate
        # is reported before the command waits on standard input.
        target, tls = resolve_connection(args)
        records = read_input(args, sys.stdin, value_field=value_field)
        check_templates(records, args.template)
        if not records:
            return EXIT_OK
        with TokenvaultClient(
            target, tls, timeout=args.timeout, max_batch_items=args.batch_size
        ) as client:
            lines = call(client, records)
    except CommandError as error:
        print(f"tokenvault {command}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except TokenvaultClientError as error:
        print(f"tokenvault {command}: {describe_call_error(error, target)}", file=sys.stderr)
        return EXIT_FAILURE

    try:
        for line in lines:
            sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (for example `head`) closed the pipe. Point stdout at /dev/null so that
        # the interpreter's final flush does not raise again, as the Python docs recommend.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    return EXIT_OK if all("error" not in line for line in lines) else EXIT_ITEM_ERRORS


def _record_template(record: InputRecord, default: str | None) -> str:
    # check_templates ran before, so one of the two is set.
    return record.template or default or ""


def check_templates(records: Sequence[InputRecord], default_template: str | None) -> None:
    """Raise CommandError if a record names no template and --template is not given."""
    if default_template:
        return
    for record in records:
        if not record.template:
            raise CommandError(
                f"record {record.line} names no template: pass --template NAME, or give "
                "every record a template (CSV column or JSONL field 'template')"
            )


# Output


def tokenize_output(record: InputRecord, outcome: TokenizeOutcome) -> dict[str, Any]:
    """Build the JSON object printed for one tokenized record."""
    line: dict[str, Any] = {"reference": record.output_reference, "template": outcome.template}
    if outcome.error is not None:
        line["error"] = _error_output(outcome.error)
    else:
        line["token"] = outcome.token
    return line


def detokenize_output(record: InputRecord, outcome: DetokenizeOutcome) -> dict[str, Any]:
    """Build the JSON object printed for one detokenized record."""
    line: dict[str, Any] = {"reference": record.output_reference, "template": outcome.template}
    if outcome.error is not None:
        line["error"] = _error_output(outcome.error)
    else:
        line["value"] = outcome.value
    if outcome.metadata:
        line["metadata"] = dict(outcome.metadata)
    return line


def _error_output(error: ItemError) -> dict[str, str]:
    return {"code": error.code.name, "message": error.message}


# Input


def read_input(args: argparse.Namespace, stdin: TextIO, *, value_field: str) -> list[InputRecord]:
    """Read the records that the arguments select: values, --file, or standard input."""
    if args.values and args.file is not None:
        raise CommandError(f"pass {value_field}s as arguments or --file, not both")
    if args.file is None and args.format is not None:
        raise CommandError("--format applies only to --file")
    if args.values:
        if args.column is not None:
            raise CommandError("--column applies only to CSV input")
        return records_from_args(args.values)

    if args.file is None:
        if args.column is not None:
            raise CommandError("--column applies only to CSV input")
        if stdin.isatty():
            print(
                f"reading {value_field}s from standard input, one per line; end with Ctrl-D",
                file=sys.stderr,
            )
        return records_from_lines(stdin)

    if args.file == "-" and args.format is None:
        # Standard input has no name to go by, so look at the data: JSON lines start with "{".
        # This lets `tokenvault tokenize ... | tokenvault detokenize --file -` work as is.
        stdin = io.StringIO(stdin.read())
        first = next((line for line in stdin.getvalue().splitlines() if line.strip()), "")
        stdin.seek(0)
        input_format = "jsonl" if first.lstrip().startswith("{") else "csv"
    else:
        input_format = args.format or guess_format(args.file)
    if args.column is not None and input_format != "csv":
        raise CommandError("--column applies only to CSV input")
    source = "standard input" if args.file == "-" else args.file
    with _open_input(args.file, stdin) as stream:
        try:
            if input_format == "jsonl":
                return records_from_jsonl(stream, value_field=value_field, source=source)
            if input_format == "lines":
                return records_from_lines(stream)
            return records_from_csv(stream, column=args.column, source=source)
        except UnicodeDecodeError:
            raise CommandError(f"{source} is not valid UTF-8") from None


def guess_format(path: str) -> str:
    """Return "jsonl" for a .jsonl or .ndjson name, else "csv"."""
    return "jsonl" if path.lower().endswith(JSONL_SUFFIXES) else "csv"


@contextmanager
def _open_input(path: str, stdin: TextIO) -> Iterator[TextIO]:
    if path == "-":
        yield stdin
        return
    try:
        # utf-8-sig drops the byte order mark that spreadsheet programs write.
        stream = open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise CommandError(f"--file: file not found: {path}") from None
    except OSError as error:
        raise CommandError(f"--file: cannot read {path}: {error.strerror}") from None
    with stream:
        yield stream


def records_from_args(values: Sequence[str]) -> list[InputRecord]:
    """Make one record per command-line value, numbered from 1 by position."""
    return [InputRecord(line=position, value=value) for position, value in enumerate(values, 1)]


def records_from_lines(stream: TextIO) -> list[InputRecord]:
    """Read one value per line, skipping blank lines but counting them in line numbers."""
    records = []
    for line_number, line in enumerate(stream, 1):
        value = line.rstrip("\r\n")
        if value.strip():
            records.append(InputRecord(line=line_number, value=value))
    return records


def records_from_csv(stream: TextIO, *, column: str | None, source: str) -> list[InputRecord]:
    """Read a CSV file with a header row.

    The value comes from ``column``, or else from the first column other than template and
    reference. Optional ``template`` and ``reference`` columns set those per record, and an
    empty cell means "not given". Blank rows are skipped. ``line`` is the file line on which
    the record starts, so the first record after the header is line 2.
    """
    reader = csv.reader(stream)
    try:
        header = next(reader, None)
    except csv.Error as error:
        raise CommandError(f"{source} line 1: invalid CSV: {error}") from None
    if header is None:
        return []
    names = [name.strip() for name in header]
    if names:
        names[0] = names[0].lstrip("\ufeff")

    value_index = _value_column_index(names, column, source)
    template_index = names.index(TEMPLATE_COLUMN) if TEMPLATE_COLUMN in names else None
    reference_index = names.index(REFERENCE_COLUMN) if REFERENCE_COLUMN in names else None

    records = []
    while True:
        start_line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise CommandError(f"{source} line {reader.line_num}: invalid CSV: {error}") from None
        if not any(cell.strip() for cell in row):
            continue
        records.append(
            InputRecord(
                line=start_line,
                value=_cell(row, value_index) or "",
                template=_cell(row, template_index),
                reference=_cell(row, reference_index),
            )
        )
    return records


def _value_column_index(names: list[str], column: str | None, source: str) -> int:
    if column is not None:
        if column not in names:
            raise CommandError(f"{source} has no column {column!r} (columns: {', '.join(names)})")
        return names.index(column)
    for index, name in enumerate(names):
        if name not in (TEMPLATE_COLUMN, REFERENCE_COLUMN):
            return index
    raise CommandError(
        f"{source} has no value column: its header names only template and reference"
    )


def _cell(row: list[str], index: int | None) -> str | None:
    if index is None or index >= len(row):
        return None
    return row[index] or None


def records_from_jsonl(stream: TextIO, *, value_field: str, source: str) -> list[InputRecord]:
    """Read one JSON object per line: ``value_field`` plus optional template and reference.

    For tokenize (``value_field`` "value"), an optional ``metadata`` object of strings is
    read too. Other fields are ignored, so the output of one command can feed the other.
    """
    records = []
    for line_number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        where = f"{source} line {line_number}"
        try:
            document = json.loads(line)
        except json.JSONDecodeError as error:
            raise CommandError(
                f"{where}: invalid JSON: {error.msg} at column {error.colno}"
            ) from None
        if not isinstance(document, dict):
            raise CommandError(f"{where}: expected a JSON object")

        value = document.get(value_field)
        if not isinstance(value, str):
            state = "missing" if value is None else "not a string"
            raise CommandError(f"{where}: field {value_field!r} is {state}")
        records.append(
            InputRecord(
                line=line_number,
                value=value,
                template=_optional_string(document, "template", where),
                reference=_reference_field(document, where),
                metadata=_metadata_field(document, where) if value_field == "value" else None,
            )
        )
    return records


def _optional_string(document: dict[str, Any], name: str, where: str) -> str | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise CommandError(f"{where}: field {name!r} must be a string")
    return value or None


def _reference_field(document: dict[str, Any], where: str) -> str | None:
    reference = document.get(REFERENCE_COLUMN)
    # Integer references are accepted because the output of these commands uses line numbers.
    if isinstance(reference, int) and not isinstance(reference, bool):
        return str(reference)
    return _optional_string(document, REFERENCE_COLUMN, where)


def _metadata_field(document: dict[str, Any], where: str) -> dict[str, str] | None:
    metadata = document.get("metadata")
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(
        isinstance(value, str) for value in metadata.values()
    ):
        raise CommandError(f"{where}: field 'metadata' must be an object of strings")
    return metadata or None

"""`tokenvault audit pull`: fetch the audit trail from a running server (scope audit:read).

Writes the same JSON lines as `tokenvault audit export`, so `tokenvault audit verify --file`
checks the result offline. Useful where the auditor has a client certificate but no database
access.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from tokenvault.v1 import audit_log_pb2 as pb
from tokenvault.v1 import audit_log_pb2_grpc as pb_grpc
from tokenvault_client.errors import error_from_rpc

from vault.cli.connection import (
    CommandError,
    add_connection_arguments,
    describe_call_error,
    resolve_connection,
)

DEFAULT_CALLER = "auditor"


def add_pull_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "pull",
        help="fetch the audit trail from a running server as JSON lines (scope audit:read)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--from", dest="from_seq", type=int, default=0, metavar="N", help="first seq (default: 1)"
    )
    parser.add_argument(
        "--to",
        dest="to_seq",
        type=int,
        default=0,
        metavar="N",
        help="last seq (default: 99,999 after the first)",
    )
    parser.add_argument(
        "--output", type=Path, metavar="FILE", help="file to write (default: stdout)"
    )
    add_connection_arguments(parser, default_caller=DEFAULT_CALLER)
    parser.set_defaults(func=run_pull)


def run_pull(options: argparse.Namespace) -> int:
    try:
        target, tls = resolve_connection(options)
    except CommandError as problem:
        print(f"tokenvault audit pull: {problem}", file=sys.stderr)
        return 2
    credentials = grpc.ssl_channel_credentials(tls.ca_cert, tls.client_key, tls.client_cert)
    channel_options = (
        [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    )
    request = pb.ExportAuditRequest(from_seq=options.from_seq, to_seq=options.to_seq)
    out = options.output.open("w") if options.output else sys.stdout
    try:
        with grpc.secure_channel(target, credentials, options=channel_options) as channel:
            for record in pb_grpc.AuditLogStub(channel).Export(request, timeout=options.timeout):
                out.write(record.json + "\n")
    except grpc.RpcError as rpc_error:
        failure = error_from_rpc(rpc_error)
        print(f"tokenvault audit pull: {describe_call_error(failure, target)}", file=sys.stderr)
        return 2
    finally:
        if options.output:
            out.close()
    return 0

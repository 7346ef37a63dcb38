"""`tokenvault callers`: revoke and restore callers, lift suspensions, reload the policy.

Each subcommand calls the CallerAdmin service, which needs the scope admin:callers (the dev
state's `security` caller has it), and prints the reply as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from tokenvault.v1 import caller_admin_pb2 as pb
from tokenvault.v1 import caller_admin_pb2_grpc as pb_grpc
from tokenvault_client.errors import TokenvaultClientError, error_from_rpc

from vault.cli.connection import (
    CommandError,
    add_connection_arguments,
    describe_call_error,
    resolve_connection,
)

DEFAULT_CALLER = "security"


def _subject(args: argparse.Namespace) -> dict[str, str]:
    # identity and serial are one proto oneof: set only the one given.
    return {"identity": args.identity} if args.identity else {"serial": args.serial}


# Subcommand -> (help, RPC method name, request builder from the parsed arguments).
Request = Callable[[argparse.Namespace], Any]
_COMMANDS: dict[str, tuple[str, str, Request]] = {
    "revoke": (
        "revoke an identity or a certificate serial on every replica",
        "RevokeCaller",
        lambda a: pb.RevokeCallerRequest(**_subject(a), reason=a.reason),
    ),
    "restore": (
        "restore a revoked identity or certificate serial",
        "RestoreCaller",
        lambda a: pb.RestoreCallerRequest(**_subject(a)),
    ),
    "revocations": (
        "list the revocations in force",
        "ListRevocations",
        lambda a: pb.ListRevocationsRequest(),
    ),
    "suspensions": (
        "list the suspensions in force",
        "ListSuspensions",
        lambda a: pb.ListSuspensionsRequest(),
    ),
    "lift": (
        "lift the suspension of an identity",
        "LiftSuspension",
        lambda a: pb.LiftSuspensionRequest(identity=a.identity),
    ),
    "reload-policy": (
        "reload the policy file on the replica called now",
        "ReloadPolicy",
        lambda a: pb.ReloadPolicyRequest(),
    ),
    "policy-status": (
        "show which policy is in force and the last reload error",
        "GetPolicyStatus",
        lambda a: pb.GetPolicyStatusRequest(),
    ),
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "callers",
        help="revoke callers, lift suspensions, reload the policy (scope admin:callers)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="callers_command", required=True, metavar="COMMAND")
    for name, (help_text, _, _) in _COMMANDS.items():
        command = commands.add_parser(
            name, help=help_text, description=help_text[0].upper() + help_text[1:] + "."
        )
        if name in ("revoke", "restore"):
            subject = command.add_mutually_exclusive_group(required=True)
            subject.add_argument("--identity", help="caller identity, e.g. a SPIFFE ID")
            subject.add_argument("--serial", help="client certificate serial number, in hex")
        if name == "revoke":
            command.add_argument("--reason", required=True, help="why, for the record")
        if name == "lift":
            command.add_argument("--identity", required=True, help="the suspended identity")
        add_connection_arguments(command, default_caller=DEFAULT_CALLER)
        command.set_defaults(func=run)


def run(options: argparse.Namespace) -> int:
    _, method, build = _COMMANDS[options.callers_command]
    try:
        target, tls = resolve_connection(options)
    except CommandError as problem:
        print(f"tokenvault callers: {problem}", file=sys.stderr)
        return 2
    credentials = grpc.ssl_channel_credentials(tls.ca_cert, tls.client_key, tls.client_cert)
    channel_options = (
        [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    )
    with grpc.secure_channel(target, credentials, options=channel_options) as channel:
        stub = pb_grpc.CallerAdminStub(channel)
        try:
            reply = getattr(stub, method)(build(options), timeout=options.timeout)
        except grpc.RpcError as rpc_error:
            failure: TokenvaultClientError = error_from_rpc(rpc_error)
            print(f"tokenvault callers: {describe_call_error(failure, target)}", file=sys.stderr)
            return 2
    print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True), indent=2))
    return 0

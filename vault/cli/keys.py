"""`tokenvault keys`: key custodian commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from keys.local import LocalKekProvider


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("keys", help="manage key-encryption keys")
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


def init_local(options: argparse.Namespace) -> int:
    provider = LocalKekProvider.create(options.file)
    print(f"created {options.file} with key id {provider.describe().key_id}")
    provider.close()
    return 0

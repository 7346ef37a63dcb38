"""The `tokenvault` command: run the service, and call it from the shell."""

from __future__ import annotations

import argparse
import logging
import os
import sys

# The embedded PostgreSQL is started with fork/exec while gRPC threads run. gRPC's fork
# handlers are not needed for that, and they would log a notice on every start and stop.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
from collections.abc import Sequence

from keys.errors import KeyProviderError
from vault.errors import ConfigError
from vault.logs import configure_logging
from vault.store.embedded import EmbeddedPostgresError

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from vault.audit import cli as audit_cli
    from vault.cli import callers, client_commands, dev, keys, serve

    parser = argparse.ArgumentParser(
        prog="tokenvault",
        description="Format-preserving tokenization of card numbers, IBANs and personal data.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default: %(default)s",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="log line format on stderr (default: %(default)s)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dev.add_parser(subparsers)
    serve.add_parser(subparsers)
    keys.add_parser(subparsers)
    audit_cli.add_parser(subparsers)
    callers.add_parser(subparsers)
    client_commands.add_tokenize_parser(subparsers)
    client_commands.add_detokenize_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    configure_logging(options.log_level, options.log_format)
    try:
        return int(options.func(options))
    except (ConfigError, KeyProviderError, EmbeddedPostgresError) as exc:
        print(f"tokenvault {options.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

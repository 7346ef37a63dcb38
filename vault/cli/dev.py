"""`tokenvault dev`: a complete local service on a fresh machine.

Creates (once) a state folder with a development CA, a server certificate for 127.0.0.1 and
localhost, client certificates for the demo callers, a local KEK file and a policy; starts an
embedded PostgreSQL; serves on 127.0.0.1; runs a demo over the shipped public test data; then
serves until interrupted. Nothing here is fit for production: `tokenvault serve` is.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from keys.local import LocalKekProvider
from vault import pki
from vault.audit.signing import generate_keypair
from vault.devstate import DEMO_CALLERS, StatePaths, default_state_dir
from vault.server import RunningServer, start_server
from vault.settings import AuditSettings, KekSettings, Settings, TlsSettings
from vault.store.db import ensure_database
from vault.store.embedded import EmbeddedPostgres

logger = logging.getLogger(__name__)

DEV_DATABASE = "tokenvault"

DEV_POLICY = """\
# Development policy written by `tokenvault dev`. Each caller is the SPIFFE ID in its
# client certificate (clients/<name>.pem); scopes are per template, * means every template.

[[callers]]
identity = "spiffe://tokenvault.dev/gateway"
scopes = ["tokenize:*"]

[[callers]]
identity = "spiffe://tokenvault.dev/backoffice"
scopes = ["detokenize:*"]

[[callers]]
identity = "spiffe://tokenvault.dev/support"
scopes = ["detokenize.masked:*"]

[[callers]]
identity = "spiffe://tokenvault.dev/custodian"
scopes = ["admin:keys"]

[[callers]]
identity = "spiffe://tokenvault.dev/custodian2"
scopes = ["admin:keys"]

[[callers]]
identity = "spiffe://tokenvault.dev/security"
scopes = ["admin:callers"]

[[callers]]
identity = "spiffe://tokenvault.dev/auditor"
scopes = ["audit:read"]
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dev",
        help="run a local service with an embedded PostgreSQL and demo certificates",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=None,
        metavar="DIR",
        help="state folder (default: $TOKENVAULT_STATE_DIR or .tokenvault)",
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:50051",
        metavar="HOST:PORT",
        help="address to serve on; port 0 picks a free port (default: %(default)s)",
    )
    parser.add_argument(
        "--no-demo",
        action="store_true",
        help="skip the demo that tokenizes the shipped test data at start-up",
    )
    parser.add_argument(
        "--exit-after-demo",
        action="store_true",
        help="stop the service after the demo instead of serving until interrupted",
    )
    parser.set_defaults(func=run)


def run(options: argparse.Namespace) -> int:
    paths = StatePaths(options.state or default_state_dir())
    prepare_state(paths)
    database = EmbeddedPostgres(paths.root)
    admin_dsn = database.start()
    try:
        return asyncio.run(_serve(paths, database, admin_dsn, options))
    finally:
        database.stop()


def prepare_state(paths: StatePaths) -> None:
    """Create whatever the state folder lacks: certificates, KEK and policy."""
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not paths.ca_cert.exists():
        _create_certificates(paths)
    LocalKekProvider.load_or_create(paths.kek).close()
    if not paths.audit_signing_key.exists():
        generate_keypair(paths.audit_signing_key, paths.audit_verify_key)
    if not paths.policy.exists():
        paths.policy.write_text(DEV_POLICY)
    missing = [caller for caller in DEMO_CALLERS if not paths.client_cert(caller).exists()]
    if missing:
        _issue_client_certificates(paths, missing)


def _create_certificates(paths: StatePaths) -> None:
    logger.info("creating development CA and certificates", extra={"state_dir": str(paths.root)})
    ca = pki.create_ca("Tokenvault development CA")
    pki.write_private_key(paths.ca_key, ca.private_key, overwrite=True)
    pki.write_certificate(paths.ca_cert, ca.certificate, overwrite=True)

    server = pki.issue_server_certificate(ca, hosts=["127.0.0.1", "localhost"])
    pki.write_private_key(paths.server_key, server.private_key, overwrite=True)
    pki.write_certificate(paths.server_cert, server.certificate, overwrite=True)

    _issue_client_certificates(paths, list(DEMO_CALLERS), ca)


def _issue_client_certificates(
    paths: StatePaths, callers: list[str], ca: pki.CertificateAuthority | None = None
) -> None:
    ca = ca or pki.load_ca(paths.ca_cert, paths.ca_key)
    paths.client_cert("gateway").parent.mkdir(exist_ok=True, mode=0o700)
    for caller in callers:
        issued = pki.issue_client_certificate(
            ca, common_name=caller, spiffe_id=StatePaths.spiffe_id(caller)
        )
        pki.write_private_key(paths.client_key(caller), issued.private_key, overwrite=True)
        pki.write_certificate(paths.client_cert(caller), issued.certificate, overwrite=True)


def dev_settings(paths: StatePaths, dsn: str, listen: str) -> Settings:
    return Settings(
        listen=listen,
        tls=TlsSettings(
            cert_file=paths.server_cert, key_file=paths.server_key, client_ca_file=paths.ca_cert
        ),
        dsn=dsn,
        kek=KekSettings(provider="local", file=paths.kek),
        policy_file=paths.policy,
        audit=AuditSettings(signing_key_file=paths.audit_signing_key, checkpoint_seconds=10),
        shutdown_grace_seconds=2.0,
    )


async def _serve(
    paths: StatePaths, database: EmbeddedPostgres, admin_dsn: str, options: argparse.Namespace
) -> int:
    await ensure_database(admin_dsn, DEV_DATABASE)
    settings = dev_settings(paths, database.dsn(DEV_DATABASE), options.listen)
    running = await start_server(settings)
    endpoint = f"127.0.0.1:{running.port}"
    paths.endpoint.write_text(endpoint + "\n")
    _print_usage(paths, endpoint, _without_password(settings.dsn))

    try:
        if not options.no_demo:
            from vault.demo import run_demo

            ok = await asyncio.to_thread(run_demo, paths, endpoint)
            if not ok:
                print("demo: some checks failed; see above", file=sys.stderr)
                if options.exit_after_demo:
                    return 1
        if options.exit_after_demo:
            return 0
        print(f"Serving on {endpoint}; press Ctrl+C to stop.", flush=True)
        await _wait_for_signal()
        return 0
    finally:
        await _stop(running, paths)


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _stop(running: RunningServer, paths: StatePaths) -> None:
    await running.stop()
    paths.endpoint.unlink(missing_ok=True)


def _without_password(dsn: str) -> str:
    parts = urlsplit(dsn)
    netloc = f"{parts.username}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _print_usage(paths: StatePaths, endpoint: str, database_url: str) -> None:
    state = "" if paths.root == Path(".tokenvault") else f" --state {paths.root}"
    print(
        f"""
Tokenvault is serving on {endpoint} (mutual TLS; state folder {paths.root}).

Database: {database_url}
  (password in {paths.root / "postgres-password"}; the port changes on every start)

Try it from another terminal (after `. .venv/bin/activate`):
  tokenvault tokenize{state} --template pan 4111111111111111
  tokenvault tokenize{state} --template iban "GB82 WEST 1234 5698 7654 32"
  tokenvault detokenize{state} --template pan --reveal full TOKEN
  tokenvault detokenize{state} --as support --template pan --reveal masked TOKEN
  tokenvault keys list{state}
  tokenvault audit pull{state} --output audit.jsonl
  tokenvault audit verify --public-key {paths.audit_verify_key} --file audit.jsonl

Demo callers (certificates in {paths.root / "clients"}):"""
    )
    for caller, allowed in DEMO_CALLERS.items():
        print(f"  {caller:<11} {StatePaths.spiffe_id(caller)}: {allowed}")
    print(flush=True)

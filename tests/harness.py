"""A real Tokenvault server for end-to-end tests: mTLS on 127.0.0.1, real PostgreSQL.

The server runs on its own event loop in a background thread, so tests call it through the
blocking client library exactly as a user would.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from tokenvault_client import TlsConfig, TokenvaultClient

from keys.local import LocalKekProvider
from vault import pki
from vault.server import RunningServer, start_server
from vault.settings import KekSettings, Settings, TlsSettings
from vault.store.db import ensure_database
from vault.store.embedded import EmbeddedPostgres

CALLERS = ("gateway", "backoffice", "support", "nobody", "custodian", "custodian2", "security")

TEST_POLICY = """
[[callers]]
identity = "spiffe://tokenvault.test/gateway"
scopes = ["tokenize:*"]

[[callers]]
identity = "spiffe://tokenvault.test/backoffice"
scopes = ["detokenize:*", "tokenize:iban"]

[[callers]]
identity = "spiffe://tokenvault.test/support"
scopes = ["detokenize.masked:*"]

[[callers]]
identity = "spiffe://tokenvault.test/custodian"
scopes = ["admin:keys"]

[[callers]]
identity = "spiffe://tokenvault.test/custodian2"
scopes = ["admin:keys"]

[[callers]]
identity = "spiffe://tokenvault.test/security"
scopes = ["admin:callers"]
"""


def spiffe_id(caller: str) -> str:
    return f"spiffe://tokenvault.test/{caller}"


class ServiceHarness:
    def __init__(
        self,
        pg: EmbeddedPostgres,
        folder: Path,
        *,
        policy: str = TEST_POLICY,
        templates: Mapping[str, Mapping[str, Any]] | None = None,
        max_batch_items: int = 10_000,
        kek: KekSettings | None = None,
        database: str | None = None,
    ) -> None:
        self.pg = pg
        self.folder = folder
        self.policy = policy
        self.templates = dict(templates or {})
        self.max_batch_items = max_batch_items
        self.database = database or f"e2e_{uuid.uuid4().hex[:12]}"
        self.kek = kek
        # Callers beyond CALLERS that a test's policy names; each gets a client certificate.
        self.extra_callers: tuple[str, ...] = ()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.running: RunningServer | None = None

    # Lifecycle

    def start(self) -> ServiceHarness:
        self.write_files()
        self._thread.start()
        self.running = self.call(self._start())
        return self

    def stop(self) -> None:
        if self.running is not None:
            self.call(self.running.stop(0.5))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def call(self, coroutine: Any) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=60)

    @property
    def endpoint(self) -> str:
        assert self.running is not None
        return f"127.0.0.1:{self.running.port}"

    @property
    def dsn(self) -> str:
        return self.pg.dsn(self.database)

    def tls(self, caller: str) -> TlsConfig:
        return TlsConfig.from_files(
            self.folder / "ca.pem",
            self.folder / f"{caller}.pem",
            self.folder / f"{caller}-key.pem",
        )

    def client(self, caller: str, **kwargs: Any) -> TokenvaultClient:
        tls = TlsConfig.from_files(
            self.folder / "ca.pem",
            self.folder / f"{caller}.pem",
            self.folder / f"{caller}-key.pem",
        )
        return TokenvaultClient(self.endpoint, tls, **kwargs)

    def settings(self) -> Settings:
        return Settings(
            listen="127.0.0.1:0",
            tls=TlsSettings(
                cert_file=self.folder / "server.pem",
                key_file=self.folder / "server-key.pem",
                client_ca_file=self.folder / "ca.pem",
            ),
            dsn=self.dsn,
            kek=self.kek or KekSettings(provider="local", file=self.folder / "kek.json"),
            policy_file=self.folder / "policy.toml",
            templates=self.templates,
            max_batch_items=self.max_batch_items,
            shutdown_grace_seconds=0.5,
        )

    async def _start(self) -> RunningServer:
        await ensure_database(self.pg.dsn(), self.database)
        return await start_server(self.settings())

    def write_files(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        ca = pki.create_ca("Tokenvault test CA")
        pki.write_certificate(self.folder / "ca.pem", ca.certificate, overwrite=True)
        server = pki.issue_server_certificate(ca, hosts=["127.0.0.1", "localhost"])
        pki.write_certificate(self.folder / "server.pem", server.certificate, overwrite=True)
        pki.write_private_key(self.folder / "server-key.pem", server.private_key, overwrite=True)
        for caller in CALLERS + self.extra_callers:
            issued = pki.issue_client_certificate(
                ca, common_name=caller, spiffe_id=spiffe_id(caller)
            )
            pki.write_certificate(self.folder / f"{caller}.pem", issued.certificate, overwrite=True)
            pki.write_private_key(
                self.folder / f"{caller}-key.pem", issued.private_key, overwrite=True
            )

        # A client from a CA the server does not trust, with an identity the policy grants.
        stranger_ca = pki.create_ca("Some other CA")
        stranger = pki.issue_client_certificate(
            stranger_ca, common_name="gateway", spiffe_id=spiffe_id("gateway")
        )
        pki.write_certificate(self.folder / "stranger.pem", stranger.certificate, overwrite=True)
        pki.write_private_key(
            self.folder / "stranger-key.pem", stranger.private_key, overwrite=True
        )

        if not (self.folder / "kek.json").exists():
            LocalKekProvider.create(self.folder / "kek.json").close()
        (self.folder / "policy.toml").write_text(self.policy)

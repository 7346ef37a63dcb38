"""Server factory: build every component from settings and serve gRPC over mutual TLS."""

from __future__ import annotations

import asyncio
import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tokenvault.v1 import key_admin_pb2, key_admin_pb2_grpc, tokenization_pb2, tokenization_pb2_grpc

from keys.datakeys import DataKeyManager
from keys.lifecycle import KeyChangeListener, KeyLifecycle
from keys.provider import KekProvider
from keys.reencrypt import Reencryptor
from vault.admin import KeyAdministration
from vault.admin_servicer import KeyAdminServicer
from vault.errors import ConfigError
from vault.formats import load_templates
from vault.formats.base import Template
from vault.kek import open_kek_provider
from vault.modes.vaulted import VaultedTokenizer
from vault.modes.vaultless import VaultlessTokenizer
from vault.policy import Policy, load_policy
from vault.service import TokenizationService
from vault.servicer import TokenizationServicer
from vault.settings import Settings
from vault.store.audit import AuditLog
from vault.store.db import create_pool, migrate
from vault.store.tokens import TokenStore

logger = logging.getLogger(__name__)

SERVICE_NAME = tokenization_pb2.DESCRIPTOR.services_by_name["Tokenization"].full_name
ADMIN_SERVICE_NAME = key_admin_pb2.DESCRIPTOR.services_by_name["KeyAdmin"].full_name
EXPIRED_TOKEN_SWEEP_SECONDS = 300


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    pool: asyncpg.Pool
    provider: KekProvider
    health: health.aio.HealthServicer
    service: TokenizationService
    keys: DataKeyManager
    admin: KeyAdministration
    listener: KeyChangeListener
    grace_seconds: float
    _sweeper: asyncio.Task[None] | None = None

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, let in-flight calls finish for ``grace`` seconds, then close."""
        grace = self.grace_seconds if grace is None else grace
        logger.info("server stopping", extra={"port": self.port, "grace_seconds": grace})
        await self.health.enter_graceful_shutdown()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.server.stop(grace)
        await self.admin.close()
        await self.listener.stop()
        await self.pool.close()
        self.provider.close()
        logger.info("server stopped", extra={"port": self.port})

    async def wait(self) -> None:
        await self.server.wait_for_termination()


def merged_template_settings(settings: Settings) -> dict[str, Mapping[str, Any]]:
    """Return the shipped templates overlaid with the configuration's own."""
    table: dict[str, Mapping[str, Any]] = {}
    if settings.include_default_templates:
        text = (resources.files("vault.formats") / "defaults.toml").read_text()
        table.update(tomllib.loads(text))
    table.update(settings.templates)
    return table


def build_templates(settings: Settings) -> dict[str, Template]:
    templates = load_templates(merged_template_settings(settings))
    if not templates:
        raise ConfigError("no templates are configured")
    return templates


def _server_credentials(settings: Settings) -> grpc.ServerCredentials:
    tls = settings.tls
    try:
        key = tls.key_file.read_bytes()
        cert = tls.cert_file.read_bytes()
        client_ca = tls.client_ca_file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"TLS file could not be read: {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=True
    )


async def start_server(settings: Settings) -> RunningServer:
    """Start serving; returns once the port is bound and the health status is SERVING."""
    templates = build_templates(settings)
    policy: Policy = load_policy(settings.policy_file, known_templates=templates)
    credentials = _server_credentials(settings)
    provider = open_kek_provider(settings.kek)

    pool = await create_pool(
        settings.dsn, min_size=settings.min_connections, max_size=settings.max_connections
    )
    try:
        version = await migrate(pool)
        keys = DataKeyManager(pool, provider)
        await keys.ensure(templates)
    except BaseException:
        await pool.close()
        provider.close()
        raise
    logger.info("database ready", extra={"schema_version": version, "templates": len(templates)})

    vaultless = VaultlessTokenizer(keys)
    service = TokenizationService(
        templates=templates,
        policy=lambda: policy,
        vaultless=vaultless,
        vaulted=VaultedTokenizer(keys, TokenStore(pool)),
        audit=AuditLog(pool),
        max_batch_items=settings.max_batch_items,
    )
    admin = KeyAdministration(
        templates=templates,
        lifecycle=KeyLifecycle(pool, provider, keys),
        reencryptor=Reencryptor(pool, keys),
        provider=provider,
        vaultless=vaultless,
    )
    # Other replicas' rotations arrive as notifications; the listener clears the key cache.
    listener = KeyChangeListener(
        settings.dsn, keys, on_change=lambda change: vaultless.forget(change.get("template"))
    )

    server = grpc.aio.server(
        options=[
            # gRPC sets SO_REUSEPORT by default, which lets a second server bind a port that is
            # in use and take a random share of its connections.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes * 2),
        ]
    )
    tokenization_pb2_grpc.add_TokenizationServicer_to_server(TokenizationServicer(service), server)
    key_admin_pb2_grpc.add_KeyAdminServicer_to_server(
        KeyAdminServicer(admin, lambda: policy), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    try:
        port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError:
        port = 0  # grpcio raises where older releases returned 0
    if port == 0:
        await pool.close()
        provider.close()
        raise ConfigError(
            f"server.listen: could not bind {settings.listen}; is another server using the port?"
        )
    await server.start()
    await listener.start()
    await admin.start_background()
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    running = RunningServer(
        server=server,
        port=port,
        pool=pool,
        provider=provider,
        health=health_servicer,
        service=service,
        keys=keys,
        admin=admin,
        listener=listener,
        grace_seconds=settings.shutdown_grace_seconds,
    )
    running._sweeper = asyncio.create_task(_sweep_expired(TokenStore(pool)))
    logger.info("server started", extra={"listen": settings.listen, "port": port})
    return running


async def _sweep_expired(store: TokenStore) -> None:
    while True:
        await asyncio.sleep(EXPIRED_TOKEN_SWEEP_SECONDS)
        try:
            deleted = await store.purge_expired()
        except (asyncpg.PostgresError, OSError) as exc:
            logger.warning(
                "expired-token sweep failed; retrying later", extra={"error": type(exc).__name__}
            )
            continue
        if deleted:
            logger.info("expired tokens deleted", extra={"count": deleted})

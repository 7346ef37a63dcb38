"""Server factory: build every component from settings and serve gRPC over mutual TLS."""

from __future__ import annotations

import asyncio
import logging
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tokenvault.v1 import (
    audit_log_pb2,
    audit_log_pb2_grpc,
    caller_admin_pb2,
    caller_admin_pb2_grpc,
    key_admin_pb2,
    key_admin_pb2_grpc,
    tokenization_pb2,
    tokenization_pb2_grpc,
)

from keys.datakeys import DataKeyManager
from keys.lifecycle import KeyLifecycle
from keys.listener import KeyChangeListener
from keys.provider import KekProvider
from keys.reencrypt import Reencryptor
from keys.tracing import TracedKekProvider
from vault.abuse import AnomalyDetector, ConcurrencyLimiter, RateLimiter
from vault.access.gate import AccessGate
from vault.access.policy_store import PolicyStore
from vault.access.revocation import RevocationList
from vault.access.suspension import Suspensions
from vault.admin import KeyAdministration, key_purposes
from vault.admin_servicer import KeyAdminServicer
from vault.audit.signing import load_signing_key
from vault.audit.trail import AuditTrail
from vault.audit_servicer import AuditLogServicer
from vault.call_audit import CountedAuditTrail
from vault.caller_admin import CallerAdministration
from vault.caller_admin_servicer import CallerAdminServicer
from vault.errors import ConfigError
from vault.formats import load_templates
from vault.formats.base import Template
from vault.guard import CallGuard
from vault.kek import open_kek_provider
from vault.modes.vaulted import VaultedTokenizer
from vault.modes.vaultless import VaultlessTokenizer
from vault.service import TokenizationService
from vault.servicer import TokenizationServicer
from vault.settings import Settings
from vault.store.db import create_pool, migrate
from vault.store.tokens import TokenStore
from vault.telemetry import Telemetry, setup_telemetry

logger = logging.getLogger(__name__)

SERVICE_NAME = tokenization_pb2.DESCRIPTOR.services_by_name["Tokenization"].full_name
ADMIN_SERVICE_NAME = key_admin_pb2.DESCRIPTOR.services_by_name["KeyAdmin"].full_name
CALLER_ADMIN_SERVICE_NAME = caller_admin_pb2.DESCRIPTOR.services_by_name["CallerAdmin"].full_name
AUDIT_SERVICE_NAME = audit_log_pb2.DESCRIPTOR.services_by_name["AuditLog"].full_name
EXPIRED_TOKEN_SWEEP_SECONDS = 300
ANOMALY_ACTOR = "anomaly-detector"


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    pool: asyncpg.Pool
    health: health.aio.HealthServicer
    service: TokenizationService
    keys: DataKeyManager
    admin: KeyAdministration
    policy_store: PolicyStore
    revocations: RevocationList
    suspensions: Suspensions
    audit: AuditTrail
    telemetry: Telemetry
    grace_seconds: float
    # Closed in reverse order on stop: background tasks, listeners, pool, provider.
    _resources: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, let in-flight calls finish for ``grace`` seconds, then close."""
        grace = self.grace_seconds if grace is None else grace
        logger.info("server stopping", extra={"port": self.port, "grace_seconds": grace})
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self._resources.aclose()
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


async def _started(stack: AsyncExitStack, start: Awaitable[None], stop: Callable[[], Any]) -> None:
    """Await ``start`` and register ``stop`` to run when the stack closes."""
    await start
    stack.push_async_callback(_call_async, stop)


async def _call_async(function: Callable[[], Any]) -> None:
    result = function()
    if asyncio.iscoroutine(result):
        await result


async def start_server(settings: Settings) -> RunningServer:
    """Start serving; returns once the port is bound and the health status is SERVING."""
    templates = build_templates(settings)
    credentials = _server_credentials(settings)
    policy_store = PolicyStore(settings.policy_file, known_templates=templates)
    signing_key = (
        load_signing_key(settings.audit.signing_key_file)
        if settings.audit.signing_key_file
        else None
    )

    stack = AsyncExitStack()
    try:
        telemetry = setup_telemetry(settings.telemetry, known_templates=templates)
        stack.push_async_callback(asyncio.to_thread, telemetry.shutdown)
        provider: KekProvider = TracedKekProvider(open_kek_provider(settings.kek), telemetry)
        stack.callback(provider.close)
        pool = await create_pool(
            settings.dsn, min_size=settings.min_connections, max_size=settings.max_connections
        )
        stack.push_async_callback(pool.close)
        version = await migrate(pool)
        keys = DataKeyManager(pool, provider, on_lookup=telemetry.record_key_cache)
        await keys.ensure(
            templates, purposes={name: key_purposes(t) for name, t in templates.items()}
        )
        logger.info(
            "database ready", extra={"schema_version": version, "templates": len(templates)}
        )
        return await _serve(
            settings,
            templates,
            credentials,
            policy_store,
            signing_key,
            telemetry,
            provider,
            pool,
            keys,
            stack,
        )
    except BaseException:
        await stack.aclose()
        raise


async def _serve(
    settings: Settings,
    templates: dict[str, Template],
    credentials: grpc.ServerCredentials,
    policy_store: PolicyStore,
    signing_key: Any,
    telemetry: Telemetry,
    provider: KekProvider,
    pool: asyncpg.Pool,
    keys: DataKeyManager,
    stack: AsyncExitStack,
) -> RunningServer:
    audit = AuditTrail(
        pool,
        signing_key=signing_key,
        checkpoint_interval_seconds=settings.audit.checkpoint_seconds,
        sink=settings.audit.stream if settings.audit.stream != "-" else _stdout(),
        head_file=_head_file(settings),
    )
    await _started(stack, audit.start(), audit.stop)
    await _started(stack, policy_store.start(), policy_store.stop)
    revocations = RevocationList(pool, settings.dsn)
    await _started(stack, revocations.start(), revocations.stop)
    suspensions = Suspensions(pool, settings.dsn)
    await _started(stack, suspensions.start(), suspensions.stop)

    policy = policy_store.current
    vaultless = VaultlessTokenizer(keys)
    counted_audit = CountedAuditTrail(audit, telemetry)
    guard = CallGuard(
        policy=policy,
        telemetry=telemetry,
        gate=AccessGate(policy_store, revocations, suspensions),
        rate_limiter=RateLimiter(pool),
        concurrency=ConcurrencyLimiter(),
        audit=counted_audit,
    )
    service = TokenizationService(
        templates=templates,
        policy=policy,
        vaultless=vaultless,
        vaulted=VaultedTokenizer(keys, TokenStore(pool, telemetry)),
        audit=counted_audit,
        anomaly=AnomalyDetector(pool, _suspender(suspensions)),
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
    await _started(stack, listener.start(), listener.stop)

    server = grpc.aio.server(
        options=[
            # gRPC sets SO_REUSEPORT by default, which lets a second server bind a port that is
            # in use and take a random share of its connections.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes * 2),
        ]
    )
    tokenization_pb2_grpc.add_TokenizationServicer_to_server(
        TokenizationServicer(service, guard, telemetry), server
    )
    key_admin_pb2_grpc.add_KeyAdminServicer_to_server(
        KeyAdminServicer(admin, policy, guard), server
    )
    caller_admin = CallerAdministration(
        policy_store=policy_store, revocations=revocations, suspensions=suspensions, pool=pool
    )
    caller_admin_pb2_grpc.add_CallerAdminServicer_to_server(
        CallerAdminServicer(caller_admin, policy, guard), server
    )
    audit_log_pb2_grpc.add_AuditLogServicer_to_server(AuditLogServicer(pool, guard), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            SERVICE_NAME,
            ADMIN_SERVICE_NAME,
            CALLER_ADMIN_SERVICE_NAME,
            AUDIT_SERVICE_NAME,
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
        raise ConfigError(
            f"server.listen: could not bind {settings.listen}; is another server using the port?"
        )
    await server.start()
    await admin.start_background()
    stack.push_async_callback(admin.close)
    sweeper = asyncio.create_task(_sweep_expired(TokenStore(pool)))
    stack.callback(sweeper.cancel)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    logger.info("server started", extra={"listen": settings.listen, "port": port})
    return RunningServer(
        server=server,
        port=port,
        pool=pool,
        health=health_servicer,
        service=service,
        keys=keys,
        admin=admin,
        policy_store=policy_store,
        revocations=revocations,
        suspensions=suspensions,
        audit=audit,
        telemetry=telemetry,
        grace_seconds=settings.shutdown_grace_seconds,
        _resources=stack,
    )


def _suspender(suspensions: Suspensions) -> Callable[[str, str], Awaitable[None]]:
    async def suspend(identity: str, reason: str) -> None:
        await suspensions.suspend(identity, reason, ANOMALY_ACTOR)

    return suspend


def _head_file(settings: Settings) -> Path | None:
    """Return where the audit signer keeps its last signed head: beside its signing key."""
    key_file = settings.audit.signing_key_file
    return key_file.with_name(key_file.name + ".head") if key_file else None


def _stdout() -> Any:
    import sys

    return sys.stdout


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

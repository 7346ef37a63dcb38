"""The checks every RPC passes before its handler, and the status it leaves with.

The steps, in order: a request id and a server span. The caller's identity from its client
certificate. The access gate (revoked, suspended, certificate pin, source address). Then the
caller's concurrency slot and rate limit. A call rejected by any of these is audited as denied.
Any error, from these checks or from the handler, leaves as a status with a safe message, and
a rate-limited call also gets ``retry-after`` (seconds) in its trailing metadata.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import grpc

from vault.abuse import ConcurrencyLimiter, RateLimited, RateLimiter
from vault.access.gate import AccessGate
from vault.audit.trail import AuditUnavailable
from vault.call_audit import AuditRecorder, call_event
from vault.errors import PermissionDenied, TokenvaultError, Unauthenticated
from vault.identity import Caller, CallInfo, identity_from_auth_context
from vault.policy import Policy
from vault.status import status_for
from vault.telemetry import RpcScope, Telemetry, current_trace_id, rpc_span

logger = logging.getLogger(__name__)

Response = TypeVar("Response")

REQUEST_ID_HEADER = "x-request-id"
RETRY_AFTER_HEADER = "retry-after"

# Statuses that mean the caller was turned away rather than that its request failed.
_DENIED = {
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@dataclass
class GuardedCall:
    info: CallInfo
    rpc: RpcScope

    @property
    def caller(self) -> Caller:
        return self.info.caller


@dataclass
class CallGuard:
    policy: Callable[[], Policy]
    telemetry: Telemetry | None = None
    gate: AccessGate | None = None
    rate_limiter: RateLimiter | None = None
    concurrency: ConcurrencyLimiter | None = None
    audit: AuditRecorder | None = None

    @asynccontextmanager
    async def call(
        self,
        context: grpc.aio.ServicerContext,
        service: str,
        method: str,
        *,
        operation: str,
        items: int = 0,
        templates: Iterable[str] = (),
        audit_every_call: bool = False,
    ) -> AsyncIterator[GuardedCall]:
        """Run the checks, yield the call to the handler, and turn any error into a status.

        NOTE: a request whose bytes do not parse never reaches this code, because gRPC rejects
        it with UNKNOWN before any handler runs. So it is neither audited nor rate-limited.

        Refused calls are always audited. With ``audit_every_call`` (administration calls),
        every call is audited as ``<operation>.<method>`` whatever its outcome.
        """
        request_id = uuid.uuid4().hex
        template_names = list(templates)
        peer = context.peer() or ""
        metadata: list[tuple[str, str]] = [(REQUEST_ID_HEADER, request_id)]
        context.set_trailing_metadata(tuple(metadata))
        async with rpc_span(
            self.telemetry, service, method, peer=peer, metadata=context.invocation_metadata()
        ) as rpc:
            rpc.set_request(template_names, items)
            info: CallInfo | None = None
            admitted = False
            try:
                caller = _caller(context)
                rpc.set_caller(caller.identity)
                info = CallInfo(caller, request_id, peer, current_trace_id())
                async with AsyncExitStack() as stack:
                    await self._admit(stack, caller, peer, operation, items)
                    admitted = True
                    yield GuardedCall(info, rpc)
                if audit_every_call:
                    await self._audit_call(info, f"{operation}.{method}", grpc.StatusCode.OK)
            except Exception as error:  # noqa: BLE001 - every error becomes a status here
                code, message = status_for(error)
                rpc.set_outcome(code, error=error)
                if isinstance(error, RateLimited) and math.isfinite(error.retry_after_seconds):
                    metadata.append((RETRY_AFTER_HEADER, f"{error.retry_after_seconds:.3f}"))
                    context.set_trailing_metadata(tuple(metadata))
                if info is not None and audit_every_call:
                    await self._audit_call(info, f"{operation}.{method}", code)
                elif info is not None and not admitted and code in _DENIED:
                    # Once admitted, the handler audits its own refusals with item detail.
                    await self._audit_call(info, operation, code, template_names, items)
                _log_failure(method, request_id, code, error)
                await context.abort(code, message)

    async def _admit(
        self, stack: AsyncExitStack, caller: Caller, peer: str, operation: str, items: int
    ) -> None:
        if self.gate is not None:
            self.gate.check(caller, peer)
        rules = self.policy().caller(caller.identity)
        if self.concurrency is not None and rules is not None and rules.max_concurrent_calls:
            await stack.enter_async_context(
                self.concurrency.slot(caller.identity, rules.max_concurrent_calls)
            )
        limit = rules.rate_limits.get(operation) if rules is not None else None
        if self.rate_limiter is not None and limit is not None and items > 0:
            try:
                await self.rate_limiter.consume(caller.identity, operation, items, limit)
            except RateLimited:
                if self.telemetry is not None:
                    self.telemetry.record_rate_limited(operation)
                raise

    async def _audit_call(
        self,
        info: CallInfo,
        operation: str,
        code: grpc.StatusCode,
        templates: list[str] | None = None,
        items: int = 0,
    ) -> None:
        if self.audit is None:
            return
        event = call_event(info, operation, code.name, templates=templates or (), item_count=items)
        try:
            await self.audit.record([event], durable=False)
        except AuditUnavailable:
            logger.error(
                "call not audited: audit queue unavailable",
                extra={"request_id": info.request_id, "caller": info.caller.identity},
            )


async def run_admin_call(
    guard: CallGuard,
    context: grpc.aio.ServicerContext,
    service: str,
    method: str,
    scope: str,
    run: Callable[[Caller], Awaitable[Response]],
) -> Response:
    """Run one administration call: the guard's checks, ``scope``, and an audit event whatever
    the outcome.

    The access gate runs first, so a revoked or suspended administrator cannot act at all, not
    even to restore itself.
    """
    async with guard.call(
        context, service, method, operation="admin", items=1, audit_every_call=True
    ) as call:
        if not guard.policy().allows(call.caller.identity, scope):
            raise PermissionDenied(scope)
        response = await run(call.caller)
        call.rpc.set_outcome(grpc.StatusCode.OK)
    return response


def _caller(context: grpc.aio.ServicerContext) -> Caller:
    auth = context.auth_context()
    if not auth:
        raise Unauthenticated("a client certificate is required (mutual TLS)")
    return identity_from_auth_context(auth)


def _log_failure(method: str, request_id: str, code: grpc.StatusCode, error: Exception) -> None:
    level = logging.ERROR if code is grpc.StatusCode.INTERNAL else logging.INFO
    if not isinstance(error, TokenvaultError) and level == logging.INFO:
        level = logging.WARNING
    logger.log(
        level,
        "%s refused",
        method,
        extra={"request_id": request_id, "status": code.name, "error": type(error).__name__},
    )

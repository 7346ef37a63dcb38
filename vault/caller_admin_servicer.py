"""gRPC edge of the CallerAdmin service: every call needs the scope admin:callers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from tokenvault.v1 import caller_admin_pb2 as pb
from tokenvault.v1 import caller_admin_pb2_grpc as pb_grpc

from vault.access.revocation import Revocation
from vault.access.suspension import Suspension
from vault.admin_servicer import timestamp as _timestamp
from vault.caller_admin import CallerAdministration
from vault.guard import CallGuard, run_admin_call
from vault.identity import Caller
from vault.policy import Policy

ADMIN_SCOPE = "admin:callers"
Response = TypeVar("Response")


class CallerAdminServicer(pb_grpc.CallerAdminServicer):
    def __init__(
        self, admin: CallerAdministration, policy: Callable[[], Policy], guard: CallGuard
    ) -> None:
        self._admin = admin
        self._policy = policy
        self._guard = guard

    async def RevokeCaller(  # noqa: N802 - name fixed by the proto
        self, request: pb.RevokeCallerRequest, context: Any
    ) -> pb.Revocation:
        async def run(caller: Caller) -> pb.Revocation:
            identity, serial = _subject(request)
            revocation = await self._admin.revoke_caller(
                identity=identity, serial=serial, reason=request.reason, actor=caller.identity
            )
            return _revocation(revocation)

        return await self._call(context, "RevokeCaller", run)

    async def RestoreCaller(  # noqa: N802
        self, request: pb.RestoreCallerRequest, context: Any
    ) -> pb.Revocation:
        async def run(caller: Caller) -> pb.Revocation:
            identity, serial = _subject(request)
            revocation = await self._admin.restore_caller(
                identity=identity, serial=serial, actor=caller.identity
            )
            return _revocation(revocation)

        return await self._call(context, "RestoreCaller", run)

    async def ListRevocations(  # noqa: N802
        self, request: pb.ListRevocationsRequest, context: Any
    ) -> pb.ListRevocationsResponse:
        async def run(_: Caller) -> pb.ListRevocationsResponse:
            revocations = await self._admin.revocations()
            return pb.ListRevocationsResponse(revocations=[_revocation(r) for r in revocations])

        return await self._call(context, "ListRevocations", run)

    async def LiftSuspension(  # noqa: N802
        self, request: pb.LiftSuspensionRequest, context: Any
    ) -> pb.Suspension:
        async def run(caller: Caller) -> pb.Suspension:
            lifted = await self._admin.lift_suspension(request.identity, actor=caller.identity)
            return _suspension(lifted)

        return await self._call(context, "LiftSuspension", run)

    async def ListSuspensions(  # noqa: N802
        self, request: pb.ListSuspensionsRequest, context: Any
    ) -> pb.ListSuspensionsResponse:
        async def run(_: Caller) -> pb.ListSuspensionsResponse:
            suspensions = await self._admin.suspensions()
            return pb.ListSuspensionsResponse(suspensions=[_suspension(s) for s in suspensions])

        return await self._call(context, "ListSuspensions", run)

    async def ReloadPolicy(  # noqa: N802
        self, request: pb.ReloadPolicyRequest, context: Any
    ) -> pb.ReloadPolicyResponse:
        async def run(caller: Caller) -> pb.ReloadPolicyResponse:
            result = self._admin.reload_policy(actor=caller.identity)
            return pb.ReloadPolicyResponse(
                applied=result.applied,
                error=result.error or "",
                loaded_at=_timestamp(result.loaded_at),
                sha256=result.sha256,
            )

        return await self._call(context, "ReloadPolicy", run)

    async def GetPolicyStatus(  # noqa: N802
        self, request: pb.GetPolicyStatusRequest, context: Any
    ) -> pb.PolicyStatus:
        async def run(_: Caller) -> pb.PolicyStatus:
            status = self._admin.policy_status()
            return pb.PolicyStatus(
                path=str(status.path),
                loaded_at=_timestamp(status.loaded_at),
                sha256=status.sha256,
                caller_count=status.caller_count,
                last_attempt_at=_timestamp(status.last_attempt_at),
                last_error=status.last_error or "",
            )

        return await self._call(context, "GetPolicyStatus", run)

    async def _call(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        run: Callable[[Caller], Awaitable[Response]],
    ) -> Response:
        return await run_admin_call(self._guard, context, "CallerAdmin", method, ADMIN_SCOPE, run)


def _subject(
    request: pb.RevokeCallerRequest | pb.RestoreCallerRequest,
) -> tuple[str | None, str | None]:
    # An unset oneof gives (None, None), which the revocation list rejects as INVALID_ARGUMENT.
    chosen = request.WhichOneof("subject")
    if chosen == "identity":
        return request.identity, None
    if chosen == "serial":
        return None, request.serial
    return None, None


def _revocation(revocation: Revocation) -> pb.Revocation:
    return pb.Revocation(
        id=revocation.id,
        identity=revocation.identity or "",
        serial=revocation.serial or "",
        reason=revocation.reason,
        revoked_by=revocation.revoked_by,
        revoked_at=_timestamp(revocation.revoked_at),
        restored_by=revocation.restored_by or "",
        restored_at=_timestamp(revocation.restored_at),
    )


def _suspension(suspension: Suspension) -> pb.Suspension:
    return pb.Suspension(
        id=suspension.id,
        identity=suspension.identity,
        reason=suspension.reason,
        suspended_by=suspension.suspended_by,
        suspended_at=_timestamp(suspension.suspended_at),
        lifted_by=suspension.lifted_by or "",
        lifted_at=_timestamp(suspension.lifted_at),
    )

"""gRPC edge of the AuditLog service: auditors pull the signed trail over mutual TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
from tokenvault.v1 import audit_log_pb2 as pb
from tokenvault.v1 import audit_log_pb2_grpc as pb_grpc

from vault.audit.export import connect, dump_record, iter_records
from vault.errors import InvalidValue, PermissionDenied
from vault.guard import CallGuard

AUDIT_SCOPE = "audit:read"
MAX_EVENTS_PER_CALL = 100_000


class AuditLogServicer(pb_grpc.AuditLogServicer):
    def __init__(self, pool: asyncpg.Pool, guard: CallGuard) -> None:
        self._pool = pool
        self._guard = guard

    async def Export(  # noqa: N802 - name fixed by the proto
        self, request: pb.ExportAuditRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.AuditRecord]:
        async with self._guard.call(
            context, "AuditLog", "Export", operation="admin", items=1, audit_every_call=True
        ) as call:
            if not self._guard.policy().allows(call.caller.identity, AUDIT_SCOPE):
                raise PermissionDenied(AUDIT_SCOPE)
            first, last = _range(request)
            async with connect(self._pool) as connection:
                async for record in iter_records(connection, from_seq=first, to_seq=last):
                    yield pb.AuditRecord(json=dump_record(record).rstrip("\n"))
            call.rpc.set_outcome(grpc.StatusCode.OK)


def _range(request: pb.ExportAuditRequest) -> tuple[int, int]:
    if request.from_seq < 0 or request.to_seq < 0:
        raise InvalidValue("from_seq", "from_seq and to_seq must not be negative")
    first = request.from_seq or 1
    last = request.to_seq or first + MAX_EVENTS_PER_CALL - 1
    if last < first:
        raise InvalidValue("to_seq", "must not be below from_seq")
    if last - first + 1 > MAX_EVENTS_PER_CALL:
        raise InvalidValue("to_seq", f"a call returns at most {MAX_EVENTS_PER_CALL} events")
    return first, last

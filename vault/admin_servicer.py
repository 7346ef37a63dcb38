"""gRPC edge of the KeyAdmin service: every call needs the scope admin:keys."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from tokenvault.v1 import key_admin_pb2 as pb
from tokenvault.v1 import key_admin_pb2_grpc as pb_grpc

from keys.lifecycle import DestroyRequest, KeyEvent, KeyVersionInfo
from keys.reencrypt import JobStatus
from vault.admin import KeyAdministration
from vault.guard import CallGuard, run_admin_call
from vault.identity import Caller
from vault.policy import Policy

logger = logging.getLogger(__name__)

ADMIN_SCOPE = "admin:keys"
Response = TypeVar("Response")


class KeyAdminServicer(pb_grpc.KeyAdminServicer):
    def __init__(
        self, admin: KeyAdministration, policy: Callable[[], Policy], guard: CallGuard
    ) -> None:
        self._admin = admin
        self._policy = policy
        self._guard = guard

    async def ListKeys(self, request: pb.ListKeysRequest, context: Any) -> pb.ListKeysResponse:  # noqa: N802
        async def run(_: Caller) -> pb.ListKeysResponse:
            versions, kek = await self._admin.list_keys(request.template)
            return pb.ListKeysResponse(
                keys=[_key_version(v) for v in versions],
                kek_provider=kek.provider,
                kek_key_id=kek.key_id,
                kek_version=kek.version,
            )

        return await self._call(context, "ListKeys", run)

    async def RotateDataKey(  # noqa: N802
        self, request: pb.RotateDataKeyRequest, context: Any
    ) -> pb.RotateDataKeyResponse:
        async def run(caller: Caller) -> pb.RotateDataKeyResponse:
            rotated = await self._admin.rotate_data_key(
                request.template, list(request.purposes), actor=caller.identity
            )
            return pb.RotateDataKeyResponse(rotated=[_key_version(v) for v in rotated])

        return await self._call(context, "RotateDataKey", run)

    async def RotateKek(self, request: pb.RotateKekRequest, context: Any) -> pb.RotateKekResponse:  # noqa: N802
        async def run(caller: Caller) -> pb.RotateKekResponse:
            kek, rewrapped = await self._admin.rotate_kek(actor=caller.identity)
            return pb.RotateKekResponse(
                kek_provider=kek.provider,
                kek_key_id=kek.key_id,
                kek_version=kek.version,
                rewrapped=rewrapped,
            )

        return await self._call(context, "RotateKek", run)

    async def SetKeyState(self, request: pb.SetKeyStateRequest, context: Any) -> pb.KeyVersion:  # noqa: N802
        async def run(caller: Caller) -> pb.KeyVersion:
            info = await self._admin.set_key_state(
                request.template,
                request.purpose,
                request.version,
                request.state,
                actor=caller.identity,
            )
            return _key_version(info)

        return await self._call(context, "SetKeyState", run)

    async def StartReencryption(  # noqa: N802
        self, request: pb.StartReencryptionRequest, context: Any
    ) -> pb.ReencryptionJob:
        async def run(caller: Caller) -> pb.ReencryptionJob:
            job = await self._admin.start_reencryption(
                request.template,
                batch_size=request.batch_size,
                max_rows_per_second=request.max_rows_per_second,
                actor=caller.identity,
            )
            return _job(job)

        return await self._call(context, "StartReencryption", run)

    async def PauseReencryption(  # noqa: N802
        self, request: pb.ReencryptionJobRequest, context: Any
    ) -> pb.ReencryptionJob:
        async def run(_: Caller) -> pb.ReencryptionJob:
            return _job(await self._admin.pause_reencryption(request.job_id))

        return await self._call(context, "PauseReencryption", run)

    async def ResumeReencryption(  # noqa: N802
        self, request: pb.ReencryptionJobRequest, context: Any
    ) -> pb.ReencryptionJob:
        async def run(_: Caller) -> pb.ReencryptionJob:
            return _job(await self._admin.resume_reencryption(request.job_id))

        return await self._call(context, "ResumeReencryption", run)

    async def GetReencryption(  # noqa: N802
        self, request: pb.ReencryptionJobRequest, context: Any
    ) -> pb.ReencryptionJob:
        async def run(_: Caller) -> pb.ReencryptionJob:
            return _job(await self._admin.reencryption(request.job_id))

        return await self._call(context, "GetReencryption", run)

    async def ListReencryptions(  # noqa: N802
        self, request: pb.ListReencryptionsRequest, context: Any
    ) -> pb.ListReencryptionsResponse:
        async def run(_: Caller) -> pb.ListReencryptionsResponse:
            jobs = await self._admin.reencryptions(
                request.template, unfinished_only=request.unfinished_only
            )
            return pb.ListReencryptionsResponse(jobs=[_job(job) for job in jobs])

        return await self._call(context, "ListReencryptions", run)

    async def ProposeDestroy(  # noqa: N802
        self, request: pb.ProposeDestroyRequest, context: Any
    ) -> pb.DestroyRequest:
        async def run(caller: Caller) -> pb.DestroyRequest:
            proposal = await self._admin.propose_destroy(
                request.template,
                request.purpose,
                request.version,
                force=request.force,
                actor=caller.identity,
            )
            return _destroy_request(proposal)

        return await self._call(context, "ProposeDestroy", run)

    async def ApproveDestroy(  # noqa: N802
        self, request: pb.DestroyRequestRef, context: Any
    ) -> pb.DestroyRequest:
        async def run(caller: Caller) -> pb.DestroyRequest:
            approved = await self._admin.approve_destroy(request.request_id, actor=caller.identity)
            return _destroy_request(approved)

        return await self._call(context, "ApproveDestroy", run)

    async def CancelDestroy(  # noqa: N802
        self, request: pb.DestroyRequestRef, context: Any
    ) -> pb.DestroyRequest:
        async def run(caller: Caller) -> pb.DestroyRequest:
            cancelled = await self._admin.cancel_destroy(request.request_id, actor=caller.identity)
            return _destroy_request(cancelled)

        return await self._call(context, "CancelDestroy", run)

    async def ListDestroyRequests(  # noqa: N802
        self, request: pb.ListDestroyRequestsRequest, context: Any
    ) -> pb.ListDestroyRequestsResponse:
        async def run(_: Caller) -> pb.ListDestroyRequestsResponse:
            requests = await self._admin.destroy_requests(pending_only=request.pending_only)
            return pb.ListDestroyRequestsResponse(requests=[_destroy_request(r) for r in requests])

        return await self._call(context, "ListDestroyRequests", run)

    async def ListKeyEvents(  # noqa: N802
        self, request: pb.ListKeyEventsRequest, context: Any
    ) -> pb.ListKeyEventsResponse:
        async def run(_: Caller) -> pb.ListKeyEventsResponse:
            events = await self._admin.events(request.template, request.limit)
            return pb.ListKeyEventsResponse(events=[_event(e) for e in events])

        return await self._call(context, "ListKeyEvents", run)

    async def _call(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        run: Callable[[Caller], Awaitable[Response]],
    ) -> Response:
        return await run_admin_call(self._guard, context, "KeyAdmin", method, ADMIN_SCOPE, run)


def timestamp(moment: datetime | None) -> Timestamp | None:
    """Convert a datetime (or None, for an unset field) to a protobuf Timestamp."""
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _key_version(info: KeyVersionInfo) -> pb.KeyVersion:
    return pb.KeyVersion(
        template=info.template,
        purpose=info.purpose.value,
        version=info.version,
        state=info.state.value,
        kek_provider=info.kek.provider,
        kek_key_id=info.kek.key_id,
        kek_version=info.kek.version,
        created_at=timestamp(info.created_at),
        updated_at=timestamp(info.updated_at),
        rows=info.rows or 0,
        rows_known=info.rows is not None,
    )


def _job(job: JobStatus) -> pb.ReencryptionJob:
    return pb.ReencryptionJob(
        job_id=job.id,
        template=job.template,
        status=job.status,
        target_version=job.target_version,
        target_index_version=job.target_index_version or 0,
        rows_done=job.rows_done,
        rows_total=job.rows_total,
        rows_left=job.rows_left,
        rows_per_second=job.rows_per_second or 0.0,
        started_by=job.started_by,
        started_at=timestamp(job.started_at),
        updated_at=timestamp(job.updated_at),
        finished_at=timestamp(job.finished_at),
        error=job.error or "",
    )


def _destroy_request(request: DestroyRequest) -> pb.DestroyRequest:
    return pb.DestroyRequest(
        request_id=request.id,
        template=request.template,
        purpose=request.purpose.value,
        version=request.version,
        force=request.force,
        status=request.status,
        proposed_by=request.proposed_by,
        proposed_at=timestamp(request.proposed_at),
        approved_by=request.approved_by or "",
        approved_at=timestamp(request.approved_at),
    )


def _event(event: KeyEvent) -> pb.KeyEvent:
    return pb.KeyEvent(
        id=event.id,
        occurred_at=timestamp(event.occurred_at),
        template=event.template,
        purpose=event.purpose.value,
        version=event.version,
        event=event.event,
        from_state=event.from_state or "",
        to_state=event.to_state or "",
        actor=event.actor,
    )

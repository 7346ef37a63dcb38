"""Synchronous client for the ``tokenvault.v1.KeyAdmin`` gRPC service, for key custodians.

Every call needs the scope ``admin:keys``. The server records each change in the key event log
under the caller's identity. Destroying a key version needs two different custodians: one
calls ``propose_destroy`` and another ``approve_destroy``.

Example::

    from tokenvault_client import KeyAdminClient, TlsConfig

    tls = TlsConfig.from_files("ca.pem", "custodian.pem", "custodian-key.pem")
    with KeyAdminClient("127.0.0.1:7443", tls) as admin:
        admin.rotate_data_key("pan")
        job = admin.start_reencryption("pan", max_rows_per_second=2000)
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from tokenvault.v1 import key_admin_pb2 as pb

from tokenvault_client.client import MAX_RECEIVE_MESSAGE_BYTES, _check_timeout
from tokenvault_client.errors import error_from_rpc
from tokenvault_client.tls import TlsConfig

_SERVICE = pb.DESCRIPTOR.services_by_name["KeyAdmin"]

# Re-encryption job statuses after which the job makes no more progress on its own.
FINISHED_JOB_STATUSES = frozenset({"done", "failed"})


# Models


@dataclass(frozen=True)
class KekVersion:
    """A version of the key-encryption key, for example provider "pkcs11", "tokenvault-kek", "3"."""

    provider: str
    key_id: str
    version: str


@dataclass(frozen=True)
class KeyVersion:
    """One version of a template's data key for one purpose."""

    template: str
    # "fpe" (FF1), "aead" (AES-256-GCM for vaulted values) or "index" (HMAC-SHA256 value index).
    purpose: str
    version: int
    # "active", "decrypt_only", "retired" or "destroyed".
    state: str
    # The KEK version that wraps this data key.
    kek: KekVersion
    created_at: datetime.datetime | None
    updated_at: datetime.datetime | None
    # Vaulted rows this version protects, or None for FF1 keys, whose tokens are not stored.
    rows: int | None

    @classmethod
    def from_proto(cls, message: pb.KeyVersion) -> KeyVersion:
        return cls(
            template=message.template,
            purpose=message.purpose,
            version=message.version,
            state=message.state,
            kek=KekVersion(message.kek_provider, message.kek_key_id, message.kek_version),
            created_at=_timestamp(message, "created_at"),
            updated_at=_timestamp(message, "updated_at"),
            rows=message.rows if message.rows_known else None,
        )


@dataclass(frozen=True)
class KeyListing:
    """Response of ListKeys: data key versions and the KEK version that wraps new data keys."""

    keys: tuple[KeyVersion, ...]
    kek: KekVersion

    @classmethod
    def from_proto(cls, message: pb.ListKeysResponse) -> KeyListing:
        return cls(
            keys=tuple(KeyVersion.from_proto(key) for key in message.keys),
            kek=KekVersion(message.kek_provider, message.kek_key_id, message.kek_version),
        )


@dataclass(frozen=True)
class KekRotation:
    """Response of RotateKek: the new KEK version and how many data keys it now wraps."""

    kek: KekVersion
    rewrapped: int

    @classmethod
    def from_proto(cls, message: pb.RotateKekResponse) -> KekRotation:
        return cls(
            kek=KekVersion(message.kek_provider, message.kek_key_id, message.kek_version),
            rewrapped=message.rewrapped,
        )


@dataclass(frozen=True)
class ReencryptionJob:
    """A background job that moves a template's vaulted rows to its active key versions."""

    job_id: int
    template: str
    # "running", "paused", "done" or "failed".
    status: str
    target_version: int
    target_index_version: int
    rows_done: int
    rows_total: int
    rows_left: int
    # Measured by the server over the current run; 0 before the first batch.
    rows_per_second: float
    started_by: str
    started_at: datetime.datetime | None
    updated_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    # The server's reason for the failure, empty unless ``status`` is "failed".
    error: str

    @property
    def finished(self) -> bool:
        """True when the job is done or failed, so it will not change any more."""
        return self.status in FINISHED_JOB_STATUSES

    @classmethod
    def from_proto(cls, message: pb.ReencryptionJob) -> ReencryptionJob:
        return cls(
            job_id=message.job_id,
            template=message.template,
            status=message.status,
            target_version=message.target_version,
            target_index_version=message.target_index_version,
            rows_done=message.rows_done,
            rows_total=message.rows_total,
            rows_left=message.rows_left,
            rows_per_second=message.rows_per_second,
            started_by=message.started_by,
            started_at=_timestamp(message, "started_at"),
            updated_at=_timestamp(message, "updated_at"),
            finished_at=_timestamp(message, "finished_at"),
            error=message.error,
        )


@dataclass(frozen=True)
class DestroyRequest:
    """A proposal to destroy one key version, which a second custodian must approve."""

    request_id: int
    template: str
    purpose: str
    version: int
    # The version is destroyed even though it still protects data.
    force: bool
    # "pending", "approved" or "cancelled".
    status: str
    proposed_by: str
    proposed_at: datetime.datetime | None
    # Empty and None until the request is approved.
    approved_by: str
    approved_at: datetime.datetime | None

    @classmethod
    def from_proto(cls, message: pb.DestroyRequest) -> DestroyRequest:
        return cls(
            request_id=message.request_id,
            template=message.template,
            purpose=message.purpose,
            version=message.version,
            force=message.force,
            status=message.status,
            proposed_by=message.proposed_by,
            proposed_at=_timestamp(message, "proposed_at"),
            approved_by=message.approved_by,
            approved_at=_timestamp(message, "approved_at"),
        )


@dataclass(frozen=True)
class KeyEvent:
    """One entry of the key event log, such as a rotation or a state change."""

    event_id: int
    occurred_at: datetime.datetime | None
    template: str
    purpose: str
    version: int
    event: str
    # Key states before and after the event; empty when the event changed no state.
    from_state: str
    to_state: str
    # Identity of the caller that caused the event.
    actor: str

    @classmethod
    def from_proto(cls, message: pb.KeyEvent) -> KeyEvent:
        return cls(
            event_id=message.id,
            occurred_at=_timestamp(message, "occurred_at"),
            template=message.template,
            purpose=message.purpose,
            version=message.version,
            event=message.event,
            from_state=message.from_state,
            to_state=message.to_state,
            actor=message.actor,
        )


def _timestamp(message: Any, field_name: str) -> datetime.datetime | None:
    # Proto3 message fields have presence, so an unset timestamp is None rather than 1970.
    if not message.HasField(field_name):
        return None
    value: timestamp_pb2.Timestamp = getattr(message, field_name)
    return value.ToDatetime(tzinfo=datetime.UTC)


# Client


class KeyAdminClient:
    """Client for the KeyAdmin service over one mutual-TLS channel, safe to share between threads.

    Every RPC gets a deadline of ``timeout`` seconds. A failed call raises the matching
    ``TokenvaultClientError`` subclass: ``PermissionDeniedError`` when the caller lacks the
    scope admin:keys, ``FailedPreconditionError`` when the key lifecycle forbids the change
    (for example a custodian approving their own destroy request).
    """

    def __init__(self, target: str, tls: TlsConfig, *, timeout: float = 10.0) -> None:
        if not target:
            raise ValueError("target is empty: expected HOST:PORT")
        _check_timeout(timeout)
        self._target = target
        self._timeout = timeout

        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.ca_cert,
            private_key=tls.client_key,
            certificate_chain=tls.client_cert,
        )
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
        ]
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        self._channel = grpc.secure_channel(target, credentials, options=options)

        # Built from the descriptor, as in TokenvaultClient, because the generated
        # key_admin_pb2_grpc module has no type stubs.
        self._list_keys_rpc = self._unary_method(
            "ListKeys", pb.ListKeysRequest, pb.ListKeysResponse
        )
        self._rotate_data_key_rpc = self._unary_method(
            "RotateDataKey", pb.RotateDataKeyRequest, pb.RotateDataKeyResponse
        )
        self._rotate_kek_rpc = self._unary_method(
            "RotateKek", pb.RotateKekRequest, pb.RotateKekResponse
        )
        self._set_key_state_rpc = self._unary_method(
            "SetKeyState", pb.SetKeyStateRequest, pb.KeyVersion
        )
        self._start_reencryption_rpc = self._unary_method(
            "StartReencryption", pb.StartReencryptionRequest, pb.ReencryptionJob
        )
        self._pause_reencryption_rpc = self._unary_method(
            "PauseReencryption", pb.ReencryptionJobRequest, pb.ReencryptionJob
        )
        self._resume_reencryption_rpc = self._unary_method(
            "ResumeReencryption", pb.ReencryptionJobRequest, pb.ReencryptionJob
        )
        self._get_reencryption_rpc = self._unary_method(
            "GetReencryption", pb.ReencryptionJobRequest, pb.ReencryptionJob
        )
        self._list_reencryptions_rpc = self._unary_method(
            "ListReencryptions", pb.ListReencryptionsRequest, pb.ListReencryptionsResponse
        )
        self._propose_destroy_rpc = self._unary_method(
            "ProposeDestroy", pb.ProposeDestroyRequest, pb.DestroyRequest
        )
        self._approve_destroy_rpc = self._unary_method(
            "ApproveDestroy", pb.DestroyRequestRef, pb.DestroyRequest
        )
        self._cancel_destroy_rpc = self._unary_method(
            "CancelDestroy", pb.DestroyRequestRef, pb.DestroyRequest
        )
        self._list_destroy_requests_rpc = self._unary_method(
            "ListDestroyRequests", pb.ListDestroyRequestsRequest, pb.ListDestroyRequestsResponse
        )
        self._list_key_events_rpc = self._unary_method(
            "ListKeyEvents", pb.ListKeyEventsRequest, pb.ListKeyEventsResponse
        )

    def __repr__(self) -> str:
        return f"KeyAdminClient(target={self._target!r})"

    def __enter__(self) -> KeyAdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel, cancelling calls still in progress."""
        self._channel.close()

    # Data keys and the KEK

    def list_keys(self, template: str = "") -> KeyListing:
        """Return the data key versions of ``template``, or of every template when empty."""
        response = self._invoke(self._list_keys_rpc, pb.ListKeysRequest(template=template))
        return KeyListing.from_proto(response)

    def rotate_data_key(
        self, template: str, purposes: Iterable[str] = ()
    ) -> tuple[KeyVersion, ...]:
        """Make a new version of the template's data keys active and return the new versions.

        With no ``purposes``, the server rotates every purpose the template uses. The previous
        versions become decrypt_only, so existing tokens keep working.
        """
        request = pb.RotateDataKeyRequest(template=template, purposes=list(purposes))
        response = self._invoke(self._rotate_data_key_rpc, request)
        return tuple(KeyVersion.from_proto(key) for key in response.rotated)

    def rotate_kek(self) -> KekRotation:
        """Create a new KEK version and rewrap every data key under it. No row is re-encrypted."""
        return KekRotation.from_proto(self._invoke(self._rotate_kek_rpc, pb.RotateKekRequest()))

    def set_key_state(self, template: str, purpose: str, version: int, state: str) -> KeyVersion:
        """Change the state of a key version and return the version after the change.

        ``state`` "retired" retires a decrypt_only version, so nothing can use it any more, and
        "decrypt_only" reinstates a retired one.
        """
        request = pb.SetKeyStateRequest(
            template=template, purpose=purpose, version=version, state=state
        )
        return KeyVersion.from_proto(self._invoke(self._set_key_state_rpc, request))

    # Re-encryption

    def start_reencryption(
        self, template: str, *, batch_size: int = 0, max_rows_per_second: int = 0
    ) -> ReencryptionJob:
        """Start moving the template's vaulted rows to its active key versions in the background.

        ``batch_size`` is rows per transaction (0 for the server's default of 500) and
        ``max_rows_per_second`` caps the job's average rate (0 for no cap).
        """
        if batch_size < 0:
            raise ValueError(f"batch_size must be 0 or more, got {batch_size}")
        if max_rows_per_second < 0:
            raise ValueError(f"max_rows_per_second must be 0 or more, got {max_rows_per_second}")
        request = pb.StartReencryptionRequest(
            template=template, batch_size=batch_size, max_rows_per_second=max_rows_per_second
        )
        return ReencryptionJob.from_proto(self._invoke(self._start_reencryption_rpc, request))

    def pause_reencryption(self, job_id: int) -> ReencryptionJob:
        """Pause a running job after its current batch and return its state."""
        return self._job_call(self._pause_reencryption_rpc, job_id)

    def resume_reencryption(self, job_id: int) -> ReencryptionJob:
        """Resume a paused job and return its state."""
        return self._job_call(self._resume_reencryption_rpc, job_id)

    def get_reencryption(self, job_id: int) -> ReencryptionJob:
        """Return the current state and progress of a job."""
        return self._job_call(self._get_reencryption_rpc, job_id)

    def list_reencryptions(
        self, template: str = "", unfinished_only: bool = False
    ) -> tuple[ReencryptionJob, ...]:
        """Return the jobs of ``template``, or of every template when empty.

        With ``unfinished_only``, only jobs still running or paused are returned.
        """
        request = pb.ListReencryptionsRequest(template=template, unfinished_only=unfinished_only)
        response = self._invoke(self._list_reencryptions_rpc, request)
        return tuple(ReencryptionJob.from_proto(job) for job in response.jobs)

    # Dual-control destruction

    def propose_destroy(
        self, template: str, purpose: str, version: int, *, force: bool = False
    ) -> DestroyRequest:
        """Propose destroying a key version, which a different custodian must then approve.

        Without ``force`` the server rejects a version that still protects data.
        """
        request = pb.ProposeDestroyRequest(
            template=template, purpose=purpose, version=version, force=force
        )
        return DestroyRequest.from_proto(self._invoke(self._propose_destroy_rpc, request))

    def approve_destroy(self, request_id: int) -> DestroyRequest:
        """Approve another custodian's destroy request, which destroys the key version."""
        return self._destroy_call(self._approve_destroy_rpc, request_id)

    def cancel_destroy(self, request_id: int) -> DestroyRequest:
        """Cancel a pending destroy request."""
        return self._destroy_call(self._cancel_destroy_rpc, request_id)

    def list_destroy_requests(self, pending_only: bool = True) -> tuple[DestroyRequest, ...]:
        """Return the destroy requests, by default only those still pending."""
        request = pb.ListDestroyRequestsRequest(pending_only=pending_only)
        response = self._invoke(self._list_destroy_requests_rpc, request)
        return tuple(DestroyRequest.from_proto(item) for item in response.requests)

    # Key event log

    def list_key_events(self, template: str = "", limit: int = 100) -> tuple[KeyEvent, ...]:
        """Return up to ``limit`` (1 to 1000) key events, newest first.

        Events of ``template`` only, or of every template when it is empty.
        """
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be between 1 and 1000, got {limit}")
        request = pb.ListKeyEventsRequest(template=template, limit=limit)
        response = self._invoke(self._list_key_events_rpc, request)
        return tuple(KeyEvent.from_proto(event) for event in response.events)

    # Helpers

    def _unary_method(self, name: str, request_type: type[Any], response_type: type[Any]) -> Any:
        method = _SERVICE.methods_by_name[name]
        return self._channel.unary_unary(
            f"/{_SERVICE.full_name}/{method.name}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )

    def _job_call(self, method: Callable[..., Any], job_id: int) -> ReencryptionJob:
        response = self._invoke(method, pb.ReencryptionJobRequest(job_id=job_id))
        return ReencryptionJob.from_proto(response)

    def _destroy_call(self, method: Callable[..., Any], request_id: int) -> DestroyRequest:
        response = self._invoke(method, pb.DestroyRequestRef(request_id=request_id))
        return DestroyRequest.from_proto(response)

    def _invoke(self, method: Callable[..., Any], request: Any) -> Any:
        try:
            return method(request, timeout=self._timeout)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error

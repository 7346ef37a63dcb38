"""CallerAdmin gRPC edge: scope check, actor recorded, status codes; real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from tokenvault.v1 import caller_admin_pb2 as pb

from vault.access.gate import AccessGate
from vault.access.policy_store import PolicyStore
from vault.access.revocation import RevocationList
from vault.access.suspension import ANOMALY_DETECTOR, Suspensions
from vault.caller_admin import CallerAdministration
from vault.caller_admin_servicer import CallerAdminServicer
from vault.guard import CallGuard
from vault.pki import create_ca, issue_client_certificate

ADMIN = "spiffe://bank.example/security-admin"
GATEWAY = "spiffe://bank.example/gateway"

POLICY = f"""
[[callers]]
identity = "{ADMIN}"
scopes = ["admin:callers"]

[[callers]]
identity = "{GATEWAY}"
scopes = ["tokenize:*", "admin:keys"]
"""


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class FakeContext:
    """The parts of grpc.aio.ServicerContext the servicer uses, with a client certificate."""

    def __init__(self, pem: bytes, serial: int = 0) -> None:
        self._auth = {"x509_pem_cert": [pem]}
        self.serial = serial
        self.trailing_metadata: Sequence[tuple[str, str]] = ()

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return ()

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        self.trailing_metadata = metadata

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise Aborted(code, message)


@dataclass
class Edge:
    servicer: CallerAdminServicer
    suspensions: Suspensions
    policy_path: Path
    admin: FakeContext
    gateway: FakeContext


def _context(identity: str) -> FakeContext:
    ca = create_ca("tokenvault test CA")
    issued = issue_client_certificate(ca, common_name="test client", spiffe_id=identity)
    pem = issued.certificate.public_bytes(serialization.Encoding.PEM)
    return FakeContext(pem, issued.certificate.serial_number)


@pytest_asyncio.fixture(loop_scope="session")
async def edge(db_pool: asyncpg.Pool, database_dsn: str, tmp_path: Path) -> AsyncIterator[Edge]:
    policy_path = tmp_path / "policy.toml"
    policy_path.write_text(POLICY)
    store = PolicyStore(policy_path, known_templates=["pan"])
    revocations = RevocationList(db_pool, database_dsn)
    suspensions = Suspensions(db_pool, database_dsn)
    await revocations.start()
    await suspensions.start()
    admin = CallerAdministration(
        policy_store=store, revocations=revocations, suspensions=suspensions, pool=db_pool
    )
    guard = CallGuard(policy=store.current, gate=AccessGate(store, revocations, suspensions))
    yield Edge(
        servicer=CallerAdminServicer(admin, store.current, guard),
        suspensions=suspensions,
        policy_path=policy_path,
        admin=_context(ADMIN),
        gateway=_context(GATEWAY),
    )
    await suspensions.stop()
    await revocations.stop()


async def test_revoke_records_caller_as_actor(edge: Edge) -> None:
    request = pb.RevokeCallerRequest(identity=GATEWAY, reason="key leaked")

    revocation = await edge.servicer.RevokeCaller(request, edge.admin)

    assert revocation.identity == GATEWAY
    assert revocation.serial == ""
    assert revocation.revoked_by == ADMIN
    assert revocation.HasField("revoked_at")
    assert not revocation.HasField("restored_at")
    assert edge.admin.trailing_metadata[0][0] == "x-request-id"


async def test_revoke_list_restore_by_serial(edge: Edge) -> None:
    await edge.servicer.RevokeCaller(
        pb.RevokeCallerRequest(serial="0A:1B", reason="lost laptop"), edge.admin
    )

    listed = await edge.servicer.ListRevocations(pb.ListRevocationsRequest(), edge.admin)
    restored = await edge.servicer.RestoreCaller(pb.RestoreCallerRequest(serial="a1b"), edge.admin)

    assert [r.serial for r in listed.revocations] == ["a1b"]
    assert restored.restored_by == ADMIN
    assert restored.HasField("restored_at")
    after = await edge.servicer.ListRevocations(pb.ListRevocationsRequest(), edge.admin)
    assert list(after.revocations) == []


async def test_admin_cannot_revoke_itself(edge: Edge) -> None:
    with pytest.raises(Aborted) as caught:
        await edge.servicer.RevokeCaller(
            pb.RevokeCallerRequest(identity=ADMIN, reason="stolen key"), edge.admin
        )

    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "own identity" in caught.value.message


async def test_revoked_admin_cannot_restore_itself(edge: Edge) -> None:
    # Revoked by its certificate serial, which the self-revocation check does not cover.
    serial = format(edge.admin.serial, "x")
    await edge.servicer.RevokeCaller(
        pb.RevokeCallerRequest(serial=serial, reason="stolen key"), edge.admin
    )

    with pytest.raises(Aborted) as caught:
        await edge.servicer.RestoreCaller(pb.RestoreCallerRequest(serial=serial), edge.admin)

    assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.message == "client certificate serial is revoked"


async def test_call_without_scope_denied(edge: Edge) -> None:
    with pytest.raises(Aborted) as caught:
        await edge.servicer.ListRevocations(pb.ListRevocationsRequest(), edge.gateway)

    assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.message == "missing scope admin:callers"


@pytest.mark.parametrize(
    ("request_message", "code"),
    [
        (pb.RevokeCallerRequest(reason="no subject"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.RevokeCallerRequest(serial="xyz", reason="r"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.RevokeCallerRequest(identity=GATEWAY), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_revoke_invalid_request(
    edge: Edge, request_message: pb.RevokeCallerRequest, code: grpc.StatusCode
) -> None:
    with pytest.raises(Aborted) as caught:
        await edge.servicer.RevokeCaller(request_message, edge.admin)

    assert caught.value.code is code


async def test_revoke_twice_failed_precondition(edge: Edge) -> None:
    request = pb.RevokeCallerRequest(identity=GATEWAY, reason="once")
    await edge.servicer.RevokeCaller(request, edge.admin)

    with pytest.raises(Aborted) as caught:
        await edge.servicer.RevokeCaller(request, edge.admin)

    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION


async def test_restore_unknown_not_found(edge: Edge) -> None:
    with pytest.raises(Aborted) as caught:
        await edge.servicer.RestoreCaller(pb.RestoreCallerRequest(identity=GATEWAY), edge.admin)

    assert caught.value.code is grpc.StatusCode.NOT_FOUND


async def test_lift_suspension(edge: Edge) -> None:
    await edge.suspensions.suspend(GATEWAY, "detokenized 5001 items", ANOMALY_DETECTOR)

    listed = await edge.servicer.ListSuspensions(pb.ListSuspensionsRequest(), edge.admin)
    lifted = await edge.servicer.LiftSuspension(
        pb.LiftSuspensionRequest(identity=GATEWAY), edge.admin
    )

    assert [(s.identity, s.suspended_by) for s in listed.suspensions] == [
        (GATEWAY, ANOMALY_DETECTOR)
    ]
    assert lifted.lifted_by == ADMIN
    assert not edge.suspensions.is_suspended(GATEWAY)


async def test_lift_without_suspension_not_found(edge: Edge) -> None:
    with pytest.raises(Aborted) as caught:
        await edge.servicer.LiftSuspension(pb.LiftSuspensionRequest(identity=GATEWAY), edge.admin)

    assert caught.value.code is grpc.StatusCode.NOT_FOUND


async def test_reload_policy_and_status(edge: Edge) -> None:
    before = await edge.servicer.GetPolicyStatus(pb.GetPolicyStatusRequest(), edge.admin)
    edge.policy_path.write_text(POLICY + "[templates.ssn]\npurpose_required = true\n")

    rejected = await edge.servicer.ReloadPolicy(pb.ReloadPolicyRequest(), edge.admin)
    status = await edge.servicer.GetPolicyStatus(pb.GetPolicyStatusRequest(), edge.admin)

    assert not rejected.applied
    assert "no template is named 'ssn'" in rejected.error
    assert rejected.sha256 == before.sha256
    assert status.last_error == rejected.error
    assert status.caller_count == 2
    assert status.path == str(edge.policy_path)

    edge.policy_path.write_text(POLICY)
    applied = await edge.servicer.ReloadPolicy(pb.ReloadPolicyRequest(), edge.admin)
    assert applied.applied
    assert applied.error == ""

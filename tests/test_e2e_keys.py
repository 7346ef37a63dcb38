"""Key administration end to end: rotation under traffic, re-encryption, dual control, replicas."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from harness import ServiceHarness
from tokenvault.v1 import key_admin_pb2 as pb
from tokenvault.v1 import key_admin_pb2_grpc as pb_grpc
from tokenvault_client import (
    DetokenizeItem,
    Reveal,
    TlsConfig,
    TokenizeItem,
    TokenvaultClient,
)

from vault.formats.luhn import luhn_checksum
from vault.server import start_server
from vault.store.embedded import EmbeddedPostgres

VALUES = {
    "pan": [f"4111110000{n:05d}" for n in range(40)],
    "pan_fpe": [f"4000050000{n:05d}" for n in range(40)],
    "iban": ["GB82WEST12345698765432", "DE89370400440532013000"],
    "email": [f"user{n}@example.com" for n in range(20)],
}


def _luhn(partial: str) -> str:
    return partial + str((10 - luhn_checksum(partial + "0")) % 10)


VALUES["pan"] = [_luhn(v[:-1]) for v in VALUES["pan"]]
VALUES["pan_fpe"] = [_luhn(v[:-1]) for v in VALUES["pan_fpe"]]


@pytest.fixture(scope="module")
def service(
    pg_server: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceHarness]:
    harness = ServiceHarness(pg_server, tmp_path_factory.mktemp("keys")).start()
    yield harness
    harness.stop()


def _admin(
    service: ServiceHarness, caller: str = "custodian"
) -> tuple[grpc.Channel, pb_grpc.KeyAdminStub]:
    tls: TlsConfig = service.tls(caller)
    credentials = grpc.ssl_channel_credentials(tls.ca_cert, tls.client_key, tls.client_cert)
    channel = grpc.secure_channel(service.endpoint, credentials)
    return channel, pb_grpc.KeyAdminStub(channel)


def _tokenize_all(client: TokenvaultClient) -> dict[tuple[str, str], str]:
    tokens = {}
    for template, values in VALUES.items():
        outcomes = client.tokenize([TokenizeItem(template, v) for v in values])
        for value, outcome in zip(values, outcomes, strict=True):
            assert outcome.token is not None, (template, outcome.error)
            tokens[(template, value)] = outcome.token
    return tokens


def _assert_all_reveal(service: ServiceHarness, tokens: dict[tuple[str, str], str]) -> None:
    with service.client("backoffice") as backoffice:
        for template in VALUES:
            pairs = [(value, token) for (t, value), token in tokens.items() if t == template]
            outcomes = backoffice.detokenize(
                [DetokenizeItem(template, token) for _, token in pairs], reveal=Reveal.FULL
            )
            for (value, _), outcome in zip(pairs, outcomes, strict=True):
                assert outcome.value == value, (template, outcome.error)


def _wait_for_job(
    stub: pb_grpc.KeyAdminStub, job_id: int, deadline_seconds: float = 60
) -> pb.ReencryptionJob:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        job = stub.GetReencryption(pb.ReencryptionJobRequest(job_id=job_id), timeout=10)
        if job.status in ("done", "failed", "paused"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"re-encryption job {job_id} did not finish")


ADMIN_CALLS = [
    ("ListKeys", pb.ListKeysRequest()),
    ("RotateDataKey", pb.RotateDataKeyRequest(template="pan")),
    ("RotateKek", pb.RotateKekRequest()),
    (
        "SetKeyState",
        pb.SetKeyStateRequest(template="pan", purpose="aead", version=1, state="retired"),
    ),
    ("StartReencryption", pb.StartReencryptionRequest(template="pan")),
    ("PauseReencryption", pb.ReencryptionJobRequest(job_id=1)),
    ("ResumeReencryption", pb.ReencryptionJobRequest(job_id=1)),
    ("GetReencryption", pb.ReencryptionJobRequest(job_id=1)),
    ("ListReencryptions", pb.ListReencryptionsRequest()),
    ("ProposeDestroy", pb.ProposeDestroyRequest(template="pan", purpose="aead", version=1)),
    ("ApproveDestroy", pb.DestroyRequestRef(request_id=1)),
    ("CancelDestroy", pb.DestroyRequestRef(request_id=1)),
    ("ListDestroyRequests", pb.ListDestroyRequestsRequest()),
    ("ListKeyEvents", pb.ListKeyEventsRequest()),
]


@pytest.mark.parametrize("caller", ["gateway", "backoffice", "support", "nobody"])
def test_every_admin_call_needs_admin_scope(service: ServiceHarness, caller: str) -> None:
    channel, stub = _admin(service, caller)
    with channel:
        for method, request in ADMIN_CALLS:
            with pytest.raises(grpc.RpcError) as caught:
                getattr(stub, method)(request, timeout=10)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
            assert "admin:keys" in (caught.value.details() or ""), method


def test_pinned_ff1_key_refuses_rotation(service: ServiceHarness) -> None:
    channel, stub = _admin(service)
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.RotateDataKey(pb.RotateDataKeyRequest(template="iban"), timeout=10)

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "pinned" in (caught.value.details() or "")


def test_rotation_under_traffic_keeps_every_token(service: ServiceHarness) -> None:
    with service.client("gateway") as gateway:
        before = _tokenize_all(gateway)

    # Traffic keeps flowing while the custodian rotates everything.
    failures: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        with service.client("gateway") as gateway, service.client("backoffice") as backoffice:
            for _ in range(400):
                if stop.is_set():
                    return
                outcome = gateway.tokenize([TokenizeItem("pan_fpe", VALUES["pan_fpe"][0])])[0]
                if outcome.token is None:
                    failures.append(f"tokenize {outcome.error}")
                    continue
                revealed = backoffice.detokenize(
                    [DetokenizeItem("pan_fpe", outcome.token)], reveal=Reveal.FULL
                )[0]
                if revealed.value != VALUES["pan_fpe"][0]:
                    failures.append(f"detokenize {revealed.error}")

    worker = threading.Thread(target=traffic)
    worker.start()
    channel, stub = _admin(service)
    with channel:
        for template in ("pan", "pan_fpe", "email"):
            rotated = stub.RotateDataKey(pb.RotateDataKeyRequest(template=template), timeout=30)
            assert all(key.version == 2 and key.state == "active" for key in rotated.rotated)
        kek = stub.RotateKek(pb.RotateKekRequest(), timeout=60)
        assert kek.rewrapped > 0
    stop.set()
    worker.join(timeout=60)

    assert failures == []
    _assert_all_reveal(service, before)

    with service.client("gateway") as gateway:
        after = _tokenize_all(gateway)
    # Vaultless PAN tokens now carry FF1 key version 2 in their failing check digit.
    for value in VALUES["pan_fpe"]:
        new, old = after[("pan_fpe", value)], before[("pan_fpe", value)]
        assert new != old
        assert (luhn_checksum(new) - luhn_checksum(old)) % 10 in (1, 9)
    # Convergent templates keep giving existing values their existing tokens.
    for value in VALUES["email"]:
        assert after[("email", value)] == before[("email", value)]
    _assert_all_reveal(service, after)

    # Re-encrypt the vaulted rows onto the new versions; the old AES-GCM key then protects none.
    channel, stub = _admin(service)
    with channel:
        for template in ("pan", "email"):
            job = stub.StartReencryption(
                pb.StartReencryptionRequest(template=template, batch_size=7), timeout=10
            )
            finished = _wait_for_job(stub, job.job_id)
            assert finished.status == "done", finished.error
            assert finished.rows_left == 0
            assert finished.rows_done == finished.rows_total
        listing = stub.ListKeys(pb.ListKeysRequest(template="pan"), timeout=10)
    old_aead = [k for k in listing.keys if k.purpose == "aead" and k.version == 1]
    assert len(old_aead) == 1
    assert old_aead[0].rows_known
    assert old_aead[0].rows == 0
    _assert_all_reveal(service, before)
    _assert_all_reveal(service, after)


def test_destroy_needs_two_custodians(service: ServiceHarness) -> None:
    value = VALUES["pan_fpe"][2]
    with service.client("gateway") as gateway:
        token = gateway.tokenize([TokenizeItem("pan_fpe", value)])[0].token or ""
    first_channel, first = _admin(service, "custodian")
    second_channel, second = _admin(service, "custodian2")
    with first_channel, second_channel:
        listing = first.ListKeys(pb.ListKeysRequest(template="pan_fpe"), timeout=10)
        version = max(k.version for k in listing.keys if k.purpose == "fpe")
        first.RotateDataKey(pb.RotateDataKeyRequest(template="pan_fpe"), timeout=30)

        with pytest.raises(grpc.RpcError) as unforced:
            first.ProposeDestroy(
                pb.ProposeDestroyRequest(template="pan_fpe", purpose="fpe", version=version),
                timeout=10,
            )
        assert unforced.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        proposal = first.ProposeDestroy(
            pb.ProposeDestroyRequest(
                template="pan_fpe", purpose="fpe", version=version, force=True
            ),
            timeout=10,
        )
        assert proposal.status == "pending"
        with pytest.raises(grpc.RpcError) as same_person:
            first.ApproveDestroy(pb.DestroyRequestRef(request_id=proposal.request_id), timeout=10)
        assert same_person.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        # One custodian alone changed nothing: the token still reveals.
        with service.client("backoffice") as backoffice:
            outcome = backoffice.detokenize([DetokenizeItem("pan_fpe", token)], reveal=Reveal.FULL)[
                0
            ]
        assert outcome.value == value

        approved = second.ApproveDestroy(
            pb.DestroyRequestRef(request_id=proposal.request_id), timeout=10
        )
        assert approved.status == "approved"
        assert approved.approved_by.endswith("/custodian2")
        events = first.ListKeyEvents(pb.ListKeyEventsRequest(template="pan_fpe"), timeout=10).events

    assert {"destroy_proposed", "destroy_approved"} <= {e.event for e in events}
    with service.client("backoffice") as backoffice:
        outcome = backoffice.detokenize([DetokenizeItem("pan_fpe", token)], reveal=Reveal.FULL)[0]
    assert outcome.error is not None
    assert outcome.error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "destroyed" in outcome.error.message
    assert value not in outcome.error.message


def test_second_replica_sees_rotation_within_seconds(service: ServiceHarness) -> None:
    replica = service.call(
        start_server(dataclasses.replace(service.settings(), listen="127.0.0.1:0"))
    )
    try:
        tls = service.tls("gateway")
        replica_client = TokenvaultClient(f"127.0.0.1:{replica.port}", tls)
        value = VALUES["pan_fpe"][1]
        with replica_client:
            before = replica_client.tokenize([TokenizeItem("pan_fpe", value)])[0].token
            channel, stub = _admin(service)
            with channel:
                stub.RotateDataKey(pb.RotateDataKeyRequest(template="pan_fpe"), timeout=30)

            deadline = time.monotonic() + 5
            after = before
            while after == before and time.monotonic() < deadline:
                time.sleep(0.1)
                after = replica_client.tokenize([TokenizeItem("pan_fpe", value)])[0].token
        assert after != before
    finally:
        service.call(replica.stop(0.5))


def test_duplicate_purposes_are_refused(service: ServiceHarness) -> None:
    channel, stub = _admin(service)
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.RotateDataKey(
            pb.RotateDataKeyRequest(template="pan_fpe", purposes=["fpe", "fpe"]), timeout=10
        )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_concurrent_rotations_never_pass_ff1_version_cap(service: ServiceHarness) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def rotate(_: int) -> str:
        channel, stub = _admin(service)
        with channel:
            try:
                stub.RotateDataKey(pb.RotateDataKeyRequest(template="pan_fpe"), timeout=30)
                return "ok"
            except grpc.RpcError as error:
                return error.code().name

    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = list(pool.map(rotate, range(12)))
    channel, stub = _admin(service)
    with channel:
        listing = stub.ListKeys(pb.ListKeysRequest(template="pan_fpe"), timeout=10)

    assert "FAILED_PRECONDITION" in outcomes
    assert max(k.version for k in listing.keys if k.purpose == "fpe") == 9
    with service.client("gateway") as gateway:
        assert gateway.tokenize([TokenizeItem("pan_fpe", VALUES["pan_fpe"][3])])[0].ok

"""The service with its KEK in a real HSM (SoftHSM2) or Vault Transit (OpenBao), and outages."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from faultproxy import FaultProxy
from harness import ServiceHarness
from tokenvault.v1 import key_admin_pb2 as pb
from tokenvault.v1 import key_admin_pb2_grpc as pb_grpc
from tokenvault_client import DetokenizeItem, Reveal, TokenizeItem, UnavailableError

from keys.errors import KekNotFound
from keys.openbao import OpenBaoDevServer
from keys.softhsm import SoftHsm
from vault.settings import KekSettings, Pkcs11Settings, VaultTransitSettings
from vault.store.embedded import EmbeddedPostgres

PANS = ["4242424242424242", "5555555555554444", "378282246310005"]


def _admin(service: ServiceHarness) -> tuple[grpc.Channel, pb_grpc.KeyAdminStub]:
    tls = service.tls("custodian")
    credentials = grpc.ssl_channel_credentials(tls.ca_cert, tls.client_key, tls.client_cert)
    channel = grpc.secure_channel(service.endpoint, credentials)
    return channel, pb_grpc.KeyAdminStub(channel)


def _round_trip(service: ServiceHarness, template: str, values: list[str]) -> list[str]:
    with service.client("gateway") as gateway:
        tokens = [
            o.token or "" for o in gateway.tokenize([TokenizeItem(template, v) for v in values])
        ]
    _assert_reveal(service, template, values, tokens)
    return tokens


def _assert_reveal(
    service: ServiceHarness, template: str, values: list[str], tokens: list[str]
) -> None:
    with service.client("backoffice") as backoffice:
        outcomes = backoffice.detokenize(
            [DetokenizeItem(template, t) for t in tokens], reveal=Reveal.FULL
        )
    assert [o.value for o in outcomes] == values


@pytest.fixture
def hsm_service(
    pg_server: EmbeddedPostgres, hsm: SoftHsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServiceHarness]:
    monkeypatch.setenv("TOKENVAULT_HSM_PIN", hsm.pin)
    kek = KekSettings(
        provider="pkcs11",
        pkcs11=Pkcs11Settings(
            module=Path(hsm.module_path),
            token_label=hsm.token_label,
            key_label=f"e2e-{uuid.uuid4().hex[:8]}",
            create_if_missing=True,
        ),
    )
    harness = ServiceHarness(pg_server, tmp_path, kek=kek).start()
    yield harness
    harness.stop()


def test_hsm_kek_serves_and_rotates(hsm_service: ServiceHarness) -> None:
    before = _round_trip(hsm_service, "pan", PANS)
    fpe_before = _round_trip(hsm_service, "pan_fpe", PANS)

    channel, stub = _admin(hsm_service)
    with channel:
        rotated = stub.RotateKek(pb.RotateKekRequest(), timeout=60)
        listing = stub.ListKeys(pb.ListKeysRequest(), timeout=10)

    assert rotated.kek_provider == "pkcs11"
    assert rotated.kek_version == "2"
    assert rotated.rewrapped > 0
    assert {key.kek_version for key in listing.keys if key.state != "destroyed"} == {"2"}
    # Fresh unwraps go through the HSM again with the new KEK version.
    hsm_service.call(_clear_key_cache(hsm_service))
    _assert_reveal(hsm_service, "pan", PANS, before)
    _assert_reveal(hsm_service, "pan_fpe", PANS, fpe_before)


async def _clear_key_cache(service: ServiceHarness) -> None:
    assert service.running is not None
    service.running.keys.clear_cache()


@pytest.fixture(scope="module")
def bao() -> Iterator[OpenBaoDevServer]:
    server = OpenBaoDevServer().start()
    yield server
    server.stop()


@pytest.fixture
def transit_service(
    pg_server: EmbeddedPostgres,
    bao: OpenBaoDevServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[ServiceHarness, FaultProxy]]:
    monkeypatch.setenv("VAULT_TOKEN", bao.root_token)
    proxy = FaultProxy(bao.port)
    kek = KekSettings(
        provider="vault-transit",
        vault_transit=VaultTransitSettings(
            address=f"http://127.0.0.1:{proxy.port}",
            key_name=f"e2e-{uuid.uuid4().hex[:8]}",
            create_if_missing=True,
            timeout_seconds=2,
        ),
    )
    harness = ServiceHarness(pg_server, tmp_path, kek=kek).start()
    yield harness, proxy
    harness.stop()
    proxy.close()


def test_vault_outage_gives_unavailable_and_recovers(
    transit_service: tuple[ServiceHarness, FaultProxy],
) -> None:
    service, proxy = transit_service
    tokens = _round_trip(service, "pan", PANS)

    proxy.cut()
    # Keys already unwrapped keep serving while Vault is away.
    _assert_reveal(service, "pan", PANS, tokens)
    channel, stub = _admin(service)
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.RotateKek(pb.RotateKekRequest(), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "vault-transit" in (caught.value.details() or "")
    # A replica that must unwrap (its cache cleared) reports UNAVAILABLE, naming the provider.
    service.call(_clear_key_cache(service))
    with service.client("backoffice") as backoffice, pytest.raises(UnavailableError) as down:
        backoffice.detokenize([DetokenizeItem("pan", tokens[0])], reveal=Reveal.FULL)
    assert "vault-transit" in down.value.details

    proxy.restore()
    _assert_reveal(service, "pan", PANS, tokens)
    channel, stub = _admin(service)
    with channel:
        rotated = stub.RotateKek(pb.RotateKekRequest(), timeout=30)
    assert rotated.kek_provider == "vault-transit"
    assert rotated.kek_version == "2"
    _assert_reveal(service, "pan", PANS, tokens)


def test_reencryption_resumes_after_restart(pg_server: EmbeddedPostgres, tmp_path: Path) -> None:
    values = [f"resume{n}@example.com" for n in range(300)]
    first = ServiceHarness(pg_server, tmp_path).start()
    try:
        tokens = _round_trip(first, "email", values)
        channel, stub = _admin(first)
        with channel:
            stub.RotateDataKey(
                pb.RotateDataKeyRequest(template="email", purposes=["aead"]), timeout=30
            )
            job = stub.StartReencryption(
                pb.StartReencryptionRequest(
                    template="email", batch_size=10, max_rows_per_second=100
                ),
                timeout=10,
            )
            # Let a few batches commit, then stop the server in the middle of the job.
            for _ in range(100):
                progress = stub.GetReencryption(
                    pb.ReencryptionJobRequest(job_id=job.job_id), timeout=10
                )
                if progress.rows_done >= 30:
                    break
                time.sleep(0.05)
    finally:
        first.stop()
    assert 0 < progress.rows_done < 300

    second = ServiceHarness(pg_server, tmp_path, database=first.database).start()
    try:
        channel, stub = _admin(second)
        with channel:
            for _ in range(400):
                finished = stub.GetReencryption(
                    pb.ReencryptionJobRequest(job_id=job.job_id), timeout=10
                )
                if finished.status != "running":
                    break
                time.sleep(0.05)
        assert finished.status == "done", finished.error
        assert finished.rows_done == finished.rows_total == 300
        _assert_reveal(second, "email", values, tokens)
    finally:
        second.stop()


def test_data_keys_move_from_local_kek_to_hsm(
    pg_server: EmbeddedPostgres, hsm: SoftHsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENVAULT_HSM_PIN", hsm.pin)
    local = KekSettings(provider="local", file=tmp_path / "kek.json")
    hsm_kek = KekSettings(
        provider="pkcs11",
        pkcs11=Pkcs11Settings(
            module=Path(hsm.module_path),
            token_label=hsm.token_label,
            key_label=f"move-{uuid.uuid4().hex[:8]}",
            create_if_missing=True,
        ),
    )
    first = ServiceHarness(pg_server, tmp_path, kek=local).start()
    try:
        tokens = _round_trip(first, "pan", PANS)
    finally:
        first.stop()

    # The HSM alone cannot open keys the local KEK wrapped.
    refused = ServiceHarness(pg_server, tmp_path, kek=hsm_kek, database=first.database)
    with pytest.raises(KekNotFound, match="kek.previous"):
        refused.start()
    refused.stop()

    moving = ServiceHarness(
        pg_server,
        tmp_path,
        kek=dataclasses.replace(hsm_kek, previous=local),
        database=first.database,
    ).start()
    try:
        _assert_reveal(moving, "pan", PANS, tokens)
        channel, stub = _admin(moving)
        with channel:
            rotated = stub.RotateKek(pb.RotateKekRequest(), timeout=60)
            listing = stub.ListKeys(pb.ListKeysRequest(), timeout=10)
        assert rotated.kek_provider == "pkcs11"
        assert {key.kek_provider for key in listing.keys} == {"pkcs11"}
    finally:
        moving.stop()

    settled = ServiceHarness(pg_server, tmp_path, kek=hsm_kek, database=first.database).start()
    try:
        _assert_reveal(settled, "pan", PANS, tokens)
    finally:
        settled.stop()

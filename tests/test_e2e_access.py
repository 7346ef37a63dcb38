"""Access control, abuse protection and the audit trail across real server processes.

Two `tokenvault serve` processes share one database, as two replicas would. The last test runs
a workload of the public test data and then searches everything the service left behind (logs,
spans, metrics, the audit stream, every database column but the ciphertext, error messages) for
any of those values.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest
from harness import TEST_POLICY, ServiceHarness, spiffe_id
from processes import ROOT, ServerProcess
from tokenvault.v1 import caller_admin_pb2 as pb
from tokenvault.v1 import caller_admin_pb2_grpc as pb_grpc
from tokenvault_client import (
    DetokenizeItem,
    PermissionDeniedError,
    ResourceExhaustedError,
    Reveal,
    TokenizeItem,
    TokenvaultClient,
)

from vault.audit.signing import generate_keypair
from vault.store.db import ensure_database
from vault.store.embedded import EmbeddedPostgres

DATA = Path(__file__).resolve().parent / "data"


def _column(name: str, column: str) -> list[str]:
    with (DATA / name).open() as handle:
        return [row[column] for row in csv.DictReader(handle)]


PANS = _column("test-pans.csv", "pan")
IBANS = _column("iban-examples.csv", "iban")


def _closed_hours() -> str:
    """Return allowed hours that exclude the present moment (UTC)."""
    start = datetime.now(UTC) + timedelta(hours=2)
    end = start + timedelta(hours=1)
    return f"{start:%H}:00-{end:%H}:00"


POLICY = (
    TEST_POLICY
    + f"""
[[callers]]
identity = "{spiffe_id("bulk")}"
scopes = ["tokenize:*", "detokenize:*"]
rate_limits = {{ tokenize = {{ rate = 0.5, burst = 20 }} }}
anomaly = {{ max_items_per_window = 30, window_seconds = 3600 }}

[[callers]]
identity = "{spiffe_id("nightly")}"
scopes = ["detokenize:*"]
anomaly = {{ allowed_hours = "{_closed_hours()}", timezone = "UTC" }}

[[callers]]
identity = "{spiffe_id("auditor")}"
scopes = ["audit:read"]

[templates.ssn]
purpose_required = true
"""
)

AUDIT_CONFIG = """
[audit]
signing_key_file = "audit-signing.key"
checkpoint_seconds = 1
stream = "-"

[telemetry]
traces = "console"
metrics = "console"
metric_interval_seconds = 1
"""


@pytest.fixture(scope="module")
def replicas(
    pg_server: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceHarness, ServerProcess, ServerProcess]]:
    harness = ServiceHarness(pg_server, tmp_path_factory.mktemp("access"), policy=POLICY)
    harness.extra_callers = ("bulk", "nightly", "auditor")
    harness.write_files()
    generate_keypair(harness.folder / "audit-signing.key", harness.folder / "audit-signing.pub")
    asyncio.run(ensure_database(pg_server.dsn(), harness.database))
    first = ServerProcess(harness, "first", AUDIT_CONFIG).start()
    second = ServerProcess(harness, "second").start()
    yield harness, first, second
    first.stop()
    second.stop()


def _client(harness: ServiceHarness, server: ServerProcess, caller: str) -> TokenvaultClient:
    return TokenvaultClient(server.endpoint, harness.tls(caller))


def _callers_admin(
    harness: ServiceHarness, server: ServerProcess
) -> tuple[grpc.Channel, pb_grpc.CallerAdminStub]:
    tls = harness.tls("security")
    credentials = grpc.ssl_channel_credentials(tls.ca_cert, tls.client_key, tls.client_cert)
    channel = grpc.secure_channel(server.endpoint, credentials)
    return channel, pb_grpc.CallerAdminStub(channel)


def _run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def _fetch(dsn: str, sql: str) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(dsn)
        try:
            return await connection.fetch(sql)
        finally:
            await connection.close()

    return asyncio.run(run())


def test_revocation_reaches_other_replica_within_seconds(replicas) -> None:  # type: ignore[no-untyped-def]
    harness, first, second = replicas
    with _client(harness, first, "gateway") as gateway:
        token = gateway.tokenize([TokenizeItem("pan", PANS[0])])[0].token or ""

    # The back office keeps one open connection to the second replica throughout.
    with _client(harness, second, "backoffice") as backoffice:
        assert backoffice.detokenize([DetokenizeItem("pan", token)], reveal=Reveal.FULL)[0].ok
        channel, admin = _callers_admin(harness, first)
        with channel:
            admin.RevokeCaller(
                pb.RevokeCallerRequest(identity=spiffe_id("backoffice"), reason="test"), timeout=10
            )
            revoked_at = time.monotonic()
            while True:
                try:
                    backoffice.detokenize([DetokenizeItem("pan", token)], reveal=Reveal.FULL)
                except PermissionDeniedError as refused:
                    assert "revoked" in refused.details
                    break
                assert time.monotonic() - revoked_at < 5, "revocation not seen within 5 s"
                time.sleep(0.05)

            admin.RestoreCaller(
                pb.RestoreCallerRequest(identity=spiffe_id("backoffice")), timeout=10
            )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                outcome = backoffice.detokenize([DetokenizeItem("pan", token)], reveal=Reveal.FULL)
                break
            except PermissionDeniedError:
                time.sleep(0.05)
        assert outcome[0].value == PANS[0]


def test_rate_limit_refuses_with_retry_after(replicas) -> None:  # type: ignore[no-untyped-def]
    harness, first, second = replicas
    with _client(harness, first, "bulk") as bulk:
        assert all(o.ok for o in bulk.tokenize([TokenizeItem("iban", IBANS[0])] * 20))
        # The bucket is shared: the other replica refuses too.
        with (
            _client(harness, second, "bulk") as elsewhere,
            pytest.raises(ResourceExhaustedError) as refused,
        ):
            elsewhere.tokenize([TokenizeItem("iban", IBANS[0])] * 5)

    assert refused.value.retry_after is not None
    assert refused.value.retry_after > 0
    assert "rate limit" in refused.value.details


def test_detokenize_volume_suspends_until_lifted(replicas) -> None:  # type: ignore[no-untyped-def]
    harness, first, _ = replicas
    with _client(harness, first, "gateway") as gateway:
        tokens = [
            o.token or "" for o in gateway.tokenize([TokenizeItem("pan_fpe", p) for p in PANS])
        ]
    with _client(harness, first, "bulk") as bulk:
        assert all(
            o.ok
            for o in bulk.detokenize(
                [DetokenizeItem("pan_fpe", t) for t in tokens], reveal=Reveal.FULL
            )
        )
        with pytest.raises(PermissionDeniedError) as suspended:
            bulk.detokenize([DetokenizeItem("pan_fpe", t) for t in tokens], reveal=Reveal.FULL)
        assert "suspended" in suspended.value.details
        # A suspended caller is cut off for every operation, not only the one that tripped.
        with pytest.raises(PermissionDeniedError):
            bulk.tokenize([TokenizeItem("iban", IBANS[1])])

        channel, admin = _callers_admin(harness, first)
        with channel:
            listed = admin.ListSuspensions(pb.ListSuspensionsRequest(), timeout=10).suspensions
            assert [s.identity for s in listed] == [spiffe_id("bulk")]
            assert listed[0].suspended_by == "anomaly-detector"
            admin.LiftSuspension(pb.LiftSuspensionRequest(identity=spiffe_id("bulk")), timeout=10)
        deadline = time.monotonic() + 5
        while True:
            try:
                outcome = bulk.tokenize([TokenizeItem("ssn", "123-45-6789")])
                break
            except (PermissionDeniedError, ResourceExhaustedError):
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert outcome[0].ok
        # Lifting also resets the window, so the next reveal is not suspended again at once.
        again = bulk.detokenize([DetokenizeItem("pan_fpe", tokens[0])], reveal=Reveal.FULL)
        assert again[0].value == PANS[0]

    rows = _fetch(harness.dsn, "SELECT operation FROM tv_audit_log WHERE operation LIKE 'alert.%'")
    assert [row["operation"] for row in rows] == ["alert.caller_suspended"]


def test_detokenize_outside_allowed_hours_suspends(replicas) -> None:  # type: ignore[no-untyped-def]
    harness, first, _ = replicas
    with _client(harness, first, "gateway") as gateway:
        token = gateway.tokenize([TokenizeItem("iban", IBANS[2])])[0].token or ""

    with (
        _client(harness, first, "nightly") as nightly,
        pytest.raises(PermissionDeniedError) as refused,
    ):
        nightly.detokenize([DetokenizeItem("iban", token)], reveal=Reveal.FULL)

    assert "allowed hours" in refused.value.details


def test_purpose_is_required_where_policy_says(replicas) -> None:  # type: ignore[no-untyped-def]
    harness, first, _ = replicas
    with _client(harness, first, "gateway") as gateway:
        token = gateway.tokenize([TokenizeItem("ssn", "123-45-6789")])[0].token or ""

    with _client(harness, first, "backoffice") as backoffice:
        without = backoffice.detokenize([DetokenizeItem("ssn", token)], reveal=Reveal.FULL)[0]
        with_purpose = backoffice.detokenize(
            [DetokenizeItem("ssn", token)], reveal=Reveal.FULL, purpose="ticket 991"
        )[0]

    assert without.error is not None
    assert without.error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert without.error.message.startswith("purpose")
    assert with_purpose.value == "123-45-6789"


def test_policy_reloads_and_keeps_old_on_error(replicas) -> None:  # type: ignore[no-untyped-def]
    harness, first, _ = replicas
    policy_file = harness.folder / "policy.toml"
    original = policy_file.read_text()
    try:
        policy_file.write_text(
            original
            + f'\n[[callers]]\nidentity = "{spiffe_id("nobody")}"\nscopes = ["tokenize:iban"]\n'
        )
        with _client(harness, first, "nobody") as nobody:
            deadline = time.monotonic() + 5
            while True:
                try:
                    assert nobody.tokenize([TokenizeItem("iban", IBANS[3])])[0].ok
                    break
                except PermissionDeniedError:
                    assert time.monotonic() < deadline, "policy change not picked up"
                    time.sleep(0.1)

        policy_file.write_text(original + "\n[[callers]]\nidentity = 42\n")
        channel, admin = _callers_admin(harness, first)
        with channel:
            reload = admin.ReloadPolicy(pb.ReloadPolicyRequest(), timeout=10)
            status = admin.GetPolicyStatus(pb.GetPolicyStatusRequest(), timeout=10)
        assert not reload.applied
        assert "identity" in reload.error
        assert status.last_error
        # The policy in force is still the last good one.
        with _client(harness, first, "nobody") as nobody:
            assert nobody.tokenize([TokenizeItem("iban", IBANS[3])])[0].ok
    finally:
        policy_file.write_text(original)


def _audit_cli(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed command
        [sys.executable, "-m", "vault", "audit", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
        env=dict(os.environ, TOKENVAULT_TEST_DSN=dsn),
    )


def test_no_plaintext_anywhere_and_audit_verifies(replicas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    harness, first, _ = replicas
    failures = []
    with (
        _client(harness, first, "gateway") as gateway,
        _client(harness, first, "backoffice") as backoffice,
        _client(harness, first, "support") as support,
    ):
        for template, values in (("pan", PANS), ("pan_fpe", PANS), ("iban", IBANS)):
            outcomes = gateway.tokenize(
                [TokenizeItem(template, v, f"r{n}") for n, v in enumerate(values)]
            )
            tokens = [o.token or "" for o in outcomes]
            revealed = backoffice.detokenize(
                [DetokenizeItem(template, t) for t in tokens],
                reveal=Reveal.FULL,
                purpose="plaintext search",
            )
            assert [o.value for o in revealed] == values
            support.detokenize([DetokenizeItem(template, t) for t in tokens], reveal=Reveal.MASKED)
            # Bad input and refused calls produce error messages and denied audit events too.
            bad = gateway.tokenize([TokenizeItem(template, v[:-1] + "x") for v in values])
            failures += [o.error.message for o in bad if o.error]
            try:
                support.detokenize(
                    [DetokenizeItem(template, t) for t in tokens], reveal=Reveal.FULL
                )
            except PermissionDeniedError as refused:
                failures.append(refused.details)
    # Stopping the replica flushes its span and metric exporters and writes a last checkpoint.
    first.stop()

    export = tmp_path / "audit.jsonl"
    exported = _audit_cli(
        "export", "--dsn-env", "TOKENVAULT_TEST_DSN", "--output", str(export), dsn=harness.dsn
    )
    assert exported.returncode == 0, exported.stderr
    verified = _audit_cli(
        "verify",
        "--public-key",
        str(harness.folder / "audit-signing.pub"),
        "--file",
        str(export),
        dsn=harness.dsn,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert any(json.loads(line)["type"] == "checkpoint" for line in export.read_text().splitlines())

    texts = [first.output(), export.read_text(), "\n".join(failures)]
    tables = _fetch(
        harness.dsn,
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND data_type IN ('text', 'jsonb', 'ARRAY', 'bytea')",
    )
    for row in tables:
        if (row["table_name"], row["column_name"]) in {
            ("tv_tokens", "ciphertext"),
            ("tv_data_keys", "wrapped_key"),
        }:
            continue
        values = _fetch(
            harness.dsn, f'SELECT "{row["column_name"]}"::text AS v FROM "{row["table_name"]}"'
        )
        texts.append("\n".join(str(v["v"]) for v in values))
    everything = "\n".join(texts)

    # The search covers real telemetry: spans and metrics were exported to the output.
    assert "tokenvault.v1.Tokenization/Detokenize" in first.output()
    assert "tokenvault.rpc.duration" in first.output()
    for name in (
        "db.tokens.insert",
        "kek.unwrap",
        "tokenvault.key_cache.requests",
        "tokenvault.audit.events",
    ):
        assert name in first.output(), name
    for value in PANS + IBANS:
        assert value not in everything, "a test value appears outside the ciphertext"


def test_audit_verify_detects_an_edited_row(replicas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    harness, _, _ = replicas
    export = tmp_path / "audit.jsonl"
    assert (
        _audit_cli(
            "export", "--dsn-env", "TOKENVAULT_TEST_DSN", "--output", str(export), dsn=harness.dsn
        ).returncode
        == 0
    )
    lines = export.read_text().splitlines()
    events = [n for n, line in enumerate(lines) if json.loads(line)["type"] == "event"]
    edited = json.loads(lines[events[1]])
    edited["caller"] = "spiffe://tokenvault.test/somebody-else"
    lines[events[1]] = json.dumps(edited)
    export.write_text("\n".join(lines) + "\n")

    verified = _audit_cli(
        "verify",
        "--public-key",
        str(harness.folder / "audit-signing.pub"),
        "--file",
        str(export),
        dsn=harness.dsn,
    )

    assert verified.returncode == 1
    assert f"seq {edited['seq']}" in verified.stdout + verified.stderr


def test_auditor_pulls_trail_that_verifies(replicas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    harness, _, second = replicas
    pulled = tmp_path / "pulled.jsonl"
    flags = ["--target", second.endpoint, "--ca", str(harness.folder / "ca.pem")]
    auditor = flags + [
        "--cert",
        str(harness.folder / "auditor.pem"),
        "--key",
        str(harness.folder / "auditor-key.pem"),
    ]
    gateway = flags + [
        "--cert",
        str(harness.folder / "gateway.pem"),
        "--key",
        str(harness.folder / "gateway-key.pem"),
    ]

    result = _audit_cli("pull", *auditor, "--output", str(pulled), dsn=harness.dsn)
    refused = _audit_cli("pull", *gateway, dsn=harness.dsn)
    verified = _audit_cli(
        "verify",
        "--public-key",
        str(harness.folder / "audit-signing.pub"),
        "--file",
        str(pulled),
        dsn=harness.dsn,
    )

    assert result.returncode == 0, result.stderr
    assert len(pulled.read_text().splitlines()) > 10
    assert refused.returncode == 2
    assert "audit:read" in refused.stderr
    assert verified.returncode == 0, verified.stdout + verified.stderr

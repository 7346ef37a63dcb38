"""The `tokenvault` command as a user runs it: dev with demo, serve checks, client commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ServiceHarness

from vault.store.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent


def tokenvault(
    *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed command
        [sys.executable, "-m", "vault", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


@pytest.fixture(scope="module")
def dev_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("dev-state")
    yield state
    EmbeddedPostgres(state).destroy()


def test_dev_runs_demo_on_fresh_state(dev_state: Path) -> None:
    result = tokenvault(
        "dev", "--state", str(dev_state), "--listen", "127.0.0.1:0", "--exit-after-demo"
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert "values tokenized and revealed intact" in result.stdout
    assert "denied (PERMISSION_DENIED)" in result.stdout
    for private in ["kek.json", "ca-key.pem", "server-key.pem", "clients/gateway-key.pem"]:
        assert (dev_state / private).stat().st_mode & 0o077 == 0, private


def test_dev_restarts_on_existing_state(dev_state: Path) -> None:
    first = tokenvault(
        "dev", "--state", str(dev_state), "--listen", "127.0.0.1:0", "--exit-after-demo"
    )
    assert first.returncode == 0, first.stderr[-3000:]

    again = tokenvault(
        "dev", "--state", str(dev_state), "--listen", "127.0.0.1:0", "--exit-after-demo"
    )

    assert again.returncode == 0, again.stderr[-3000:]
    assert "values tokenized and revealed intact" in again.stdout


def test_dev_output_masks_values(dev_state: Path) -> None:
    result = tokenvault(
        "dev", "--state", str(dev_state), "--listen", "127.0.0.1:0", "--exit-after-demo"
    )

    output = result.stdout + result.stderr
    pans = (Path(__file__).resolve().parent / "data" / "test-pans.csv").read_text().split()
    # The usage hint shows 4111111111111111 as an example command; no other test PAN may appear.
    for pan in (line.split(",")[0] for line in pans[1:]):
        if pan != "4111111111111111":
            assert pan not in output
    assert "411111******1111" in result.stdout


def _write_config(folder: Path, **overrides: str) -> Path:
    tls = {
        "cert_file": "server.pem",
        "key_file": "server-key.pem",
        "client_ca_file": "ca.pem",
    }
    tls.update(overrides)
    lines = ["[tls]"] + [f'{k} = "{v}"' for k, v in tls.items()]
    lines += ["[database]", 'dsn = "postgresql://u@127.0.0.1:1/db"']
    lines += ["[kek]", 'file = "kek.json"', "[policy]", 'file = "policy.toml"']
    config = folder / "config.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


@pytest.fixture(scope="module")
def service(
    pg_server: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceHarness]:
    harness = ServiceHarness(pg_server, tmp_path_factory.mktemp("cli")).start()
    yield harness
    harness.stop()


def test_serve_refuses_missing_tls_file(service: ServiceHarness) -> None:
    config = _write_config(service.folder, cert_file="missing.pem")

    result = tokenvault("serve", "--config", str(config))

    assert result.returncode == 2
    assert "tls.cert_file" in result.stderr
    assert "missing.pem" in result.stderr


def test_serve_refuses_kek_readable_by_others(service: ServiceHarness, tmp_path: Path) -> None:
    for name in ["server.pem", "server-key.pem", "ca.pem", "policy.toml"]:
        (tmp_path / name).write_bytes((service.folder / name).read_bytes())
    (tmp_path / "kek.json").write_bytes((service.folder / "kek.json").read_bytes())
    os.chmod(tmp_path / "kek.json", 0o644)
    config = _write_config(tmp_path)

    result = tokenvault("serve", "--config", str(config))

    assert result.returncode == 2
    assert "chmod" in result.stderr


def _connection_flags(service: ServiceHarness, caller: str) -> list[str]:
    folder = service.folder
    return [
        "--target",
        service.endpoint,
        "--ca",
        str(folder / "ca.pem"),
        "--cert",
        str(folder / f"{caller}.pem"),
        "--key",
        str(folder / f"{caller}-key.pem"),
    ]


def test_tokenize_then_detokenize_through_cli(service: ServiceHarness) -> None:
    tokenized = tokenvault(
        "tokenize",
        *_connection_flags(service, "gateway"),
        "--template",
        "pan",
        "4111111111111111",
        "5555555555554444",
    )
    assert tokenized.returncode == 0, tokenized.stderr
    records = [json.loads(line) for line in tokenized.stdout.splitlines()]
    tokens = [record["token"] for record in records]
    assert len(tokens) == 2

    revealed = tokenvault(
        "detokenize",
        *_connection_flags(service, "backoffice"),
        "--template",
        "pan",
        "--reveal",
        "full",
        stdin="\n".join(tokens) + "\n",
    )

    assert revealed.returncode == 0, revealed.stderr
    values = [json.loads(line)["value"] for line in revealed.stdout.splitlines()]
    assert values == ["4111111111111111", "5555555555554444"]


def test_cli_reports_item_errors_with_exit_1(service: ServiceHarness) -> None:
    result = tokenvault(
        "tokenize",
        *_connection_flags(service, "gateway"),
        "--template",
        "pan",
        "4111111111111111",
        "4111111111111112",
    )

    assert result.returncode == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert "token" in records[0]
    assert records[1]["error"]["code"] == "INVALID_ARGUMENT"
    assert "4111111111111112" not in result.stdout + result.stderr


def test_cli_reads_csv_file(service: ServiceHarness) -> None:
    data = Path(__file__).resolve().parent / "data" / "iban-examples.csv"

    result = tokenvault(
        "tokenize",
        *_connection_flags(service, "gateway"),
        "--template",
        "iban",
        "--file",
        str(data),
        "--column",
        "iban",
    )

    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == len(data.read_text().splitlines()) - 1


def test_cli_denied_call_exits_2(service: ServiceHarness) -> None:
    result = tokenvault(
        "detokenize",
        *_connection_flags(service, "gateway"),
        "--template",
        "pan",
        "--reveal",
        "full",
        "4111110000001111",
    )

    assert result.returncode == 2
    assert "PERMISSION_DENIED" in result.stderr or "permission" in result.stderr.lower()


def test_keys_init_local_creates_private_file(tmp_path: Path) -> None:
    kek = tmp_path / "kek.json"

    created = tokenvault("keys", "init-local", str(kek))
    again = tokenvault("keys", "init-local", str(kek))

    assert created.returncode == 0, created.stderr
    assert kek.stat().st_mode & 0o777 == 0o600
    assert again.returncode == 2
    assert "never overwritten" in again.stderr


def _admin_flags(service: ServiceHarness, caller: str = "custodian") -> list[str]:
    return _connection_flags(service, caller)


def test_keys_cli_rotates_and_reencrypts(service: ServiceHarness) -> None:
    tokenized = tokenvault(
        "tokenize",
        *_connection_flags(service, "gateway"),
        "--template",
        "email",
        "a@example.com",
        "b@example.com",
    )
    assert tokenized.returncode == 0, tokenized.stderr
    tokens = [json.loads(line)["token"] for line in tokenized.stdout.splitlines()]

    rotated = tokenvault("keys", "rotate", *_admin_flags(service), "--template", "email", "--json")
    assert rotated.returncode == 0, rotated.stderr
    reencrypted = tokenvault(
        "keys", "reencrypt", *_admin_flags(service), "--template", "email", "--wait", "--json"
    )
    assert reencrypted.returncode == 0, reencrypted.stderr
    listing = tokenvault("keys", "list", *_admin_flags(service), "--template", "email", "--json")
    assert listing.returncode == 0, listing.stderr
    versions = json.loads(listing.stdout)
    assert "aead" in listing.stdout, versions
    assert "decrypt_only" in listing.stdout, versions

    revealed = tokenvault(
        "detokenize",
        *_connection_flags(service, "backoffice"),
        "--template",
        "email",
        "--reveal",
        "full",
        *tokens,
    )
    assert [json.loads(line)["value"] for line in revealed.stdout.splitlines()] == [
        "a@example.com",
        "b@example.com",
    ]


def test_keys_cli_destroy_needs_second_custodian(service: ServiceHarness) -> None:
    assert tokenvault("keys", "rotate", *_admin_flags(service), "--template", "pan").returncode == 0
    proposed = tokenvault(
        "keys",
        "destroy",
        *_admin_flags(service),
        "--template",
        "pan",
        "--purpose",
        "index",
        "--version",
        "1",
        "--force",
        "--json",
    )
    assert proposed.returncode == 0, proposed.stderr
    request_id = str(json.loads(proposed.stdout)["request_id"])

    same = tokenvault("keys", "approve", *_admin_flags(service), request_id)
    other = tokenvault("keys", "approve", *_admin_flags(service, "custodian2"), request_id)

    assert same.returncode == 2
    assert "FAILED_PRECONDITION" in same.stderr or "approve" in same.stderr
    assert other.returncode == 0, other.stderr


def test_keys_cli_requires_admin_scope(service: ServiceHarness) -> None:
    result = tokenvault("keys", "list", *_admin_flags(service, "gateway"))

    assert result.returncode == 2
    assert "admin:keys" in result.stderr


def test_callers_cli_revokes_and_restores(service: ServiceHarness) -> None:
    security = _connection_flags(service, "custodian2")
    refused = tokenvault("callers", "revocations", *security)
    assert refused.returncode == 2
    assert "admin:callers" in refused.stderr


def test_callers_cli_revoke_cuts_caller_off(service: ServiceHarness) -> None:
    security = _connection_flags(service, "security")
    identity = "spiffe://tokenvault.test/support"
    revoked = tokenvault("callers", "revoke", *security, "--identity", identity, "--reason", "test")
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["identity"] == identity

    denied = tokenvault(
        "detokenize",
        *_connection_flags(service, "support"),
        "--template",
        "pan",
        "--reveal",
        "masked",
        "4111110000001111",
    )
    restored = tokenvault("callers", "restore", *security, "--identity", identity)

    assert denied.returncode == 2
    assert "revoked" in denied.stderr
    assert restored.returncode == 0, restored.stderr


def test_tokenize_output_pipes_into_detokenize(service: ServiceHarness) -> None:
    tokenized = tokenvault(
        "tokenize", *_connection_flags(service, "gateway"), "--template", "pan", "4111111111111111"
    )
    revealed = tokenvault(
        "detokenize",
        *_connection_flags(service, "backoffice"),
        "--template",
        "pan",
        "--reveal",
        "full",
        "--file",
        "-",
        stdin=tokenized.stdout,
    )

    assert revealed.returncode == 0, revealed.stderr
    assert json.loads(revealed.stdout)["value"] == "4111111111111111"

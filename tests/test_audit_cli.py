"""`tokenvault audit` keygen, export and verify, run as a subprocess against a real PostgreSQL.

The commands run through a small argparse program built with ``vault.audit.cli.add_parser``,
the same way ``vault.cli.build_parser`` adds every subcommand.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from vault.audit import cli
from vault.audit.events import AuditEvent
from vault.audit.signing import generate_keypair, load_signing_key
from vault.audit.trail import AuditTrail

REPOSITORY = Path(__file__).resolve().parent.parent
PROGRAM = """
import argparse, sys
from vault.audit import cli
parser = argparse.ArgumentParser(prog="tokenvault")
cli.add_parser(parser.add_subparsers(dest="command", required=True))
options = parser.parse_args(sys.argv[1:])
sys.exit(options.func(options))
"""


def run_audit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, "audit", *args],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def parse(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tokenvault")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["audit", *args])


@dataclass(frozen=True)
class AuditDatabase:
    dsn: str
    private_key: Path
    public_key: Path


@pytest_asyncio.fixture(loop_scope="session")
async def audit_database(db_pool: asyncpg.Pool, database_dsn: str, tmp_path: Path) -> AuditDatabase:
    """A database with 6 audited events and a checkpoint, and the key files that signed it."""
    private_key = tmp_path / "audit.key"
    public_key = tmp_path / "audit.pub"
    generate_keypair(private_key, public_key)
    trail = AuditTrail(db_pool, signing_key=load_signing_key(private_key))
    await trail.start()
    for number in range(3):
        events = [
            AuditEvent(
                caller="support-desk",
                operation="detokenize",
                template="email",
                reveal="masked",
                outcome="ok",
                status_code="OK",
                request_id=f"req-{number}-{part}",
            )
            for part in range(2)
        ]
        await trail.record(events, durable=True)
    await trail.stop()
    return AuditDatabase(database_dsn, private_key, public_key)


def test_keygen_writes_private_key_mode_0600(tmp_path: Path) -> None:
    private_key = tmp_path / "audit.key"
    public_key = tmp_path / "audit.pub"

    result = run_audit("keygen", "--private", str(private_key), "--public", str(public_key))

    assert result.returncode == 0, result.stderr
    assert "key id" in result.stdout
    assert stat.S_IMODE(private_key.stat().st_mode) == 0o600
    assert len(public_key.read_text().strip()) == 44  # base64 of 32 bytes


def test_keygen_never_overwrites(tmp_path: Path) -> None:
    private_key = tmp_path / "audit.key"
    private_key.write_text("existing")

    result = run_audit(
        "keygen", "--private", str(private_key), "--public", str(tmp_path / "audit.pub")
    )

    assert result.returncode == 2
    assert "already exists" in result.stderr
    assert private_key.read_text() == "existing"
    assert not (tmp_path / "audit.pub").exists()


def test_export_then_verify_file(audit_database: AuditDatabase, tmp_path: Path) -> None:
    export_path = tmp_path / "export.jsonl"

    exported = run_audit("export", "--dsn", audit_database.dsn, "--output", str(export_path))
    verified = run_audit(
        "verify", "--public-key", str(audit_database.public_key), "--file", str(export_path)
    )

    assert exported.returncode == 0, exported.stderr
    assert "exported 6 events and 1 checkpoints" in exported.stderr
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == (
        "audit trail intact: 6 events (seq 1 to 6), 1 checkpoints, last signed seq 6\n"
    )


def test_export_to_stdout_with_range(audit_database: AuditDatabase) -> None:
    result = run_audit(
        "export",
        "--dsn-env",
        "AUDIT_TEST_DSN",
        "--from",
        "2",
        "--to",
        "4",
        env={"AUDIT_TEST_DSN": audit_database.dsn},
    )

    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["seq"] for record in records] == [2, 3, 4]
    assert {record["type"] for record in records} == {"event"}


def test_verify_database_by_dsn_env(audit_database: AuditDatabase) -> None:
    result = run_audit(
        "verify",
        "--public-key",
        str(audit_database.public_key),
        "--dsn-env",
        "AUDIT_TEST_DSN",
        env={"AUDIT_TEST_DSN": audit_database.dsn},
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("audit trail intact: 6 events")


def test_verify_reports_edited_export(audit_database: AuditDatabase, tmp_path: Path) -> None:
    export_path = tmp_path / "export.jsonl"
    run_audit("export", "--dsn", audit_database.dsn, "--output", str(export_path))
    lines = export_path.read_text().splitlines(keepends=True)
    record = json.loads(lines[3])
    record["reveal"] = "full"
    lines[3] = json.dumps(record) + "\n"
    export_path.write_text("".join(lines))

    result = run_audit(
        "verify", "--public-key", str(audit_database.public_key), "--file", str(export_path)
    )

    assert result.returncode == 1
    assert result.stdout == "audit trail broken at seq 4: hash mismatch (row edited)\n"


def test_verify_without_source_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as raised:
        parse("verify", "--public-key", str(tmp_path / "audit.pub"))

    assert raised.value.code == 2


def test_verify_two_sources_is_usage_error() -> None:
    with pytest.raises(SystemExit) as raised:
        parse("verify", "--public-key", "k", "--file", "f", "--dsn", "postgresql://x/y")

    assert raised.value.code == 2


def test_verify_missing_public_key_file(tmp_path: Path) -> None:
    result = run_audit(
        "verify",
        "--public-key",
        str(tmp_path / "missing.pub"),
        "--file",
        str(tmp_path / "export.jsonl"),
    )

    assert result.returncode == 2
    assert "missing.pub" in result.stderr


def test_export_unset_dsn_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUDIT_TEST_UNSET_VARIABLE", raising=False)
    options = parse("export", "--dsn-env", "AUDIT_TEST_UNSET_VARIABLE")

    assert cli.run_export(options) == 2


def test_export_range_reversed() -> None:
    options = parse("export", "--dsn", "postgresql://127.0.0.1/none", "--from", "5", "--to", "2")

    assert cli.run_export(options) == 2


def test_range_rejects_zero() -> None:
    with pytest.raises(SystemExit) as raised:
        parse("export", "--dsn", "postgresql://127.0.0.1/none", "--from", "0")

    assert raised.value.code == 2

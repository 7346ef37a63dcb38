"""KeyAdmin client library and `tokenvault keys` admin commands.

Most tests need no server: proto conversion, progress and ETA math, tables, JSON shapes and
argument parsing. The last section runs the client and the CLI against a small fake KeyAdmin
servicer on 127.0.0.1 with mutual TLS, to check the channel set-up, error mapping and
`reencrypt --wait` against a job that progresses. The real server is not used here.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from google.protobuf import timestamp_pb2
from tokenvault.v1 import key_admin_pb2 as pb
from tokenvault.v1 import key_admin_pb2_grpc as pb_grpc
from tokenvault_client import (
    DestroyRequest,
    FailedPreconditionError,
    KekRotation,
    KekVersion,
    KeyAdminClient,
    KeyEvent,
    KeyListing,
    KeyVersion,
    NotFoundError,
    PermissionDeniedError,
    ReencryptionJob,
    TlsConfig,
    TokenvaultClientError,
    UnavailableError,
    error_from_rpc,
)

from vault import pki
from vault.cli import build_parser, key_progress, key_tables
from vault.cli import keys as cli
from vault.devstate import StatePaths

CREATED = datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.UTC)
UPDATED = datetime.datetime(2024, 5, 2, 8, 30, 15, tzinfo=datetime.UTC)


def _timestamp(value: datetime.datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value)
    return message


def _job(**overrides: Any) -> ReencryptionJob:
    settings: dict[str, Any] = {
        "job_id": 7,
        "template": "email",
        "status": "running",
        "target_version": 3,
        "target_index_version": 0,
        "rows_done": 4500,
        "rows_total": 10000,
        "rows_left": 5500,
        "rows_per_second": 1100.0,
        "started_by": "spiffe://tokenvault.dev/custodian",
        "started_at": CREATED,
        "updated_at": UPDATED,
        "finished_at": None,
        "error": "",
    }
    settings.update(overrides)
    return ReencryptionJob(**settings)


def _key(**overrides: Any) -> KeyVersion:
    settings: dict[str, Any] = {
        "template": "email",
        "purpose": "aead",
        "version": 2,
        "state": "active",
        "kek": KekVersion("local", "dev-kek", "1"),
        "created_at": CREATED,
        "updated_at": UPDATED,
        "rows": 1234,
    }
    settings.update(overrides)
    return KeyVersion(**settings)


# Conversion from proto messages


def test_key_version_from_proto() -> None:
    message = pb.KeyVersion(
        template="email",
        purpose="aead",
        version=2,
        state="decrypt_only",
        kek_provider="pkcs11",
        kek_key_id="tokenvault-kek",
        kek_version="3",
        created_at=_timestamp(CREATED),
        updated_at=_timestamp(UPDATED),
        rows=42,
        rows_known=True,
    )

    key = KeyVersion.from_proto(message)

    assert key == KeyVersion(
        template="email",
        purpose="aead",
        version=2,
        state="decrypt_only",
        kek=KekVersion("pkcs11", "tokenvault-kek", "3"),
        created_at=CREATED,
        updated_at=UPDATED,
        rows=42,
    )
    assert key.created_at is not None
    assert key.created_at.tzinfo is datetime.UTC


def test_key_version_unknown_rows_and_unset_times() -> None:
    key = KeyVersion.from_proto(pb.KeyVersion(template="pan", purpose="fpe", rows=0))

    assert key.rows is None
    assert key.created_at is None
    assert key.updated_at is None


def test_key_version_zero_known_rows() -> None:
    key = KeyVersion.from_proto(pb.KeyVersion(purpose="aead", rows=0, rows_known=True))

    assert key.rows == 0


def test_key_version_is_frozen() -> None:
    key = _key()

    with pytest.raises(AttributeError):
        key.state = "retired"  # type: ignore[misc]


def test_key_listing_from_proto() -> None:
    message = pb.ListKeysResponse(
        keys=[pb.KeyVersion(template="pan", version=1), pb.KeyVersion(template="pan", version=2)],
        kek_provider="transit",
        kek_key_id="tokenvault",
        kek_version="7",
    )

    listing = KeyListing.from_proto(message)

    assert [key.version for key in listing.keys] == [1, 2]
    assert isinstance(listing.keys, tuple)
    assert listing.kek == KekVersion("transit", "tokenvault", "7")


def test_kek_rotation_from_proto() -> None:
    message = pb.RotateKekResponse(
        kek_provider="local", kek_key_id="dev-kek", kek_version="2", rewrapped=9
    )

    assert KekRotation.from_proto(message) == KekRotation(KekVersion("local", "dev-kek", "2"), 9)


def test_reencryption_job_from_proto() -> None:
    message = pb.ReencryptionJob(
        job_id=7,
        template="email",
        status="failed",
        target_version=3,
        target_index_version=2,
        rows_done=10,
        rows_total=20,
        rows_left=10,
        rows_per_second=12.5,
        started_by="spiffe://tokenvault.dev/custodian",
        started_at=_timestamp(CREATED),
        updated_at=_timestamp(UPDATED),
        finished_at=_timestamp(UPDATED),
        error="row 11: authentication failed",
    )

    job = ReencryptionJob.from_proto(message)

    assert job == _job(
        status="failed",
        target_index_version=2,
        rows_done=10,
        rows_total=20,
        rows_left=10,
        rows_per_second=12.5,
        finished_at=UPDATED,
        error="row 11: authentication failed",
    )
    assert job.finished


@pytest.mark.parametrize(
    ("status", "finished"),
    [("running", False), ("paused", False), ("done", True), ("failed", True)],
)
def test_reencryption_job_finished(status: str, finished: bool) -> None:
    assert _job(status=status).finished is finished


def test_destroy_request_from_proto_pending() -> None:
    message = pb.DestroyRequest(
        request_id=12,
        template="pan",
        purpose="aead",
        version=1,
        force=True,
        status="pending",
        proposed_by="spiffe://tokenvault.dev/custodian",
        proposed_at=_timestamp(CREATED),
    )

    request = DestroyRequest.from_proto(message)

    assert request == DestroyRequest(
        request_id=12,
        template="pan",
        purpose="aead",
        version=1,
        force=True,
        status="pending",
        proposed_by="spiffe://tokenvault.dev/custodian",
        proposed_at=CREATED,
        approved_by="",
        approved_at=None,
    )


def test_key_event_from_proto() -> None:
    message = pb.KeyEvent(
        id=31,
        occurred_at=_timestamp(UPDATED),
        template="pan",
        purpose="aead",
        version=2,
        event="state_changed",
        from_state="decrypt_only",
        to_state="retired",
        actor="spiffe://tokenvault.dev/custodian",
    )

    event = KeyEvent.from_proto(message)

    assert event.event_id == 31
    assert event.occurred_at == UPDATED
    assert (event.from_state, event.to_state) == ("decrypt_only", "retired")
    assert event.actor == "spiffe://tokenvault.dev/custodian"


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__()
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_error_from_rpc_maps_failed_precondition() -> None:
    error = error_from_rpc(
        FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "a different custodian must approve")
    )

    assert type(error) is FailedPreconditionError
    assert str(error) == "FAILED_PRECONDITION: a different custodian must approve"


def test_client_rejects_bad_arguments() -> None:
    tls = TlsConfig(b"ca", b"cert", b"key")

    with pytest.raises(ValueError, match="target"):
        KeyAdminClient("", tls)
    with pytest.raises(ValueError, match="timeout"):
        KeyAdminClient("127.0.0.1:1", tls, timeout=0)
    with KeyAdminClient("127.0.0.1:1", tls) as client:
        with pytest.raises(ValueError, match="limit"):
            client.list_key_events(limit=1001)
        with pytest.raises(ValueError, match="batch_size"):
            client.start_reencryption("pan", batch_size=-1)
        with pytest.raises(ValueError, match="max_rows_per_second"):
            client.start_reencryption("pan", max_rows_per_second=-5)


# Progress and ETA


def test_progress_percent() -> None:
    assert key_tables.progress_percent(_job(rows_done=4500, rows_total=10000)) == 45.0
    assert key_tables.progress_percent(_job(rows_done=0, rows_total=0, status="running")) == 0.0
    assert key_tables.progress_percent(_job(rows_done=0, rows_total=0, status="done")) == 100.0
    # Rows added after the job counted its total must not push the bar past the end.
    assert key_tables.progress_percent(_job(rows_done=120, rows_total=100)) == 100.0


def test_estimate_seconds_left() -> None:
    assert key_progress.estimate_seconds_left(_job(rows_left=5500, rows_per_second=1100.0)) == 5.0
    assert key_progress.estimate_seconds_left(_job(rows_left=5500, rows_per_second=0.0)) is None
    assert key_progress.estimate_seconds_left(_job(status="paused", rows_per_second=1100.0)) is None
    assert key_progress.estimate_seconds_left(_job(status="done", rows_left=0)) == 0.0
    assert key_progress.estimate_seconds_left(_job(rows_left=0, rows_per_second=0.0)) == 0.0


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.0, "0:00:00"),
        (5.0, "0:00:05"),
        (4.2, "0:00:05"),
        (59.5, "0:01:00"),
        (3725.0, "1:02:05"),
        (100 * 3600.0, "100:00:00"),
        (None, "?"),
    ],
)
def test_format_duration(seconds: float | None, expected: str) -> None:
    assert key_progress.format_duration(seconds) == expected


def test_render_progress_bar_narrow_terminal() -> None:
    line = key_progress.render_progress_bar(_job(), columns=80)

    assert line == (
        "job 7 running [####......]  45.0%  4,500/10,000 rows  1,100 rows/s  ETA 0:00:05"
    )
    assert len(line) < 80


def test_render_progress_bar_wide_terminal() -> None:
    line = key_progress.render_progress_bar(_job(), columns=200)

    assert line.startswith("job 7 running [" + "#" * 18 + "." * 22 + "]")


def test_render_progress_bar_width_stays_put() -> None:
    early = key_progress.render_progress_bar(_job(rows_done=0, rows_per_second=0.0), columns=120)
    later = key_progress.render_progress_bar(
        _job(rows_done=4500, rows_per_second=98765.0), columns=120
    )

    assert early.index("]") == later.index("]")


def test_render_progress_bar_cut_to_terminal() -> None:
    line = key_progress.render_progress_bar(_job(), columns=40)

    assert len(line) == 39
    assert line.startswith("job 7 running [####......]")


def test_render_progress_bar_unknown_rate_and_done() -> None:
    waiting = key_progress.render_progress_bar(_job(rows_done=0, rows_per_second=0.0), columns=100)
    done = key_progress.render_progress_bar(
        _job(status="done", rows_done=10000, rows_left=0, rows_per_second=900.0), columns=100
    )

    assert waiting.endswith("0/10,000 rows  0 rows/s  ETA ?")
    assert "[" + "." * 10 in waiting
    assert done.startswith("job 7 done    [####")
    assert "." not in done.split("]")[0]
    assert done.endswith("100.0%  10,000/10,000 rows  900 rows/s  ETA 0:00:00")


def test_format_progress_line() -> None:
    assert key_progress.format_progress_line(_job()) == (
        "job 7 running: 45.0%  4,500/10,000 rows  1,100 rows/s  ETA 0:00:05"
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_plain_progress_every_five_seconds() -> None:
    stream = io.StringIO()
    clock = FakeClock()
    reporter = key_progress.ProgressReporter(stream, tty=False, clock=clock)

    for now, rows_done in [(0.0, 0), (1.0, 100), (4.9, 490), (5.0, 500), (7.0, 700)]:
        clock.now = now
        reporter.update(_job(rows_done=rows_done))
    clock.now = 8.0
    reporter.update(_job(status="done", rows_done=10000, rows_left=0))
    reporter.close()

    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("job 7 running: 0.0%  0/10,000 rows")
    assert lines[1].startswith("job 7 running: 5.0%  500/10,000 rows")
    assert lines[2].startswith("job 7 done: 100.0%  10,000/10,000 rows")


def test_progress_uses_observed_rate_without_server_rate() -> None:
    stream = io.StringIO()
    clock = FakeClock()
    reporter = key_progress.ProgressReporter(stream, tty=False, clock=clock)

    reporter.update(_job(rows_done=1000, rows_left=9000, rows_per_second=0.0))
    clock.now = 5.0
    reporter.update(_job(rows_done=1500, rows_left=8500, rows_per_second=0.0))

    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("0 rows/s  ETA ?")
    assert lines[1].endswith("1,500/10,000 rows  100 rows/s  ETA 0:01:25")


def test_progress_prefers_server_rate() -> None:
    stream = io.StringIO()
    clock = FakeClock()
    reporter = key_progress.ProgressReporter(stream, tty=False, clock=clock)

    reporter.update(_job(rows_done=1000, rows_per_second=0.0))
    clock.now = 5.0
    reporter.update(_job(rows_done=1500, rows_left=8500, rows_per_second=850.0))

    assert stream.getvalue().splitlines()[1].endswith("850 rows/s  ETA 0:00:10")


def test_plain_progress_close_writes_last_state() -> None:
    stream = io.StringIO()
    clock = FakeClock()
    reporter = key_progress.ProgressReporter(stream, tty=False, clock=clock)

    reporter.update(_job(rows_done=0))
    clock.now = 1.0
    reporter.update(_job(rows_done=100))
    reporter.close()

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "100/10,000 rows" in lines[1]


def test_tty_progress_redraws_one_line() -> None:
    stream = io.StringIO()
    reporter = key_progress.ProgressReporter(stream, tty=True, columns=lambda: 80)

    reporter.update(_job(rows_done=0))
    reporter.update(_job())
    reporter.close()

    output = stream.getvalue()
    assert output.count("\r") == 2
    assert output.count("\x1b[K") == 2
    assert output.count("\n") == 1
    assert output.endswith("ETA 0:00:05\x1b[K\n")


def test_tty_progress_note_starts_new_line() -> None:
    stream = io.StringIO()
    reporter = key_progress.ProgressReporter(stream, tty=True, columns=lambda: 80)

    reporter.update(_job())
    reporter.note("polling failed")
    reporter.close()

    assert stream.getvalue().endswith("\x1b[K\npolling failed\n")


def _follow(
    responses: Sequence[ReencryptionJob | TokenvaultClientError],
    *,
    timeout: float,
    first: ReencryptionJob | None = None,
) -> tuple[key_progress.FollowResult, FakeClock, list[int], io.StringIO]:
    pending = list(responses)
    fetched: list[int] = []
    clock = FakeClock()
    stream = io.StringIO()

    def fetch(job_id: int) -> ReencryptionJob:
        fetched.append(job_id)
        response = pending.pop(0)
        if isinstance(response, TokenvaultClientError):
            raise response
        return response

    reporter = key_progress.ProgressReporter(stream, tty=False, clock=clock)
    result = key_progress.follow_job(
        fetch,
        first or _job(rows_done=0),
        timeout=timeout,
        reporter=reporter,
        clock=clock,
        sleep=clock.sleep,
    )
    return result, clock, fetched, stream


def test_follow_job_until_done() -> None:
    done = _job(status="done", rows_done=10000, rows_left=0)

    result, clock, fetched, _ = _follow([_job(), done], timeout=60)

    assert result == key_progress.FollowResult(done, timed_out=False)
    assert fetched == [7, 7]
    assert clock.sleeps == [0.5, 0.5]


def test_follow_job_stops_when_paused() -> None:
    paused = _job(status="paused")

    result, _, fetched, _ = _follow([paused], timeout=60)

    assert result.job == paused
    assert not result.timed_out
    assert fetched == [7]


def test_follow_job_times_out() -> None:
    result, clock, fetched, _ = _follow([_job()] * 10, timeout=1.2)

    assert result.timed_out
    assert result.job == _job()
    assert clock.sleeps == [0.5, 0.5, pytest.approx(0.2)]
    assert len(fetched) == 3


def test_follow_job_finished_job_makes_no_call() -> None:
    done = _job(status="done")

    result, clock, fetched, _ = _follow([], timeout=60, first=done)

    assert result == key_progress.FollowResult(done, timed_out=False)
    assert fetched == []
    assert clock.sleeps == []


def test_follow_job_retries_unavailable() -> None:
    outage = UnavailableError(grpc.StatusCode.UNAVAILABLE, "connection refused")
    done = _job(status="done", rows_done=10000, rows_left=0)

    result, _, fetched, stream = _follow([outage, outage, done], timeout=60)

    assert result.job == done
    assert len(fetched) == 3
    # One note per outage, not one per failed poll.
    assert stream.getvalue().count("connection refused; retrying") == 1


def test_follow_job_raises_when_outage_outlasts_wait() -> None:
    outage = UnavailableError(grpc.StatusCode.UNAVAILABLE, "connection refused")

    with pytest.raises(UnavailableError):
        _follow([outage] * 10, timeout=1.0)


def test_follow_job_raises_other_errors_at_once() -> None:
    missing = NotFoundError(grpc.StatusCode.NOT_FOUND, "job 7 not found")

    with pytest.raises(NotFoundError):
        _follow([missing], timeout=60)


# Tables


def test_format_table_aligns_columns() -> None:
    table = key_tables.format_table(
        ("NAME", "ROWS", "NOTE"),
        [("pan", "5", "first"), ("email-long", "1,234", "")],
        right_aligned={1},
    )

    assert table.splitlines() == [
        "NAME         ROWS  NOTE",
        "pan             5  first",
        "email-long  1,234",
    ]


def test_format_table_header_only() -> None:
    assert key_tables.format_table(("A", "B"), []) == "A  B"


def test_format_time() -> None:
    offset = datetime.timezone(datetime.timedelta(hours=2))

    assert key_tables.format_time(CREATED) == "2024-05-01T12:00:00Z"
    assert key_tables.format_time(datetime.datetime(2024, 5, 1, 14, 0, tzinfo=offset)) == (
        "2024-05-01T12:00:00Z"
    )
    assert key_tables.format_time(None) == "-"


def test_key_table() -> None:
    table = key_tables.key_table(
        [_key(), _key(template="pan", purpose="fpe", version=12, state="retired", rows=None)]
    )

    assert table.splitlines() == [
        "TEMPLATE  PURPOSE  VERSION  STATE    KEK               ROWS  CREATED"
        "               UPDATED",
        "email     aead           2  active   local:dev-kek:1  1,234  2024-05-01T12:00:00Z"
        "  2024-05-02T08:30:15Z",
        "pan       fpe           12  retired  local:dev-kek:1      -  2024-05-01T12:00:00Z"
        "  2024-05-02T08:30:15Z",
    ]


def test_job_table() -> None:
    lines = key_tables.job_table([_job(target_index_version=2, error="")]).splitlines()

    assert lines[0].split() == [
        "JOB",
        "TEMPLATE",
        "STATUS",
        "TARGET",
        "DONE",
        "TOTAL",
        "PERCENT",
        "ROWS/S",
        "STARTED",
        "BY",
        "STARTED",
        "UPDATED",
        "FINISHED",
        "ERROR",
    ]
    assert lines[1].split() == [
        "7",
        "email",
        "running",
        "3",
        "(index",
        "2)",
        "4,500",
        "10,000",
        "45.0%",
        "1,100",
        "spiffe://tokenvault.dev/custodian",
        "2024-05-01T12:00:00Z",
        "2024-05-02T08:30:15Z",
        "-",
    ]


def test_request_table_marks_missing_approval() -> None:
    request = DestroyRequest(12, "pan", "aead", 1, False, "pending", "alice", CREATED, "", None)

    lines = key_tables.request_table([request]).splitlines()

    assert lines[1].split() == [
        "12",
        "pan",
        "aead",
        "1",
        "no",
        "pending",
        "alice",
        "2024-05-01T12:00:00Z",
        "-",
        "-",
    ]


def test_event_table_blank_fields() -> None:
    event = KeyEvent(3, UPDATED, "", "", 0, "kek_rotated", "", "", "alice")

    lines = key_tables.event_table([event]).splitlines()

    assert lines[0].split() == [
        "ID",
        "TIME",
        "TEMPLATE",
        "PURPOSE",
        "VERSION",
        "EVENT",
        "FROM",
        "TO",
        "ACTOR",
    ]
    assert lines[1].split() == [
        "3",
        "2024-05-02T08:30:15Z",
        "-",
        "-",
        "-",
        "kek_rotated",
        "-",
        "-",
        "alice",
    ]


# JSON output


def test_json_key_listing_shape() -> None:
    listing = KeyListing(keys=(_key(rows=None),), kek=KekVersion("local", "dev-kek", "1"))

    document = key_tables.to_json_document(listing)

    assert document == {
        "keys": [
            {
                "template": "email",
                "purpose": "aead",
                "version": 2,
                "state": "active",
                "kek": {"provider": "local", "key_id": "dev-kek", "version": "1"},
                "created_at": "2024-05-01T12:00:00+00:00",
                "updated_at": "2024-05-02T08:30:15+00:00",
                "rows": None,
            }
        ],
        "kek": {"provider": "local", "key_id": "dev-kek", "version": "1"},
    }
    assert json.loads(json.dumps(document)) == document


def test_json_job_shape() -> None:
    document = key_tables.to_json_document(_job())

    assert document == {
        "job_id": 7,
        "template": "email",
        "status": "running",
        "target_version": 3,
        "target_index_version": 0,
        "rows_done": 4500,
        "rows_total": 10000,
        "rows_left": 5500,
        "rows_per_second": 1100.0,
        "started_by": "spiffe://tokenvault.dev/custodian",
        "started_at": "2024-05-01T12:00:00+00:00",
        "updated_at": "2024-05-02T08:30:15+00:00",
        "finished_at": None,
        "error": "",
    }


def test_json_wrapped_lists() -> None:
    request = DestroyRequest(12, "pan", "aead", 1, True, "pending", "alice", CREATED, "", None)

    document = key_tables.to_json_document({"requests": (request,)})

    assert document == {
        "requests": [
            {
                "request_id": 12,
                "template": "pan",
                "purpose": "aead",
                "version": 1,
                "force": True,
                "status": "pending",
                "proposed_by": "alice",
                "proposed_at": "2024-05-01T12:00:00+00:00",
                "approved_by": "",
                "approved_at": None,
            }
        ]
    }


def test_json_kek_rotation_shape() -> None:
    rotation = KekRotation(KekVersion("local", "dev-kek", "2"), rewrapped=9)

    assert key_tables.to_json_document(rotation) == {
        "kek": {"provider": "local", "key_id": "dev-kek", "version": "2"},
        "rewrapped": 9,
    }


# Argument parsing


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    return build_parser().parse_args(["keys", *argv])


KEY_VERSION = ["--template", "pan", "--purpose", "aead", "--version", "2"]

PARSE_CASES: list[tuple[list[str], Callable[..., int], dict[str, Any]]] = [
    (["list"], cli.run_list, {"template": None}),
    (["list", "--template", "pan"], cli.run_list, {"template": "pan"}),
    (["rotate", "--template", "pan"], cli.run_rotate, {"template": "pan", "purposes": []}),
    (
        ["rotate", "--template", "email", "--purpose", "aead", "--purpose", "index"],
        cli.run_rotate,
        {"purposes": ["aead", "index"]},
    ),
    (["rotate-kek"], cli.run_rotate_kek, {}),
    (
        ["retire", *KEY_VERSION],
        cli.run_retire,
        {"template": "pan", "purpose": "aead", "version": 2},
    ),
    (["reinstate", *KEY_VERSION], cli.run_reinstate, {"version": 2}),
    (
        ["reencrypt", "--template", "email"],
        cli.run_reencrypt,
        {
            "template": "email",
            "batch_size": 0,
            "max_rows_per_second": 0,
            "wait": False,
            "wait_timeout": key_progress.DEFAULT_WAIT_SECONDS,
            "timeout": 10.0,
        },
    ),
    (
        [
            "reencrypt",
            "--template",
            "email",
            "--batch-size",
            "100",
            "--max-rows-per-second",
            "2000",
            "--wait",
            "--timeout",
            "60",
            "--request-timeout",
            "5",
        ],
        cli.run_reencrypt,
        {
            "batch_size": 100,
            "max_rows_per_second": 2000,
            "wait": True,
            "wait_timeout": 60.0,
            "timeout": 5.0,
        },
    ),
    (["status"], cli.run_status, {"job_id": None, "template": None, "watch": False}),
    (["status", "7", "--watch"], cli.run_status, {"job_id": 7, "watch": True}),
    (
        ["status", "--template", "pan", "--watch", "--timeout", "30"],
        cli.run_status,
        {"job_id": None, "template": "pan", "watch": True, "wait_timeout": 30.0},
    ),
    (["pause", "7"], cli.run_pause, {"job_id": 7}),
    (["resume", "7"], cli.run_resume, {"job_id": 7}),
    (["destroy", *KEY_VERSION], cli.run_destroy, {"version": 2, "force": False}),
    (["destroy", *KEY_VERSION, "--force"], cli.run_destroy, {"force": True}),
    (["approve", "12"], cli.run_approve, {"request_id": 12}),
    (["cancel", "12"], cli.run_cancel, {"request_id": 12}),
    (["requests"], cli.run_requests, {"all_requests": False}),
    (["requests", "--all"], cli.run_requests, {"all_requests": True}),
    (["events"], cli.run_events, {"template": None, "limit": 100}),
    (
        ["events", "--template", "pan", "--limit", "1000"],
        cli.run_events,
        {"template": "pan", "limit": 1000},
    ),
]


@pytest.mark.parametrize(("argv", "action", "expected"), PARSE_CASES)
def test_parse_admin_subcommand(
    argv: list[str], action: Callable[..., int], expected: dict[str, Any]
) -> None:
    args = _parse(argv)

    assert args.func is cli.run_admin_command
    assert args.action is action
    assert args.keys_command == argv[0]
    assert args.caller == "custodian"
    assert args.json is False
    for name, value in expected.items():
        assert getattr(args, name) == value, name


@pytest.mark.parametrize("argv", [case[0] for case in PARSE_CASES])
def test_parse_connection_and_json_options(argv: list[str]) -> None:
    args = _parse([*argv, "--json", "--as", "auditor", "--target", "vault:443", "--state", "s"])

    assert args.json is True
    assert args.caller == "auditor"
    assert args.target == "vault:443"
    assert args.state == Path("s")


def test_parse_init_local_kept() -> None:
    args = _parse(["init-local", "kek.json"])

    assert args.func is cli.init_local
    assert args.file == Path("kek.json")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rotate"], "--template"),
        (["rotate", "--template", "pan", "--purpose", "rsa"], "invalid choice"),
        (["retire", "--template", "pan", "--purpose", "aead"], "--version"),
        (["retire", "--template", "pan", "--purpose", "aead", "--version", "0"], "at least 1"),
        (["destroy", "--template", "pan", "--version", "1"], "--purpose"),
        (["events", "--limit", "0"], "at least 1"),
        (["events", "--limit", "1001"], "at most 1000"),
        (["pause"], "JOB_ID"),
        (["resume", "seven"], "invalid integer"),
        (["approve"], "REQUEST_ID"),
        (["reencrypt", "--template", "pan", "--batch-size", "0"], "at least 1"),
        (["status", "--timeout", "0"], "positive number"),
        (["list", "--request-timeout", "5"], "unrecognized arguments"),
        (["list", "--wait"], "unrecognized arguments"),
    ],
)
def test_parse_rejects_invalid_arguments(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        _parse(argv)

    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_state_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["list", "--state", str(tmp_path)])

    exit_code = args.func(args)

    captured = capsys.readouterr()
    assert exit_code == 2
    assert captured.out == ""
    assert captured.err.startswith("tokenvault keys list: missing file ")
    assert "tokenvault dev" in captured.err


def test_describe_admin_error_hints() -> None:
    denied = PermissionDeniedError(grpc.StatusCode.PERMISSION_DENIED, "caller lacks admin:keys")
    slow = TokenvaultClientError(grpc.StatusCode.DEADLINE_EXCEEDED, "")
    refused = FailedPreconditionError(
        grpc.StatusCode.FAILED_PRECONDITION, "a different custodian must approve request 4"
    )

    assert "--as custodian" in cli.describe_admin_error(denied, "t:1", waits=False)
    assert cli.describe_admin_error(slow, "t:1", waits=True).endswith("Raise --request-timeout")
    assert cli.describe_admin_error(slow, "t:1", waits=False).endswith("Raise --timeout")
    assert cli.describe_admin_error(refused, "t:1", waits=False) == (
        "FAILED_PRECONDITION: a different custodian must approve request 4"
    )


# Against a fake KeyAdmin servicer


@dataclass
class FakeKeyAdmin(pb_grpc.KeyAdminServicer):
    """Fake KeyAdmin that grants admin:keys to callers whose common name starts with custodian.

    A re-encryption job advances 400 of 1000 rows per GetReencryption. Template "failing"
    fails at the second poll and "pausing" pauses there. Destroy requests follow dual control.
    """

    requests: list[Any] = field(default_factory=list)
    jobs: dict[int, pb.ReencryptionJob] = field(default_factory=dict)
    polls: dict[int, int] = field(default_factory=dict)
    destroy_requests: dict[int, pb.DestroyRequest] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _caller(self, request: Any, context: grpc.ServicerContext) -> str:
        self.requests.append(request)
        names = context.auth_context().get("x509_common_name", [b""])
        caller = names[0].decode()
        if not caller.startswith("custodian"):
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"caller {caller} lacks the scope admin:keys",
            )
        return caller

    def ListKeys(  # noqa: N802
        self, request: pb.ListKeysRequest, context: grpc.ServicerContext
    ) -> pb.ListKeysResponse:
        self._caller(request, context)
        keys = [
            pb.KeyVersion(
                template="email",
                purpose="aead",
                version=1,
                state="decrypt_only",
                kek_provider="local",
                kek_key_id="dev-kek",
                kek_version="1",
                created_at=_timestamp(CREATED),
                rows=10,
                rows_known=True,
            ),
            pb.KeyVersion(template="pan", purpose="fpe", version=1, state="active"),
        ]
        if request.template:
            keys = [key for key in keys if key.template == request.template]
        return pb.ListKeysResponse(
            keys=keys, kek_provider="local", kek_key_id="dev-kek", kek_version="1"
        )

    def RotateDataKey(  # noqa: N802
        self, request: pb.RotateDataKeyRequest, context: grpc.ServicerContext
    ) -> pb.RotateDataKeyResponse:
        self._caller(request, context)
        if request.template == "pan":
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "template pan: tokens carry no key version, so its FF1 key cannot rotate",
            )
        purposes = list(request.purposes) or ["aead"]
        return pb.RotateDataKeyResponse(
            rotated=[
                pb.KeyVersion(template=request.template, purpose=purpose, version=2, state="active")
                for purpose in purposes
            ]
        )

    def StartReencryption(  # noqa: N802
        self, request: pb.StartReencryptionRequest, context: grpc.ServicerContext
    ) -> pb.ReencryptionJob:
        caller = self._caller(request, context)
        with self.lock:
            job_id = len(self.jobs) + 1
            job = pb.ReencryptionJob(
                job_id=job_id,
                template=request.template,
                status="running",
                target_version=2,
                rows_total=1000,
                rows_left=1000,
                started_by=caller,
                started_at=_timestamp(CREATED),
            )
            self.jobs[job_id] = job
            self.polls[job_id] = 0
        return job

    def GetReencryption(  # noqa: N802
        self, request: pb.ReencryptionJobRequest, context: grpc.ServicerContext
    ) -> pb.ReencryptionJob:
        self._caller(request, context)
        with self.lock:
            job = self.jobs.get(request.job_id)
            if job is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id} not found")
            self.polls[job.job_id] += 1
            if job.status == "running":
                self._advance(job, self.polls[job.job_id])
            return job

    @staticmethod
    def _advance(job: pb.ReencryptionJob, poll: int) -> None:
        if poll >= 2 and job.template == "failing":
            job.status = "failed"
            job.error = "row 401: authentication failed"
            return
        if poll >= 2 and job.template == "pausing":
            job.status = "paused"
            return
        job.rows_done = min(job.rows_total, job.rows_done + 400)
        job.rows_left = job.rows_total - job.rows_done
        job.rows_per_second = 800.0
        if job.rows_left == 0:
            job.status = "done"
            job.finished_at.CopyFrom(_timestamp(UPDATED))

    def ListReencryptions(  # noqa: N802
        self, request: pb.ListReencryptionsRequest, context: grpc.ServicerContext
    ) -> pb.ListReencryptionsResponse:
        self._caller(request, context)
        with self.lock:
            jobs = [
                job
                for job in self.jobs.values()
                if (not request.template or job.template == request.template)
                and (not request.unfinished_only or job.status in ("running", "paused"))
            ]
        return pb.ListReencryptionsResponse(jobs=jobs)

    def ProposeDestroy(  # noqa: N802
        self, request: pb.ProposeDestroyRequest, context: grpc.ServicerContext
    ) -> pb.DestroyRequest:
        caller = self._caller(request, context)
        with self.lock:
            request_id = len(self.destroy_requests) + 1
            proposal = pb.DestroyRequest(
                request_id=request_id,
                template=request.template,
                purpose=request.purpose,
                version=request.version,
                force=request.force,
                status="pending",
                proposed_by=caller,
                proposed_at=_timestamp(CREATED),
            )
            self.destroy_requests[request_id] = proposal
        return proposal

    def ApproveDestroy(  # noqa: N802
        self, request: pb.DestroyRequestRef, context: grpc.ServicerContext
    ) -> pb.DestroyRequest:
        caller = self._caller(request, context)
        with self.lock:
            proposal = self.destroy_requests[request.request_id]
            if proposal.proposed_by == caller:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"destroy request {request.request_id} was proposed by {caller}; "
                    "a different custodian must approve it",
                )
            proposal.status = "approved"
            proposal.approved_by = caller
            proposal.approved_at.CopyFrom(_timestamp(UPDATED))
            return proposal

    def ListKeyEvents(  # noqa: N802
        self, request: pb.ListKeyEventsRequest, context: grpc.ServicerContext
    ) -> pb.ListKeyEventsResponse:
        self._caller(request, context)
        return pb.ListKeyEventsResponse(
            events=[
                pb.KeyEvent(id=2, event="rotated", template="email", version=2, actor="custodian")
            ]
        )


@dataclass(frozen=True)
class FakeServer:
    target: str
    service: FakeKeyAdmin
    ca_cert: bytes
    # PEM certificate and key per client common name.
    clients: dict[str, tuple[bytes, bytes]]


def _pem_key(issued: pki.IssuedCertificate | pki.CertificateAuthority) -> bytes:
    return issued.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(issued: pki.IssuedCertificate | pki.CertificateAuthority) -> bytes:
    return issued.certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    ca = pki.create_ca("admin test CA", days=1)
    server_cert = pki.issue_server_certificate(ca, hosts=["127.0.0.1"], days=1)
    clients = {}
    for name in ("custodian", "custodian-2", "gateway"):
        issued = pki.issue_client_certificate(
            ca, common_name=name, spiffe_id=StatePaths.spiffe_id(name), days=1
        )
        clients[name] = (_pem_cert(issued), _pem_key(issued))

    service = FakeKeyAdmin()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_KeyAdminServicer_to_server(service, grpc_server)
    credentials = grpc.ssl_server_credentials(
        [(_pem_key(server_cert), _pem_cert(server_cert))],
        root_certificates=_pem_cert(ca),
        require_client_auth=True,
    )
    port = grpc_server.add_secure_port("127.0.0.1:0", credentials)
    grpc_server.start()
    try:
        yield FakeServer(f"127.0.0.1:{port}", service, _pem_cert(ca), clients)
    finally:
        grpc_server.stop(grace=None)


@pytest.fixture
def state(server: FakeServer, tmp_path: Path) -> Path:
    """A dev state folder that points at the fake server and contains every client certificate."""
    paths = StatePaths(tmp_path / "state")
    paths.client_cert("custodian").parent.mkdir(parents=True)
    paths.endpoint.write_text(server.target + "\n")
    paths.ca_cert.write_bytes(server.ca_cert)
    for name, (cert, key) in server.clients.items():
        paths.client_cert(name).write_bytes(cert)
        paths.client_key(name).write_bytes(key)
    return paths.root


def _client(server: FakeServer, caller: str = "custodian") -> KeyAdminClient:
    cert, key = server.clients[caller]
    return KeyAdminClient(server.target, TlsConfig(server.ca_cert, cert, key), timeout=5)


def _run(state: Path, *argv: str) -> int:
    args = _parse([*argv, "--state", str(state)])
    return int(args.func(args))


@pytest.fixture
def fast_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(key_progress, "POLL_INTERVAL_SECONDS", 0.01)


def test_client_list_keys_over_mutual_tls(server: FakeServer) -> None:
    with _client(server) as client:
        listing = client.list_keys("email")

    assert listing.kek == KekVersion("local", "dev-kek", "1")
    assert [(key.template, key.rows) for key in listing.keys] == [("email", 10)]
    assert listing.keys[0].created_at == CREATED


def test_client_sends_request_fields(server: FakeServer) -> None:
    with _client(server) as client:
        rotated = client.rotate_data_key("email", ["aead", "index"])
        client.start_reencryption("email", batch_size=50, max_rows_per_second=300)
        client.propose_destroy("email", "aead", 1, force=True)
        client.list_key_events("email", limit=5)

    sent = server.service.requests[-4:]
    assert [key.purpose for key in rotated] == ["aead", "index"]
    assert list(sent[0].purposes) == ["aead", "index"]
    assert (sent[1].batch_size, sent[1].max_rows_per_second) == (50, 300)
    assert sent[2].force is True
    assert (sent[3].template, sent[3].limit) == ("email", 5)


def test_client_maps_permission_denied(server: FakeServer) -> None:
    with _client(server, "gateway") as client, pytest.raises(PermissionDeniedError) as caught:
        client.list_keys()

    assert "admin:keys" in caught.value.details


def test_client_maps_dual_control_rejection(server: FakeServer) -> None:
    with _client(server) as client:
        proposal = client.propose_destroy("email", "aead", 1)
        with pytest.raises(FailedPreconditionError, match="a different custodian"):
            client.approve_destroy(proposal.request_id)
    with _client(server, "custodian-2") as other:
        approved = other.approve_destroy(proposal.request_id)

    assert approved.status == "approved"
    assert approved.approved_by == "custodian-2"
    assert approved.approved_at == UPDATED


def test_client_unimplemented_method(server: FakeServer) -> None:
    with _client(server) as client, pytest.raises(TokenvaultClientError) as caught:
        client.rotate_kek()

    assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED


def test_cli_list_json(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exit_code = _run(state, "list", "--json")

    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert exit_code == 0
    assert document["kek"] == {"provider": "local", "key_id": "dev-kek", "version": "1"}
    assert [key["template"] for key in document["keys"]] == ["email", "pan"]
    assert document["keys"][0]["rows"] == 10
    assert document["keys"][1]["rows"] is None
    assert document["keys"][0]["created_at"] == "2024-05-01T12:00:00+00:00"


def test_cli_list_table(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exit_code = _run(state, "list")

    lines = capsys.readouterr().out.splitlines()
    assert exit_code == 0
    assert lines[0] == "KEK for new data keys: local:dev-kek:1"
    assert lines[1].split()[:4] == ["TEMPLATE", "PURPOSE", "VERSION", "STATE"]
    assert lines[2].split()[:6] == ["email", "aead", "1", "decrypt_only", "local:dev-kek:1", "10"]


def test_cli_permission_denied_names_scope(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exit_code = _run(state, "list", "--as", "gateway")

    captured = capsys.readouterr()
    assert exit_code == 2
    assert captured.out == ""
    assert captured.err.startswith("tokenvault keys list: PERMISSION_DENIED: ")
    assert "admin:keys" in captured.err


def test_cli_rotate_failed_precondition(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exit_code = _run(state, "rotate", "--template", "pan")

    captured = capsys.readouterr()
    assert exit_code == 2
    assert captured.err == (
        "tokenvault keys rotate: FAILED_PRECONDITION: template pan: tokens carry no key "
        "version, so its FF1 key cannot rotate\n"
    )


def test_cli_destroy_then_self_approval_rejected(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proposed = _run(state, "destroy", "--template", "email", "--purpose", "aead", "--version", "1")
    proposal_output = capsys.readouterr().out
    request_id = proposal_output.split()[3].rstrip(":")
    approved_by_self = _run(state, "approve", request_id)
    self_error = capsys.readouterr().err
    approved = _run(state, "approve", request_id, "--as", "custodian-2")
    approval_output = capsys.readouterr().out

    assert proposed == 0
    assert proposal_output.startswith(f"proposed destroy request {request_id}: email aead ")
    assert "Another custodian must approve it" in proposal_output
    assert approved_by_self == 2
    assert "a different custodian must approve it" in self_error
    assert approved == 0
    assert approval_output == (
        f"approved destroy request {request_id}: email aead version 1 is destroyed\n"
    )


def test_cli_reencrypt_wait_until_done(
    state: Path, fast_polling: None, capsys: pytest.CaptureFixture[str]
) -> None:
    exit_code = _run(state, "reencrypt", "--template", "email", "--wait", "--json")

    captured = capsys.readouterr()
    job = json.loads(captured.out)
    progress = captured.err.splitlines()
    assert exit_code == 0
    assert job["status"] == "done"
    assert (job["rows_done"], job["rows_total"], job["rows_left"]) == (1000, 1000, 0)
    assert job["finished_at"] == "2024-05-02T08:30:15+00:00"
    # Standard error is not a terminal here, so progress comes as plain lines.
    assert progress[0] == f"job {job['job_id']} running: 0.0%  0/1,000 rows  0 rows/s  ETA ?"
    assert progress[-1].startswith(f"job {job['job_id']} done: 100.0%  1,000/1,000 rows")
    assert "\r" not in captured.err


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("failing", "failed: row 401: authentication failed"),
        ("pausing", "is paused at 400 of 1,000 rows. Resume it with `tokenvault keys resume"),
    ],
)
def test_cli_reencrypt_wait_unfinished_exits_1(
    state: Path,
    fast_polling: None,
    capsys: pytest.CaptureFixture[str],
    template: str,
    message: str,
) -> None:
    exit_code = _run(state, "reencrypt", "--template", template, "--wait")

    captured = capsys.readouterr()
    assert exit_code == 1
    assert message in captured.err
    assert captured.out.splitlines()[0].split()[:3] == ["JOB", "TEMPLATE", "STATUS"]


def test_cli_wait_timeout_exits_1(
    state: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(key_progress, "POLL_INTERVAL_SECONDS", 0.2)

    exit_code = _run(state, "reencrypt", "--template", "email", "--wait", "--timeout", "0.1")

    captured = capsys.readouterr()
    assert exit_code == 1
    assert "is still running after 0.1 s" in captured.err
    assert "--watch" in captured.err


def test_cli_status_watch_follows_only_unfinished_job(
    server: FakeServer, state: Path, fast_polling: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with _client(server) as client:
        started = client.start_reencryption("watched")

    exit_code = _run(state, "status", "--template", "watched", "--watch", "--json")

    captured = capsys.readouterr()
    assert exit_code == 0
    assert json.loads(captured.out)["job_id"] == started.job_id
    assert json.loads(captured.out)["status"] == "done"


def test_cli_status_watch_without_unfinished_job(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exit_code = _run(state, "status", "--template", "nothing-running", "--watch")

    captured = capsys.readouterr()
    assert exit_code == 2
    assert "no running or paused re-encryption job for template nothing-running" in captured.err


def test_cli_status_rejects_template_with_job_id(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exit_code = _run(state, "status", "1", "--template", "email")

    assert exit_code == 2
    assert "pass either JOB_ID or --template" in capsys.readouterr().err


def test_cli_status_unknown_job(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exit_code = _run(state, "status", "9999")

    captured = capsys.readouterr()
    assert exit_code == 2
    assert captured.err == "tokenvault keys status: NOT_FOUND: job 9999 not found\n"


def test_cli_events_table(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exit_code = _run(state, "events", "--template", "email", "--limit", "5")

    lines = capsys.readouterr().out.splitlines()
    assert exit_code == 0
    assert lines[1].split() == ["2", "-", "email", "-", "2", "rotated", "-", "-", "custodian"]


def test_cli_unreachable_server(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Port 1 on 127.0.0.1 has no listener, so the channel fails without leaving the machine.
    exit_code = _run(state, "list", "--target", "127.0.0.1:1", "--timeout", "2")

    captured = capsys.readouterr()
    assert exit_code == 2
    assert "UNAVAILABLE" in captured.err
    assert "127.0.0.1:1" in captured.err

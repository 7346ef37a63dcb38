"""Tables and JSON output of the key administration commands."""

from __future__ import annotations

import dataclasses
import datetime
import json
import sys
from collections.abc import Collection, Sequence
from typing import Any

from tokenvault_client import (
    DestroyRequest,
    KekVersion,
    KeyEvent,
    KeyVersion,
    ReencryptionJob,
)

# Tables


def progress_percent(job: ReencryptionJob) -> float:
    """Return the share of rows done from 0 to 100. A done job without rows counts as 100."""
    if job.rows_total > 0:
        return min(100.0, 100.0 * job.rows_done / job.rows_total)
    return 100.0 if job.status == "done" else 0.0


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right_aligned: Collection[int] = ()
) -> str:
    """Align ``rows`` under ``headers`` in columns two spaces apart.

    Columns whose index is in ``right_aligned`` are padded on the left, as numbers are.
    Trailing spaces are removed from every line.
    """
    widths = [len(header) for header in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    lines = []
    for row in (headers, *rows):
        cells = [
            cell.rjust(widths[index]) if index in right_aligned else cell.ljust(widths[index])
            for index, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_time(value: datetime.datetime | None) -> str:
    """Format a timestamp as UTC ISO 8601 to the second, or "-" when unset."""
    if value is None:
        return "-"
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_kek(kek: KekVersion) -> str:
    """Format a KEK version as provider:key_id:version."""
    return f"{kek.provider}:{kek.key_id}:{kek.version}"


def format_target(job: ReencryptionJob) -> str:
    """Format the versions a job moves rows to, with the index key version when it has one."""
    if job.target_index_version > 0:
        return f"{job.target_version} (index {job.target_index_version})"
    return str(job.target_version)


def key_table(keys: Sequence[KeyVersion]) -> str:
    headers = ("TEMPLATE", "PURPOSE", "VERSION", "STATE", "KEK", "ROWS", "CREATED", "UPDATED")
    rows = [
        (
            key.template,
            key.purpose,
            str(key.version),
            key.state,
            format_kek(key.kek),
            "-" if key.rows is None else f"{key.rows:,}",
            format_time(key.created_at),
            format_time(key.updated_at),
        )
        for key in keys
    ]
    return format_table(headers, rows, right_aligned={2, 5})


def job_table(jobs: Sequence[ReencryptionJob]) -> str:
    headers = (
        "JOB",
        "TEMPLATE",
        "STATUS",
        "TARGET",
        "DONE",
        "TOTAL",
        "PERCENT",
        "ROWS/S",
        "STARTED BY",
        "STARTED",
        "UPDATED",
        "FINISHED",
        "ERROR",
    )
    rows = [
        (
            str(job.job_id),
            job.template,
            job.status,
            format_target(job),
            f"{job.rows_done:,}",
            f"{job.rows_total:,}",
            f"{progress_percent(job):.1f}%",
            f"{job.rows_per_second:,.0f}",
            job.started_by,
            format_time(job.started_at),
            format_time(job.updated_at),
            format_time(job.finished_at),
            job.error,
        )
        for job in jobs
    ]
    return format_table(headers, rows, right_aligned={0, 4, 5, 6, 7})


def request_table(requests: Sequence[DestroyRequest]) -> str:
    headers = (
        "REQUEST",
        "TEMPLATE",
        "PURPOSE",
        "VERSION",
        "FORCE",
        "STATUS",
        "PROPOSED BY",
        "PROPOSED",
        "APPROVED BY",
        "APPROVED",
    )
    rows = [
        (
            str(request.request_id),
            request.template,
            request.purpose,
            str(request.version),
            "yes" if request.force else "no",
            request.status,
            request.proposed_by,
            format_time(request.proposed_at),
            request.approved_by or "-",
            format_time(request.approved_at),
        )
        for request in requests
    ]
    return format_table(headers, rows, right_aligned={0, 3})


def event_table(events: Sequence[KeyEvent]) -> str:
    headers = ("ID", "TIME", "TEMPLATE", "PURPOSE", "VERSION", "EVENT", "FROM", "TO", "ACTOR")
    rows = [
        (
            str(event.event_id),
            format_time(event.occurred_at),
            event.template or "-",
            event.purpose or "-",
            str(event.version) if event.version else "-",
            event.event,
            event.from_state or "-",
            event.to_state or "-",
            event.actor,
        )
        for event in events
    ]
    return format_table(headers, rows, right_aligned={0, 4})


# Output


def to_json_document(value: Any) -> Any:
    """Convert results to JSON types.

    Dataclasses become objects, tuples arrays, and datetimes ISO 8601 strings with their offset.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: to_json_document(getattr(value, field.name))
            for field in dataclasses.fields(value)
        }
    if isinstance(value, dict):
        return {key: to_json_document(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_document(item) for item in value]
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return value


def write_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_json_document(value), indent=2) + "\n")
    sys.stdout.flush()


def write_text(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()

"""Telemetry with in-memory exporters: span attributes, error redaction, nesting and metrics."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import vault.telemetry as telemetry_module
from keys.errors import UnwrapError
from keys.local import LocalKekProvider
from keys.tracing import TracedKekProvider
from vault.errors import ConfigError, InvalidValue
from vault.telemetry import (
    Telemetry,
    TelemetrySettings,
    child_span,
    current_trace_id,
    db_span,
    parse_telemetry,
    rpc_span,
    setup_telemetry,
)

# A test card number that passes the Luhn check. No span or metric may contain it.
FAKE_PAN = "4242424242424242"
CALLER = "spiffe://example.org/payments"
AD = b"tokenvault/test\0cards\0fpe\x001"
MATERIAL = bytes(range(32))


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def telemetry(spans: InMemorySpanExporter, reader: InMemoryMetricReader) -> Iterator[Telemetry]:
    instance = setup_telemetry(
        TelemetrySettings(),
        known_templates=["cards", "emails"],
        span_exporter=spans,
        metric_reader=reader,
    )
    yield instance
    instance.shutdown()


def _one(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    matches = [span for span in spans.get_finished_spans() if span.name == name]
    assert len(matches) == 1, [span.name for span in spans.get_finished_spans()]
    return matches[0]


def _metrics(reader: InMemoryMetricReader) -> dict[str, Metric]:
    data = reader.get_metrics_data()
    found: dict[str, Metric] = {}
    if data is None:
        return found
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                found[metric.name] = metric
    return found


def _points(metric: Metric) -> list[Any]:
    return list(metric.data.data_points)


def _recorded_text(spans: InMemorySpanExporter, reader: InMemoryMetricReader) -> str:
    """Every string a span or metric carries, as one JSON document."""
    documents = [json.loads(span.to_json()) for span in spans.get_finished_spans()]
    data = reader.get_metrics_data()
    if data is not None:
        documents.append(json.loads(data.to_json()))
    return json.dumps(documents)


# -- server spans ----------------------------------------------------------------------------


async def test_rpc_span_attributes(telemetry: Telemetry, spans: InMemorySpanExporter) -> None:
    async with rpc_span(telemetry, "Tokenization", "Tokenize", peer="ipv4:10.1.2.3:50000") as rpc:
        rpc.set_caller(CALLER)
        rpc.set_request(["cards", "emails", "cards"], 3)
        rpc.set_outcome(grpc.StatusCode.OK, 1)

    span = _one(spans, "tokenvault.v1.Tokenization/Tokenize")
    attributes = dict(span.attributes or {})
    assert span.kind is SpanKind.SERVER
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.service"] == "tokenvault.v1.Tokenization"
    assert attributes["rpc.method"] == "Tokenize"
    assert attributes["rpc.grpc.status_code"] == 0
    assert attributes["network.peer.address"] == "10.1.2.3"
    assert attributes["network.peer.port"] == 50000
    assert attributes["tokenvault.caller"] == CALLER
    assert attributes["tokenvault.templates"] == ("cards", "emails")
    assert attributes["tokenvault.item_count"] == 3
    assert attributes["tokenvault.failed_item_count"] == 1
    assert span.status.status_code is StatusCode.UNSET


async def test_rpc_span_keeps_only_known_keys(
    telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    async with rpc_span(telemetry, "Tokenization", "Tokenize", peer="ipv4:10.1.2.3:1") as rpc:
        rpc.set_caller(CALLER)
        rpc.set_request(["cards"], 1)

    attributes = dict(_one(spans, "tokenvault.v1.Tokenization/Tokenize").attributes or {})
    assert set(attributes) == {
        "rpc.system",
        "rpc.service",
        "rpc.method",
        "rpc.grpc.status_code",
        "network.transport",
        "network.type",
        "network.peer.address",
        "network.peer.port",
        "client.address",
        "client.port",
        "tokenvault.caller",
        "tokenvault.templates",
        "tokenvault.item_count",
        "tokenvault.failed_item_count",
    }


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        (
            "ipv6:[::1]:8443",
            {"network.type": "ipv6", "network.peer.address": "::1", "network.peer.port": 8443},
        ),
        (
            "ipv6:%5B2001:db8::7%5D:443",
            {"network.peer.address": "2001:db8::7", "network.peer.port": 443},
        ),
        (
            "unix:/run/tokenvault.sock",
            {"network.transport": "unix", "network.peer.address": "/run/tokenvault.sock"},
        ),
        ("", {}),
    ],
)
async def test_rpc_span_peer_forms(
    telemetry: Telemetry, spans: InMemorySpanExporter, peer: str, expected: dict[str, Any]
) -> None:
    async with rpc_span(telemetry, "Tokenization", "ListTemplates", peer=peer):
        pass

    attributes = dict(_one(spans, "tokenvault.v1.Tokenization/ListTemplates").attributes or {})
    for key, value in expected.items():
        assert attributes[key] == value
    if not expected:
        assert "network.peer.address" not in attributes


async def test_unknown_template_recorded_as_other(
    telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    async with rpc_span(telemetry, "Tokenization", "Tokenize", peer="") as rpc:
        rpc.set_request(["cards", "johnsmith", FAKE_PAN], 3)

    attributes = dict(_one(spans, "tokenvault.v1.Tokenization/Tokenize").attributes or {})
    assert attributes["tokenvault.templates"] == ("_OTHER", "cards")


def test_template_label_without_known_templates() -> None:
    instance = setup_telemetry(TelemetrySettings())

    assert instance.template_label("cards") == "cards"
    assert instance.template_label(FAKE_PAN) == "_OTHER"
    assert instance.template_label("Cards With Spaces") == "_OTHER"


async def test_rpc_span_exception_records_type_only(
    telemetry: Telemetry, spans: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    with pytest.raises(ValueError, match=FAKE_PAN):
        async with rpc_span(telemetry, "Tokenization", "Tokenize", peer="ipv4:10.0.0.1:1") as rpc:
            rpc.set_request(["cards"], 1)
            with child_span(telemetry, "db.tokens.insert"):
                raise ValueError(f"card {FAKE_PAN} is not in the vault")

    server = _one(spans, "tokenvault.v1.Tokenization/Tokenize")
    assert server.status.status_code is StatusCode.ERROR
    assert server.status.description == "ValueError"
    assert dict(server.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.UNKNOWN.value[0]
    assert dict(server.attributes or {})["error.type"] == "ValueError"
    assert [event.name for event in server.events] == ["exception"]
    assert dict(server.events[0].attributes or {}) == {"exception.type": "ValueError"}

    child = _one(spans, "db.tokens.insert")
    assert child.status.status_code is StatusCode.ERROR
    assert child.status.description == "ValueError"
    assert [dict(event.attributes or {}) for event in child.events] == [
        {"exception.type": "ValueError"}
    ]

    assert FAKE_PAN not in _recorded_text(spans, reader)


async def test_rpc_span_abort_after_outcome(
    telemetry: Telemetry, spans: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    error = InvalidValue("items[0].value", f"{FAKE_PAN} fails the Luhn check")

    with pytest.raises(grpc.aio.AbortError):
        async with rpc_span(telemetry, "Tokenization", "Tokenize", peer="") as rpc:
            rpc.set_outcome(grpc.StatusCode.INVALID_ARGUMENT, error=error)
            raise grpc.aio.AbortError()

    span = _one(spans, "tokenvault.v1.Tokenization/Tokenize")
    attributes = dict(span.attributes or {})
    # A client error leaves a SERVER span's status unset.
    assert span.status.status_code is StatusCode.UNSET
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert attributes["error.type"] == "vault.errors.InvalidValue"
    assert FAKE_PAN not in _recorded_text(spans, reader)


async def test_rpc_span_abort_without_outcome(
    telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    with pytest.raises(grpc.aio.AbortError):
        async with rpc_span(telemetry, "Tokenization", "Tokenize", peer=""):
            raise grpc.aio.AbortError()

    span = _one(spans, "tokenvault.v1.Tokenization/Tokenize")
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.UNKNOWN.value[0]


async def test_rpc_span_server_error_code(
    telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    async with rpc_span(telemetry, "KeyAdmin", "RotateKek", peer="") as rpc:
        rpc.set_outcome(grpc.StatusCode.UNAVAILABLE)

    span = _one(spans, "tokenvault.v1.KeyAdmin/RotateKek")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "UNAVAILABLE"
    assert span.events == ()


async def test_rpc_span_cancelled(telemetry: Telemetry, spans: InMemorySpanExporter) -> None:
    with pytest.raises(asyncio.CancelledError):
        async with rpc_span(telemetry, "Tokenization", "Detokenize", peer=""):
            raise asyncio.CancelledError

    span = _one(spans, "tokenvault.v1.Tokenization/Detokenize")
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]


async def test_traceparent_metadata_sets_parent(
    telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    metadata: list[tuple[str, str | bytes]] = [
        ("traceparent", f"00-{trace_id}-b7ad6b7169203331-01"),
        ("x-trace-bin", b"\x00"),
    ]
    async with rpc_span(telemetry, "Tokenization", "Tokenize", peer="", metadata=metadata):
        assert current_trace_id() == trace_id

    span = _one(spans, "tokenvault.v1.Tokenization/Tokenize")
    assert span.parent is not None
    assert span.parent.span_id == 0xB7AD6B7169203331
    assert trace.format_trace_id(span.context.trace_id) == trace_id


# -- child spans -----------------------------------------------------------------------------


async def test_child_spans_nest_under_server_span(
    telemetry: Telemetry, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    provider = TracedKekProvider(LocalKekProvider.create(tmp_path / "kek.json"), telemetry)
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
    spans.clear()

    async with rpc_span(telemetry, "Tokenization", "Detokenize", peer=""):
        trace_id_inside = current_trace_id()
        async with db_span(telemetry, "db.tokens.select", "SELECT") as select_span:
            select_span.set_attribute("db.response.returned_rows", 2)
        with child_span(telemetry, "hsm.session", **{"kek.provider": "pkcs11"}):
            # asyncio.to_thread copies the context, as the key code's calls do.
            await asyncio.to_thread(provider.unwrap, wrapped, kek, associated_data=AD)

    server = _one(spans, "tokenvault.v1.Tokenization/Detokenize")
    select = _one(spans, "db.tokens.select")
    session = _one(spans, "hsm.session")
    unwrap = _one(spans, "kek.unwrap")
    assert trace_id_inside == trace.format_trace_id(server.context.trace_id)
    assert current_trace_id() == ""
    assert select.parent is not None and select.parent.span_id == server.context.span_id
    assert session.parent is not None and session.parent.span_id == server.context.span_id
    assert unwrap.parent is not None and unwrap.parent.span_id == session.context.span_id
    assert {select.kind, session.kind, unwrap.kind} == {SpanKind.CLIENT}
    assert dict(select.attributes or {}) == {
        "db.system": "postgresql",
        "db.operation": "SELECT",
        "db.response.returned_rows": 2,
    }
    assert dict(session.attributes or {}) == {"kek.provider": "pkcs11"}


# -- metrics ---------------------------------------------------------------------------------


async def test_metrics_names_units_and_attributes(
    telemetry: Telemetry, reader: InMemoryMetricReader
) -> None:
    async with rpc_span(telemetry, "Tokenization", "Tokenize", peer="") as rpc:
        rpc.set_request(["cards", "emails"], 3)
        rpc.set_outcome(grpc.StatusCode.OK, 1)
    telemetry.record_items(
        "Tokenize", [("cards", True), ("cards", False), ("emails", True), ("nobody", True)]
    )
    telemetry.record_key_cache(hit=True)
    telemetry.record_key_cache(hit=True)
    telemetry.record_key_cache(hit=False)
    telemetry.record_rate_limited("Detokenize")
    telemetry.record_audit("revealed", 3)
    telemetry.record_kek_error("local", "unwrap", UnwrapError())

    found = _metrics(reader)
    units = {name: metric.unit for name, metric in found.items()}
    assert units == {
        "tokenvault.rpc.duration": "ms",
        "tokenvault.batch.size": "{item}",
        "tokenvault.items": "{item}",
        "tokenvault.key_cache.requests": "{request}",
        "tokenvault.rate_limit.rejections": "{request}",
        "tokenvault.audit.events": "{event}",
        "tokenvault.kek.errors": "{error}",
    }

    (duration,) = _points(found["tokenvault.rpc.duration"])
    assert dict(duration.attributes) == {
        "rpc.service": "tokenvault.v1.Tokenization",
        "rpc.method": "Tokenize",
        "rpc.grpc.status_code": 0,
    }
    assert duration.count == 1

    (batch,) = _points(found["tokenvault.batch.size"])
    assert dict(batch.attributes) == {"tokenvault.operation": "Tokenize"}
    assert batch.sum == 3

    items = {
        (p.attributes["tokenvault.template"], p.attributes["tokenvault.outcome"]): p.value
        for p in _points(found["tokenvault.items"])
    }
    assert items == {
        ("cards", "ok"): 1,
        ("cards", "failed"): 1,
        ("emails", "ok"): 1,
        ("_OTHER", "ok"): 1,
    }
    assert {p.attributes["tokenvault.operation"] for p in _points(found["tokenvault.items"])} == {
        "Tokenize"
    }

    cache = {
        p.attributes["tokenvault.key_cache.result"]: p.value
        for p in _points(found["tokenvault.key_cache.requests"])
    }
    assert cache == {"hit": 2, "miss": 1}

    (rejections,) = _points(found["tokenvault.rate_limit.rejections"])
    assert dict(rejections.attributes) == {"tokenvault.operation": "Detokenize"}

    (audit,) = _points(found["tokenvault.audit.events"])
    assert dict(audit.attributes) == {"tokenvault.outcome": "revealed"}
    assert audit.value == 3

    (kek_error,) = _points(found["tokenvault.kek.errors"])
    assert dict(kek_error.attributes) == {
        "kek.provider": "local",
        "kek.operation": "unwrap",
        "error.type": "keys.errors.UnwrapError",
    }


async def test_rpc_without_request_records_no_batch_size(
    telemetry: Telemetry, reader: InMemoryMetricReader
) -> None:
    async with rpc_span(telemetry, "Tokenization", "ListTemplates", peer=""):
        pass

    found = _metrics(reader)
    assert "tokenvault.rpc.duration" in found
    assert "tokenvault.batch.size" not in found


# -- KEK provider ----------------------------------------------------------------------------


def test_traced_kek_provider_spans(
    telemetry: Telemetry,
    spans: InMemorySpanExporter,
    reader: InMemoryMetricReader,
    tmp_path: Path,
) -> None:
    local = LocalKekProvider.create(tmp_path / "kek.json")
    provider = TracedKekProvider(local, telemetry)

    first = provider.describe()
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
    assert provider.unwrap(wrapped, kek, associated_data=AD) == MATERIAL
    rotated = provider.rotate()

    assert provider.name == "local"
    assert rotated.version == "2"
    expected = {
        "kek.describe": first,
        "kek.wrap": kek,
        "kek.unwrap": kek,
        "kek.rotate": rotated,
    }
    for name, ref in expected.items():
        span = _one(spans, name)
        assert span.kind is SpanKind.CLIENT
        assert dict(span.attributes or {}) == {
            "kek.provider": "local",
            "kek.key_id": ref.key_id,
            "kek.version": ref.version,
        }
        assert span.status.status_code is StatusCode.UNSET

    recorded = _recorded_text(spans, reader)
    for secret in (MATERIAL.hex(), wrapped.hex(), repr(MATERIAL), repr(wrapped)):
        assert secret not in recorded


def test_traced_kek_provider_error(
    telemetry: Telemetry,
    spans: InMemorySpanExporter,
    reader: InMemoryMetricReader,
    tmp_path: Path,
) -> None:
    provider = TracedKekProvider(LocalKekProvider.create(tmp_path / "kek.json"), telemetry)
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
    tampered = wrapped[:-1] + bytes([wrapped[-1] ^ 1])

    with pytest.raises(UnwrapError):
        provider.unwrap(tampered, kek, associated_data=AD)

    span = _one(spans, "kek.unwrap")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "keys.errors.UnwrapError"
    assert dict(span.attributes or {})["kek.version"] == kek.version
    (errors,) = _points(_metrics(reader)["tokenvault.kek.errors"])
    assert dict(errors.attributes)["error.type"] == "keys.errors.UnwrapError"
    assert errors.value == 1


def test_traced_kek_provider_delegates(telemetry: Telemetry, tmp_path: Path) -> None:
    local = LocalKekProvider.create(tmp_path / "kek.json")

    with TracedKekProvider(local, telemetry) as provider:
        assert provider.wrapped is local
        assert provider._kek_file == tmp_path / "kek.json"  # not defined by the wrapper

    with pytest.raises(Exception, match="closed|unavailable"):
        local.describe()
    with pytest.raises(AttributeError):
        _ = provider.no_such_attribute


# -- settings --------------------------------------------------------------------------------


def test_parse_telemetry_defaults() -> None:
    settings = parse_telemetry({})

    assert settings == TelemetrySettings()
    assert settings.traces == "off"
    assert settings.metrics == "off"
    assert settings.otlp_endpoint == "http://127.0.0.1:4317"
    assert settings.service_name == "tokenvault"
    assert settings.metric_interval_seconds == 60


def test_parse_telemetry_values() -> None:
    settings = parse_telemetry(
        {
            "traces": "otlp",
            "metrics": "console",
            "otlp_endpoint": "https://collector.example:4317",
            "service_name": "tokenvault-eu",
            "metric_interval_seconds": 15,
        }
    )

    assert settings == TelemetrySettings(
        traces="otlp",
        metrics="console",
        otlp_endpoint="https://collector.example:4317",
        service_name="tokenvault-eu",
        metric_interval_seconds=15.0,
    )


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"traces": "jaeger"}, "telemetry.traces"),
        ({"metrics": True}, "telemetry.metrics"),
        ({"tracing": "otlp"}, "telemetry.tracing"),
        ({"otlp_endpoint": 4317}, "telemetry.otlp_endpoint"),
        ({"otlp_endpoint": "collector:4317"}, "telemetry.otlp_endpoint"),
        ({"otlp_endpoint": "grpc://collector:4317"}, "telemetry.otlp_endpoint"),
        ({"otlp_endpoint": "http://collector:4317/v1/traces"}, "telemetry.otlp_endpoint"),
        ({"otlp_endpoint": "http://collector:99999"}, "telemetry.otlp_endpoint"),
        ({"otlp_endpoint": "http://:4317"}, "telemetry.otlp_endpoint"),
        ({"service_name": ""}, "telemetry.service_name"),
        ({"service_name": "a\nb"}, "telemetry.service_name"),
        ({"metric_interval_seconds": 0}, "telemetry.metric_interval_seconds"),
        ({"metric_interval_seconds": 86400}, "telemetry.metric_interval_seconds"),
        ({"metric_interval_seconds": True}, "telemetry.metric_interval_seconds"),
        ({"metric_interval_seconds": "60"}, "telemetry.metric_interval_seconds"),
        ({"metric_interval_seconds": float("nan")}, "telemetry.metric_interval_seconds"),
    ],
)
def test_parse_telemetry_rejects(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}\b"):
        parse_telemetry(table)


def test_parse_telemetry_hides_endpoint_password() -> None:
    with pytest.raises(ConfigError, match="telemetry.otlp_endpoint") as caught:
        parse_telemetry({"otlp_endpoint": "https://user:hunter2@collector:4317"})

    assert "hunter2" not in str(caught.value)


def test_parse_telemetry_requires_table() -> None:
    with pytest.raises(ConfigError, match="telemetry must be a table"):
        parse_telemetry("otlp")  # type: ignore[arg-type]


# -- providers -------------------------------------------------------------------------------


def _names_never_read() -> Iterator[str]:
    raise AssertionError("template names were read although telemetry is off")
    yield "cards"  # makes this function a generator, so the error comes on iteration


async def test_off_uses_noop_providers() -> None:
    threads_before = threading.active_count()

    instance = setup_telemetry(TelemetrySettings())

    assert isinstance(instance.tracer_provider, trace.NoOpTracerProvider)
    assert isinstance(instance.meter_provider, metrics.NoOpMeterProvider)
    assert not instance.enabled
    assert threading.active_count() == threads_before
    # The same shared object every time: no span and no context change.
    assert child_span(instance, "db.tokens.insert") is child_span(instance, "kek.unwrap")
    async with rpc_span(instance, "Tokenization", "Tokenize", peer="ipv4:10.0.0.1:1") as rpc:
        rpc.set_request(_names_never_read(), 1)
        assert current_trace_id() == ""
        with child_span(instance, "db.tokens.insert") as span:
            assert not span.is_recording()
    instance.record_items("Tokenize", [("cards", True)])
    instance.record_key_cache(hit=True)
    instance.shutdown()


async def test_none_telemetry_is_accepted() -> None:
    async with rpc_span(None, "Tokenization", "Tokenize", peer="") as rpc:
        rpc.set_caller(CALLER)
        async with child_span(None, "db.tokens.insert") as span:
            assert not span.is_recording()


def test_console_exporters_start_and_stop() -> None:
    settings = TelemetrySettings(traces="console", metrics="console", service_name="tv-test")

    instance = setup_telemetry(settings)
    with child_span(instance, "kek.describe") as span:
        assert span.is_recording()
    instance.shutdown()
    instance.shutdown()  # a second call does nothing

    assert isinstance(instance.tracer_provider, TracerProvider)
    assert isinstance(instance.meter_provider, MeterProvider)
    assert instance.traces_enabled
    assert instance.metrics_enabled


def test_otlp_exporters_get_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.grpc import metric_exporter, trace_exporter

    calls: list[tuple[str, dict[str, Any]]] = []

    def fake(kind: str) -> Any:
        def build(**kwargs: Any) -> str:
            calls.append((kind, kwargs))
            return kind

        return build

    # Replaced before anything builds them, so no channel to a collector is ever opened.
    monkeypatch.setattr(trace_exporter, "OTLPSpanExporter", fake("spans"))
    monkeypatch.setattr(metric_exporter, "OTLPMetricExporter", fake("metrics"))
    plaintext = TelemetrySettings(traces="otlp", metrics="otlp")
    tls = TelemetrySettings(traces="otlp", metrics="otlp", otlp_endpoint="https://otel:4317")

    telemetry_module._span_exporter(plaintext)
    telemetry_module._metric_exporter(plaintext)
    telemetry_module._span_exporter(tls)

    assert calls == [
        ("spans", {"endpoint": "http://127.0.0.1:4317", "insecure": True}),
        ("metrics", {"endpoint": "http://127.0.0.1:4317", "insecure": True}),
        ("spans", {"endpoint": "https://otel:4317", "insecure": False}),
    ]

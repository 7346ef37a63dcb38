"""Traces and metrics with OpenTelemetry, with no tokenized data in them.

Settings (the ``[telemetry]`` table, where every key is optional)::

    [telemetry]
    traces = "otlp"                    # "off" (default), "console" or "otlp"
    metrics = "otlp"                   # "off" (default), "console" or "otlp"
    otlp_endpoint = "http://127.0.0.1:4317"   # OTLP/gRPC collector; "https://" uses TLS
    service_name = "tokenvault"        # the service.name resource attribute
    metric_interval_seconds = 60       # how often metrics are exported

What a span or metric may contain: method names, status codes, the caller identity, template
names, item counts, exception type names, KEK provider names, key ids and versions, and the
peer address. Never values, tokens, references, purposes, metadata or exception messages,
because an exception's text can quote the input that caused it.

Span attributes follow the experimental RPC semantic conventions up to semconv v1.37
(``rpc.system``, ``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``), which the
OpenTelemetry gRPC instrumentations still emit by default. Later versions rename ``rpc.system``
to ``rpc.system.name`` and fold the service into ``rpc.method``.

The providers belong to the ``Telemetry`` object and are never registered as the global
OpenTelemetry providers, so libraries that trace through the global API are not recorded.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.metadata
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import Token
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, get_args
from urllib.parse import unquote, urlsplit

import grpc
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from vault.errors import ConfigError

logger = logging.getLogger(__name__)

Exporter = Literal["off", "console", "otlp"]
EXPORTERS: tuple[str, ...] = get_args(Exporter)

DEFAULT_OTLP_ENDPOINT = "http://127.0.0.1:4317"
DEFAULT_SERVICE_NAME = "tokenvault"
DEFAULT_METRIC_INTERVAL_SECONDS = 60.0
MIN_METRIC_INTERVAL_SECONDS = 1.0
MAX_METRIC_INTERVAL_SECONDS = 3600.0
SHUTDOWN_TIMEOUT_MILLIS = 5000

# The instrumentation scope of every span and instrument.
SCOPE_NAME = "tokenvault"
PROTO_PACKAGE = "tokenvault.v1"

# Metric instrument names.
RPC_DURATION = "tokenvault.rpc.duration"
ITEMS = "tokenvault.items"
BATCH_SIZE = "tokenvault.batch.size"
KEY_CACHE_REQUESTS = "tokenvault.key_cache.requests"
RATE_LIMIT_REJECTIONS = "tokenvault.rate_limit.rejections"
AUDIT_EVENTS = "tokenvault.audit.events"
KEK_ERRORS = "tokenvault.kek.errors"

# Semantic-convention attribute keys.
RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"
NETWORK_PEER_ADDRESS = "network.peer.address"
NETWORK_PEER_PORT = "network.peer.port"
NETWORK_TRANSPORT = "network.transport"
NETWORK_TYPE = "network.type"
CLIENT_ADDRESS = "client.address"
CLIENT_PORT = "client.port"
ERROR_TYPE = "error.type"
EXCEPTION_TYPE = "exception.type"
DB_SYSTEM = "db.system"
DB_OPERATION = "db.operation"

# Attribute keys of this service.
CALLER = "tokenvault.caller"
TEMPLATES = "tokenvault.templates"
ITEM_COUNT = "tokenvault.item_count"
FAILED_ITEM_COUNT = "tokenvault.failed_item_count"
OPERATION = "tokenvault.operation"
TEMPLATE = "tokenvault.template"
OUTCOME = "tokenvault.outcome"
KEY_CACHE_RESULT = "tokenvault.key_cache.result"
KEK_PROVIDER = "kek.provider"
KEK_KEY_ID = "kek.key_id"
KEK_VERSION = "kek.version"
KEK_OPERATION = "kek.operation"

# The value recorded for a template name the service does not know. The semantic conventions
# use the same placeholder for unknown RPC methods.
OTHER = "_OTHER"

# Same rule as template names in vault.formats; used only before set_known_templates runs.
_TEMPLATE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")

# Codes that mean the server failed. Other codes report a problem with the request, so a SERVER
# span that ends with them keeps an unset status, as the RPC semantic conventions specify.
SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

_DURATION_BUCKETS_MS = (0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
# Up to the hard maximum of server.max_batch_items, 100000 items.
_BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 100000)


# -- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TelemetrySettings:
    traces: Exporter = "off"
    metrics: Exporter = "off"
    otlp_endpoint: str = DEFAULT_OTLP_ENDPOINT
    service_name: str = DEFAULT_SERVICE_NAME
    metric_interval_seconds: float = DEFAULT_METRIC_INTERVAL_SECONDS


def parse_telemetry(table: Mapping[str, Any]) -> TelemetrySettings:
    """Check the ``[telemetry]`` table and return its settings.

    Raises ConfigError naming ``telemetry.<key>`` for an unknown key or an invalid value.
    """
    if not isinstance(table, Mapping):
        raise ConfigError("telemetry must be a table, for example [telemetry]")
    allowed = {
        "traces",
        "metrics",
        "otlp_endpoint",
        "service_name",
        "metric_interval_seconds",
    }
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"telemetry.{unknown[0]} is not a known setting; allowed: {', '.join(sorted(allowed))}"
        )
    return TelemetrySettings(
        traces=_exporter(table, "traces"),
        metrics=_exporter(table, "metrics"),
        otlp_endpoint=_endpoint(table.get("otlp_endpoint", DEFAULT_OTLP_ENDPOINT)),
        service_name=_service_name(table.get("service_name", DEFAULT_SERVICE_NAME)),
        metric_interval_seconds=_interval(
            table.get("metric_interval_seconds", DEFAULT_METRIC_INTERVAL_SECONDS)
        ),
    )


def _exporter(table: Mapping[str, Any], key: str) -> Exporter:
    value = table.get(key, "off")
    if value == "off":
        return "off"
    if value == "console":
        return "console"
    if value == "otlp":
        return "otlp"
    raise ConfigError(f"telemetry.{key} must be one of {', '.join(EXPORTERS)}; got {value!r}")


def _endpoint(value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError("telemetry.otlp_endpoint must be a string such as http://host:4317")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ConfigError(f"telemetry.otlp_endpoint {value!r} is not a valid URL") from None
    if parts.username is not None or parts.password is not None:
        # The value is not echoed: it contains a credential.
        raise ConfigError(
            "telemetry.otlp_endpoint must not contain a user or password; pass collector "
            "credentials in OTEL_EXPORTER_OTLP_HEADERS"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"telemetry.otlp_endpoint {value!r} must be http://host:port (plaintext) or "
            "https://host:port (TLS)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(
            f"telemetry.otlp_endpoint {value!r} must have no path or query: OTLP over gRPC "
            "takes only a host and a port"
        )
    if port == 0:
        raise ConfigError(f"telemetry.otlp_endpoint {value!r} has port 0")
    return value


def _service_name(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 255 or not value.isprintable():
        raise ConfigError("telemetry.service_name must be 1 to 255 printable characters")
    return value


def _interval(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError("telemetry.metric_interval_seconds must be a number of seconds")
    if not MIN_METRIC_INTERVAL_SECONDS <= value <= MAX_METRIC_INTERVAL_SECONDS:
        raise ConfigError(
            f"telemetry.metric_interval_seconds must be between {MIN_METRIC_INTERVAL_SECONDS:g} "
            f"and {MAX_METRIC_INTERVAL_SECONDS:g}; got {value}"
        )
    return float(value)


# -- providers and instruments ---------------------------------------------------------------


class Telemetry:
    """The tracer and meter of one server, with the instruments and their record methods.

    Build it with ``setup_telemetry``. Every record method is safe to call from any thread and
    does nothing when metrics are off.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | trace.NoOpTracerProvider,
        meter_provider: MeterProvider | metrics.NoOpMeterProvider,
        *,
        known_templates: Iterable[str] | None = None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.traces_enabled = isinstance(tracer_provider, TracerProvider)
        self.metrics_enabled = isinstance(meter_provider, MeterProvider)
        self._known_templates = None if known_templates is None else frozenset(known_templates)
        self._closed = False

        version = _package_version()
        self.tracer = tracer_provider.get_tracer(SCOPE_NAME, version)
        meter = meter_provider.get_meter(SCOPE_NAME, version)
        self._rpc_duration = meter.create_histogram(
            RPC_DURATION,
            unit="ms",
            description="Duration of a gRPC call, from the handler's start to its status",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS_MS,
        )
        self._items = meter.create_counter(
            ITEMS, unit="{item}", description="Tokenize and Detokenize items, by outcome"
        )
        self._batch_size = meter.create_histogram(
            BATCH_SIZE,
            unit="{item}",
            description="Items in one Tokenize or Detokenize request",
            explicit_bucket_boundaries_advisory=_BATCH_SIZE_BUCKETS,
        )
        self._key_cache = meter.create_counter(
            KEY_CACHE_REQUESTS, unit="{request}", description="Data key cache lookups, hit or miss"
        )
        self._rate_limited = meter.create_counter(
            RATE_LIMIT_REJECTIONS, unit="{request}", description="Requests rejected by a rate limit"
        )
        self._audit_events = meter.create_counter(
            AUDIT_EVENTS, unit="{event}", description="Audit events written, by outcome"
        )
        self._kek_errors = meter.create_counter(
            KEK_ERRORS, unit="{error}", description="Failed KEK provider calls, by error type"
        )

    @property
    def enabled(self) -> bool:
        return self.traces_enabled or self.metrics_enabled

    def set_known_templates(self, names: Iterable[str]) -> None:
        """Record only these template names; any other name becomes ``_OTHER``.

        Template names in a request are client input. Limiting them to configured names keeps
        a mistyped value, or data sent in the template field, out of spans and metrics.
        """
        self._known_templates = frozenset(names)

    def template_label(self, name: str) -> str:
        """Return ``name`` if it may be recorded, else ``_OTHER``."""
        if self._known_templates is not None:
            return name if name in self._known_templates else OTHER
        return name if _TEMPLATE_NAME.fullmatch(name) else OTHER

    def record_items(self, operation: str, results: Iterable[tuple[str, bool]]) -> None:
        """Count items by template and outcome; ``results`` contains (template, succeeded) pairs.

        ``operation`` is the RPC method name, for example ``Tokenize``.
        """
        if not self.metrics_enabled:
            return
        counts = collections.Counter(
            (self.template_label(template), "ok" if succeeded else "failed")
            for template, succeeded in results
        )
        for (template, outcome), count in counts.items():
            self._items.add(count, {OPERATION: operation, TEMPLATE: template, OUTCOME: outcome})

    def record_key_cache(self, hit: bool) -> None:
        if self.metrics_enabled:
            self._key_cache.add(1, {KEY_CACHE_RESULT: "hit" if hit else "miss"})

    def record_rate_limited(self, operation: str) -> None:
        if self.metrics_enabled:
            self._rate_limited.add(1, {OPERATION: operation})

    def record_audit(self, outcome: str, count: int = 1) -> None:
        """Count ``count`` audit events with ``outcome`` (revealed, denied or failed)."""
        if self.metrics_enabled:
            self._audit_events.add(count, {OUTCOME: outcome})

    def record_kek_error(self, provider: str, operation: str, error: BaseException) -> None:
        if self.metrics_enabled:
            self._kek_errors.add(
                1, {KEK_PROVIDER: provider, KEK_OPERATION: operation, ERROR_TYPE: error_type(error)}
            )

    def _record_rpc(
        self,
        service: str,
        method: str,
        code: grpc.StatusCode,
        duration_ms: float,
        item_count: int | None,
    ) -> None:
        self._rpc_duration.record(
            duration_ms,
            {RPC_SERVICE: service, RPC_METHOD: method, RPC_GRPC_STATUS_CODE: code.value[0]},
        )
        if item_count is not None:
            self._batch_size.record(item_count, {OPERATION: method})

    def shutdown(self) -> None:
        """Export what is buffered and stop the export threads. Later calls do nothing.

        Blocks while the exporters send: up to SHUTDOWN_TIMEOUT_MILLIS for metrics, and for
        traces until the OTLP exporter's own timeout passes (OTEL_EXPORTER_OTLP_TIMEOUT, 10 s by
        default). Async callers run it with ``asyncio.to_thread``.
        """
        if self._closed:
            return
        self._closed = True
        if isinstance(self.tracer_provider, TracerProvider):
            self.tracer_provider.shutdown()
        if isinstance(self.meter_provider, MeterProvider):
            self.meter_provider.shutdown(timeout_millis=SHUTDOWN_TIMEOUT_MILLIS)


def setup_telemetry(
    settings: TelemetrySettings,
    *,
    known_templates: Iterable[str] | None = None,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
) -> Telemetry:
    """Build the providers that ``settings`` selects, with no-op providers for "off".

    ``span_exporter`` and ``metric_reader`` are for tests: they replace the configured exporter
    and turn that signal on, whatever ``settings`` selects. Spans then go to the exporter as each
    one ends (SimpleSpanProcessor), so a test can read them at once.
    """
    resource = Resource.create(
        {SERVICE_NAME: settings.service_name, SERVICE_VERSION: _package_version()}
    )

    tracer_provider: TracerProvider | trace.NoOpTracerProvider
    if span_exporter is not None:
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    elif settings.traces != "off":
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(settings)))
    else:
        tracer_provider = trace.NoOpTracerProvider()

    meter_provider: MeterProvider | metrics.NoOpMeterProvider
    if metric_reader is not None:
        meter_provider = MeterProvider(resource=resource, metric_readers=[metric_reader])
    elif settings.metrics != "off":
        reader = PeriodicExportingMetricReader(
            _metric_exporter(settings),
            export_interval_millis=settings.metric_interval_seconds * 1000,
        )
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    else:
        meter_provider = metrics.NoOpMeterProvider()

    telemetry = Telemetry(tracer_provider, meter_provider, known_templates=known_templates)
    uses_otlp = "otlp" in (settings.traces, settings.metrics)
    logger.info(
        "telemetry configured",
        extra={
            "traces": "test exporter" if span_exporter is not None else settings.traces,
            "metrics": "test reader" if metric_reader is not None else settings.metrics,
            "otlp_endpoint": settings.otlp_endpoint if uses_otlp else None,
        },
    )
    return telemetry


def _span_exporter(settings: TelemetrySettings) -> SpanExporter:
    if settings.traces == "console":
        return ConsoleSpanExporter(service_name=settings.service_name)
    # Imported here: the OTLP exporter loads gRPC channel code that "off" and "console" skip.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(
        endpoint=settings.otlp_endpoint, insecure=settings.otlp_endpoint.startswith("http://")
    )


def _metric_exporter(settings: TelemetrySettings) -> MetricExporter:
    if settings.metrics == "console":
        return ConsoleMetricExporter()
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(
        endpoint=settings.otlp_endpoint, insecure=settings.otlp_endpoint.startswith("http://")
    )


def _package_version() -> str:
    try:
        return importlib.metadata.version("tokenvault")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# -- server spans ----------------------------------------------------------------------------


class RpcScope:
    """Caller, request size and status of one call, which ``rpc_span`` records at its end."""

    def __init__(self, *, recording: bool = True) -> None:
        self.recording = recording
        self.caller: str | None = None
        self.template_names: frozenset[str] = frozenset()
        self.item_count: int | None = None
        self.status_code: grpc.StatusCode | None = None
        self.failed_items = 0
        self.error: BaseException | None = None

    def set_caller(self, identity: str) -> None:
        """Record the caller identity from the client certificate."""
        self.caller = identity

    def set_request(self, template_names: Iterable[str], item_count: int) -> None:
        """Record which templates a request names and how many items it has."""
        self.item_count = item_count
        if self.recording:
            # Skipped when telemetry is off, so the names of a large batch are never read.
            self.template_names = frozenset(template_names)

    def set_outcome(
        self,
        status_code: grpc.StatusCode,
        failed_items: int = 0,
        *,
        error: BaseException | None = None,
    ) -> None:
        """Record the status the call returns, its failed item count, and the error if any.

        Only the error's type name is recorded. Call it before ``context.abort``: the
        AbortError that follows then counts as this outcome and not as a crash.
        """
        self.status_code = status_code
        self.failed_items = failed_items
        self.error = error


@asynccontextmanager
async def rpc_span(
    telemetry: Telemetry | None,
    service: str,
    method: str,
    *,
    peer: str = "",
    metadata: Sequence[tuple[str, str | bytes]] | None = None,
) -> AsyncIterator[RpcScope]:
    """Trace and time one gRPC call as a SERVER span named ``tokenvault.v1.<service>/<method>``.

    ``peer`` is ``context.peer()``, for example ``ipv4:10.0.0.7:53122``. With ``metadata``
    (``context.invocation_metadata()``), a W3C ``traceparent`` from the client becomes the
    span's parent. An exception that leaves the block sets status ERROR with its type name,
    unless it is a cancellation or an AbortError after ``set_outcome``.
    """
    if telemetry is None or not telemetry.enabled:
        yield RpcScope(recording=False)
        return
    scope = RpcScope()

    full_service = service if "." in service else f"{PROTO_PACKAGE}.{service}"
    span: Span | None = None
    token: Token[otel_context.Context] | None = None
    if telemetry.traces_enabled:
        parent = _parent_context(metadata)
        attributes: dict[str, AttributeValue] = {
            RPC_SYSTEM: "grpc",
            RPC_SERVICE: full_service,
            RPC_METHOD: method,
            **_peer_attributes(peer),
        }
        # The span is ended by hand below. Both flags only matter if code enters it with
        # "with span", where the SDK would otherwise record str(exc).
        span = telemetry.tracer.start_span(
            f"{full_service}/{method}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))

    started = time.perf_counter()
    escaped: BaseException | None = None
    try:
        yield scope
    except BaseException as exc:
        escaped = exc
        raise
    finally:
        duration_ms = (time.perf_counter() - started) * 1000
        code = _final_code(scope, escaped)
        if span is not None:
            _finish_server_span(telemetry, span, scope, code, escaped)
            span.end()
        if token is not None:
            otel_context.detach(token)
        if telemetry.metrics_enabled:
            telemetry._record_rpc(full_service, method, code, duration_ms, scope.item_count)


def _final_code(scope: RpcScope, escaped: BaseException | None) -> grpc.StatusCode:
    if escaped is None:
        return scope.status_code or grpc.StatusCode.OK
    if isinstance(escaped, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    # AbortError does not carry its code, so handlers report it with set_outcome first. gRPC
    # returns UNKNOWN for any other exception that escapes a handler.
    return scope.status_code or grpc.StatusCode.UNKNOWN


def _is_crash(scope: RpcScope, escaped: BaseException | None) -> bool:
    """Tell whether ``escaped`` is a fault, as opposed to a cancel or a reported abort."""
    if escaped is None or isinstance(escaped, asyncio.CancelledError):
        return False
    return not (isinstance(escaped, grpc.aio.AbortError) and scope.status_code is not None)


def _finish_server_span(
    telemetry: Telemetry,
    span: Span,
    scope: RpcScope,
    code: grpc.StatusCode,
    escaped: BaseException | None,
) -> None:
    span.set_attribute(RPC_GRPC_STATUS_CODE, code.value[0])
    if scope.caller is not None:
        span.set_attribute(CALLER, scope.caller)
    if scope.item_count is not None:
        labels = {telemetry.template_label(name) for name in scope.template_names}
        span.set_attribute(TEMPLATES, sorted(labels))
        span.set_attribute(ITEM_COUNT, scope.item_count)
        span.set_attribute(FAILED_ITEM_COUNT, scope.failed_items)

    crashed = _is_crash(scope, escaped)
    error = escaped if crashed else scope.error
    if error is not None:
        _record_error_type(span, error)
    if crashed or code in SERVER_ERROR_CODES:
        description = error_type(error) if error is not None else code.name
        span.set_status(Status(StatusCode.ERROR, description))


def _parent_context(
    metadata: Sequence[tuple[str, str | bytes]] | None,
) -> otel_context.Context | None:
    if not metadata:
        return None
    # Binary (-bin) headers arrive as bytes and never carry trace context.
    carrier = {key.lower(): value for key, value in metadata if isinstance(value, str)}
    if "traceparent" not in carrier:
        return None
    return TraceContextTextMapPropagator().extract(carrier)


def _peer_attributes(peer: str) -> dict[str, AttributeValue]:
    """Split a gRPC peer string (ipv4:host:port, ipv6:[host]:port, unix:path) into attributes."""
    kind, _, rest = peer.partition(":")
    rest = unquote(rest)  # some gRPC releases percent-encode the brackets of IPv6 addresses
    if kind in ("ipv4", "ipv6"):
        host, _, port = rest.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        attributes: dict[str, AttributeValue] = {
            NETWORK_TRANSPORT: "tcp",
            NETWORK_TYPE: kind,
            NETWORK_PEER_ADDRESS: host,
            CLIENT_ADDRESS: host,
        }
        if port.isdigit():
            attributes[NETWORK_PEER_PORT] = int(port)
            attributes[CLIENT_PORT] = int(port)
        return attributes
    if kind in ("unix", "unix-abstract"):
        return {NETWORK_TRANSPORT: "unix", NETWORK_PEER_ADDRESS: rest}
    return {NETWORK_PEER_ADDRESS: peer} if peer else {}


# -- child spans -----------------------------------------------------------------------------


class ChildSpan:
    """A span around one database, HSM or Vault call; usable with ``with`` and ``async with``.

    Entering returns the span, so the caller can add attributes such as a row count. An
    exception marks the span ERROR with the exception's type name only.
    """

    def __init__(
        self,
        telemetry: Telemetry,
        name: str,
        kind: SpanKind,
        attributes: Mapping[str, AttributeValue],
    ) -> None:
        self._telemetry = telemetry
        self._name = name
        self._kind = kind
        self._attributes = attributes
        self._span: Span | None = None
        self._token: Token[otel_context.Context] | None = None

    def __enter__(self) -> Span:
        self._span = self._telemetry.tracer.start_span(
            self._name,
            kind=self._kind,
            attributes=self._attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        span = self._span
        if span is None:
            return
        if exc is not None:
            _record_error_type(span, exc)
            span.set_status(Status(StatusCode.ERROR, error_type(exc)))
        span.end()
        if self._token is not None:
            otel_context.detach(self._token)

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)


class _NoSpan:
    """Stand-in for ChildSpan when traces are off. It creates no span and changes no context."""

    def __enter__(self) -> Span:
        return trace.INVALID_SPAN

    def __exit__(self, *exc_info: object) -> None:
        return None

    async def __aenter__(self) -> Span:
        return trace.INVALID_SPAN

    async def __aexit__(self, *exc_info: object) -> None:
        return None


_NO_SPAN = _NoSpan()


def child_span(
    telemetry: Telemetry | None, name: str, /, **attributes: AttributeValue
) -> ChildSpan | _NoSpan:
    """Start a CLIENT span under the current one for a call to a database, an HSM or Vault.

    Examples of names: ``db.tokens.insert``, ``kek.unwrap``. Attribute keys contain dots, so
    pass them unpacked: ``**{"db.operation": "INSERT"}``. Never pass a value, token,
    reference or key as an attribute.
    """
    if telemetry is None or not telemetry.traces_enabled:
        return _NO_SPAN
    return ChildSpan(telemetry, name, SpanKind.CLIENT, attributes)


def db_span(
    telemetry: Telemetry | None, name: str, operation: str, /, **attributes: AttributeValue
) -> ChildSpan | _NoSpan:
    """Start a span for a PostgreSQL call, for example ``db.tokens.insert`` with ``INSERT``."""
    return child_span(
        telemetry, name, **{DB_SYSTEM: "postgresql", DB_OPERATION: operation}, **attributes
    )


def current_trace_id() -> str:
    """Return the current span's trace id as 32 hex digits, or "" outside a recorded trace."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return ""
    return trace.format_trace_id(span_context.trace_id)


def error_type(error: BaseException) -> str:
    """Return the qualified class name of ``error``, the only part of it a span records."""
    cls = type(error)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _record_error_type(span: Span, error: BaseException) -> None:
    # Neither span.record_exception nor exception.message: both would copy str(error).
    name = error_type(error)
    span.set_attribute(ERROR_TYPE, name)
    span.add_event("exception", {EXCEPTION_TYPE: name})

"""The TOML policy file: which caller may do what, from where and how much.

Format::

    [defaults]                        # optional
    max_concurrent_calls = 16
    [defaults.rate_limits]
    tokenize = { rate = 2000.0, burst = 20000 }
    detokenize = { rate = 200.0, burst = 2000 }

    [[callers]]
    identity = "spiffe://example.org/payments/gateway"
    scopes = ["tokenize:pan", "tokenize:iban"]
    fingerprints = ["<SHA-256 of the client certificate, 64 hex digits>"]    # optional
    source_cidrs = ["10.20.0.0/16", "127.0.0.1/32"]                          # optional
    max_concurrent_calls = 4                                                 # optional
    rate_limits = { tokenize = { rate = 50.0, burst = 500 } }                # optional
    [callers.anomaly]                 # optional; an inline table works as well
    max_items_per_window = 5000
    window_seconds = 3600             # default 3600
    allowed_hours = "07:00-19:00"
    timezone = "Europe/Paris"         # default "UTC"

    [templates.pan]
    purpose_required = true           # Detokenize of pan needs a non-empty purpose

Scopes: ``tokenize:<template>``, ``detokenize:<template>`` (full or masked reveal),
``detokenize.masked:<template>`` (masked reveal only), where ``<template>`` is a template name
or ``*`` for all; and ``admin:keys``, ``admin:callers``, ``audit:read``. An identity that the
file does not list has no scope, so it can do nothing.

A rate limit is a token bucket per operation (``tokenize``, ``detokenize``, ``admin``): ``rate``
items per second, at most ``burst`` items at once. A caller takes ``max_concurrent_calls`` and
each operation's rate limit from ``[defaults]`` unless its own entry sets them.
Fingerprints may be written in upper or lower case, with or without colons, as
``openssl x509 -fingerprint -sha256`` prints them. ``source_cidrs`` must not have host bits set.
``allowed_hours`` is ``HH:MM-HH:MM`` in 24-hour local time of ``timezone`` (an IANA name), start
included and end excluded. An end earlier than the start spans midnight.
Every key is validated; an unknown key or a wrong value raises ConfigError naming the entry.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import tomllib
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from datetime import time as dt_time
from pathlib import Path
from typing import Any

from vault.errors import ConfigError

logger = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

TEMPLATE_SCOPES = ("tokenize", "detokenize", "detokenize.masked")
GLOBAL_SCOPES = ("admin:keys", "admin:callers", "audit:read")
RATE_LIMITED_OPERATIONS = ("tokenize", "detokenize", "admin")
_TEMPLATE_PART = re.compile(r"^(\*|[a-z][a-z0-9_-]{0,63})$")
_TEMPLATE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_HOURS = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])$")

_TOP_LEVEL_KEYS = {"defaults", "callers", "templates"}
_DEFAULTS_KEYS = {"max_concurrent_calls", "rate_limits"}
_CALLER_KEYS = {
    "identity",
    "scopes",
    "fingerprints",
    "source_cidrs",
    "max_concurrent_calls",
    "rate_limits",
    "anomaly",
}
_RATE_LIMIT_KEYS = {"rate", "burst"}
_ANOMALY_KEYS = {"max_items_per_window", "window_seconds", "allowed_hours", "timezone"}
_TEMPLATE_KEYS = {"purpose_required"}


@dataclass(frozen=True)
class RateLimit:
    """Token bucket: ``rate`` items per second refill, at most ``burst`` items at once."""

    rate: float
    burst: int


@dataclass(frozen=True)
class AnomalyRule:
    """When a caller's detokenize use is suspicious enough to suspend it.

    ``max_items_per_window``: more items detokenized than this within ``window_seconds``.
    ``allowed_hours``: (start, end) local times in ``timezone``; a detokenize outside them.
    Either part may be None (not checked).
    """

    max_items_per_window: int | None = None
    window_seconds: int = 3600
    allowed_hours: tuple[dt_time, dt_time] | None = None
    timezone: str = "UTC"

    def within_allowed_hours(self, moment: datetime) -> bool:
        """Return whether ``moment`` (timezone-aware) falls in ``allowed_hours``.

        The start is included and the end excluded; an end before the start spans midnight.
        Without ``allowed_hours`` every moment is allowed.
        """
        if self.allowed_hours is None:
            return True
        if moment.tzinfo is None:
            raise ValueError("moment must be timezone-aware")
        local = moment.astimezone(zoneinfo.ZoneInfo(self.timezone)).time().replace(tzinfo=None)
        start, end = self.allowed_hours
        if start < end:
            return start <= local < end
        return local >= start or local < end


@dataclass(frozen=True)
class CallerPolicy:
    """The policy's rules for one identity.

    ``fingerprints``: if not empty, the client certificate's SHA-256 fingerprint (lower-case
    hex) must be one of them. ``source_networks``: if not empty, the peer address must be in one.
    ``rate_limits``: per operation ("tokenize", "detokenize", "admin").
    """

    identity: str
    scopes: frozenset[str]
    fingerprints: frozenset[str] = frozenset()
    source_networks: tuple[IPNetwork, ...] = ()
    rate_limits: Mapping[str, RateLimit] = field(default_factory=dict)
    max_concurrent_calls: int | None = None
    anomaly: AnomalyRule | None = None


@dataclass(frozen=True)
class CallerDefaults:
    """Limits from ``[defaults]``; already merged into every CallerPolicy of the file."""

    max_concurrent_calls: int | None = None
    rate_limits: Mapping[str, RateLimit] = field(default_factory=dict)


@dataclass(frozen=True)
class TemplatePolicy:
    purpose_required: bool = False


@dataclass(frozen=True)
class Policy:
    scopes_by_identity: Mapping[str, frozenset[str]]
    callers: Mapping[str, CallerPolicy] = field(default_factory=dict)
    templates: Mapping[str, TemplatePolicy] = field(default_factory=dict)
    defaults: CallerDefaults = field(default_factory=CallerDefaults)

    def caller(self, identity: str) -> CallerPolicy | None:
        return self.callers.get(identity)

    def template(self, name: str) -> TemplatePolicy:
        return self.templates.get(name, TemplatePolicy())

    def scopes(self, identity: str) -> frozenset[str]:
        return self.scopes_by_identity.get(identity, frozenset())

    def allows(self, identity: str, operation: str, template: str | None = None) -> bool:
        """Return whether ``identity`` has the scope ``operation`` (for ``template``, or ``*``)."""
        granted = self.scopes(identity)
        if template is None:
            return operation in granted
        return f"{operation}:{template}" in granted or f"{operation}:*" in granted

    def may_detokenize(self, identity: str, template: str, *, masked: bool) -> bool:
        if self.allows(identity, "detokenize", template):
            return True
        return masked and self.allows(identity, "detokenize.masked", template)

    def granted_for_template(self, identity: str, template: str) -> list[str]:
        return [op for op in TEMPLATE_SCOPES if self.allows(identity, op, template)]


def validate_scope(scope: str) -> None:
    if scope in GLOBAL_SCOPES:
        return
    operation, _, template = scope.partition(":")
    if operation not in TEMPLATE_SCOPES or not _TEMPLATE_PART.match(template):
        allowed = ", ".join([f"{op}:<template|*>" for op in TEMPLATE_SCOPES] + list(GLOBAL_SCOPES))
        raise ConfigError(f"scope {scope!r} is not valid; allowed forms: {allowed}")


def parse_policy(document: Mapping[str, Any], *, known_templates: Iterable[str] = ()) -> Policy:
    """Build a policy from a parsed TOML document; raise ConfigError naming the entry and key."""
    entries = document.get("callers", [])
    if not isinstance(entries, list):
        raise ConfigError("policy: 'callers' must be an array of tables ([[callers]])")

    unknown_keys = set(document) - _TOP_LEVEL_KEYS
    if unknown_keys:
        raise ConfigError(
            f"policy: unknown top-level keys {sorted(unknown_keys)}; "
            f"allowed: {', '.join(sorted(_TOP_LEVEL_KEYS))}"
        )

    known = set(known_templates)
    defaults = _parse_defaults(document.get("defaults", {}))
    callers: dict[str, CallerPolicy] = {}
    for number, entry in enumerate(entries, start=1):
        caller = _parse_caller(entry, f"policy: callers entry {number}", defaults, known)
        if caller.identity in callers:
            raise ConfigError(
                f"policy: callers entry {number}: identity {caller.identity!r} is listed twice"
            )
        callers[caller.identity] = caller

    templates = _parse_templates(document.get("templates", {}), known)
    scopes_by_identity = {identity: caller.scopes for identity, caller in callers.items()}
    return Policy(scopes_by_identity, callers=callers, templates=templates, defaults=defaults)


def parse_policy_bytes(
    data: bytes, *, source: Path | str, known_templates: Iterable[str] = ()
) -> Policy:
    """Parse the bytes of a policy file; ConfigError messages start with ``source``.

    The policy store hashes and parses the same bytes, so a write between two reads cannot
    make the hash describe another version of the file than the policy in force.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"policy file {source} is not valid UTF-8: {exc}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"policy file {source} is not valid TOML: {exc}") from None
    try:
        return parse_policy(document, known_templates=known_templates)
    except ConfigError as exc:
        raise ConfigError(f"policy file {source}: {exc}") from None


def load_policy(path: Path, *, known_templates: Iterable[str] = ()) -> Policy:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"policy file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"policy file {path} could not be read: {exc.strerror}") from None
    return parse_policy_bytes(data, source=path, known_templates=known_templates)


# -- sections


def _parse_defaults(section: object) -> CallerDefaults:
    where = "policy: defaults"
    table = _table(section, where)
    _reject_unknown_keys(table, _DEFAULTS_KEYS, where)
    return CallerDefaults(
        max_concurrent_calls=_optional_positive_int(table, "max_concurrent_calls", where),
        rate_limits=_parse_rate_limits(table.get("rate_limits", {}), f"{where}: rate_limits"),
    )


def _parse_caller(
    entry: object, where: str, defaults: CallerDefaults, known_templates: set[str]
) -> CallerPolicy:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table")
    extra = set(entry) - _CALLER_KEYS
    if extra:
        raise ConfigError(
            f"{where}: unknown keys {sorted(extra)}; allowed: {', '.join(sorted(_CALLER_KEYS))}"
        )
    identity = entry.get("identity")
    if not isinstance(identity, str) or not identity:
        raise ConfigError(f"{where}: 'identity' must be a non-empty string")
    where = f"{where} ({identity})"

    scopes = entry.get("scopes", [])
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise ConfigError(f"{where}: 'scopes' must be an array of strings")
    for scope in scopes:
        try:
            validate_scope(scope)
        except ConfigError as exc:
            raise ConfigError(f"{where}: scopes: {exc}") from None
        _warn_unknown_template(scope, identity, known_templates)

    own_limits = _parse_rate_limits(entry.get("rate_limits", {}), f"{where}: rate_limits")
    own_concurrency = _optional_positive_int(entry, "max_concurrent_calls", where)
    anomaly = entry.get("anomaly")
    return CallerPolicy(
        identity=identity,
        scopes=frozenset(scopes),
        fingerprints=_parse_fingerprints(entry.get("fingerprints"), f"{where}: fingerprints"),
        source_networks=_parse_source_cidrs(entry.get("source_cidrs"), f"{where}: source_cidrs"),
        # Each operation the entry does not limit keeps the default limit.
        rate_limits={**defaults.rate_limits, **own_limits},
        max_concurrent_calls=(
            own_concurrency if own_concurrency is not None else defaults.max_concurrent_calls
        ),
        anomaly=None if anomaly is None else _parse_anomaly(anomaly, f"{where}: anomaly"),
    )


def _parse_templates(section: object, known_templates: set[str]) -> dict[str, TemplatePolicy]:
    templates: dict[str, TemplatePolicy] = {}
    for name, entry in _table(section, "policy: templates").items():
        where = f"policy: templates.{name}"
        if not _TEMPLATE_NAME.match(name):
            raise ConfigError(f"{where}: {name!r} is not a valid template name")
        # A misspelt name here would silently drop a requirement, unlike an unknown scope,
        # which only grants nothing, so this is an error and not a warning.
        if known_templates and name not in known_templates:
            raise ConfigError(
                f"{where}: no template is named {name!r}; "
                f"known templates: {', '.join(sorted(known_templates))}"
            )
        table = _table(entry, where)
        _reject_unknown_keys(table, _TEMPLATE_KEYS, where)
        purpose_required = table.get("purpose_required", False)
        if not isinstance(purpose_required, bool):
            raise ConfigError(f"{where}: purpose_required must be true or false")
        templates[name] = TemplatePolicy(purpose_required=purpose_required)
    return templates


# -- values


def _parse_rate_limits(section: object, where: str) -> dict[str, RateLimit]:
    table = _table(section, where)
    unknown = set(table) - set(RATE_LIMITED_OPERATIONS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown operations {sorted(unknown)}; "
            f"allowed: {', '.join(RATE_LIMITED_OPERATIONS)}"
        )
    return {
        operation: _parse_rate_limit(value, f"{where}.{operation}")
        for operation, value in table.items()
    }


def _parse_rate_limit(value: object, where: str) -> RateLimit:
    table = _table(value, where)
    _reject_unknown_keys(table, _RATE_LIMIT_KEYS, where)
    for key in ("rate", "burst"):
        if key not in table:
            raise ConfigError(f"{where}: '{key}' is missing")

    rate = table["rate"]
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise ConfigError(f"{where}.rate: must be a number of items per second")
    if not math.isfinite(rate) or rate <= 0:
        raise ConfigError(f"{where}.rate: must be a finite number greater than 0, got {rate}")

    burst = table["burst"]
    if isinstance(burst, bool) or not isinstance(burst, int):
        raise ConfigError(f"{where}.burst: must be an integer number of items")
    if burst < 1:
        raise ConfigError(f"{where}.burst: must be at least 1, got {burst}")
    return RateLimit(rate=float(rate), burst=burst)


def _parse_anomaly(value: object, where: str) -> AnomalyRule:
    table = _table(value, where)
    _reject_unknown_keys(table, _ANOMALY_KEYS, where)
    max_items = _optional_positive_int(table, "max_items_per_window", where)
    window_seconds = _optional_positive_int(table, "window_seconds", where)

    timezone = table.get("timezone", "UTC")
    if not isinstance(timezone, str) or not timezone:
        raise ConfigError(f"{where}.timezone: must be an IANA time zone name such as 'UTC'")
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{where}.timezone: unknown time zone {timezone!r}; "
            "use an IANA name such as 'Europe/Paris' or 'UTC'"
        ) from None

    hours = table.get("allowed_hours")
    allowed_hours = None if hours is None else _parse_allowed_hours(hours, f"{where}.allowed_hours")
    if max_items is None and allowed_hours is None:
        raise ConfigError(
            f"{where}: set max_items_per_window, allowed_hours or both; "
            "otherwise the rule checks nothing"
        )
    return AnomalyRule(
        max_items_per_window=max_items,
        window_seconds=window_seconds if window_seconds is not None else 3600,
        allowed_hours=allowed_hours,
        timezone=timezone,
    )


def _parse_allowed_hours(value: object, where: str) -> tuple[dt_time, dt_time]:
    match = _HOURS.match(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(
            f"{where}: {value!r} is not valid; write 'HH:MM-HH:MM' in 24-hour time, "
            "e.g. '07:00-19:00'"
        )
    start = dt_time(int(match[1]), int(match[2]))
    end = dt_time(int(match[3]), int(match[4]))
    if start == end:
        raise ConfigError(f"{where}: start and end are both {match[1]}:{match[2]}")
    return start, end


def _parse_fingerprints(value: object, where: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where}: must be an array of strings")
    if not value:
        raise ConfigError(f"{where}: list at least one fingerprint, or remove the key")
    fingerprints = set()
    for index, item in enumerate(value):
        normalized = item.replace(":", "").lower()
        if not _SHA256_HEX.match(normalized):
            raise ConfigError(
                f"{where}[{index}]: {item!r} is not a SHA-256 fingerprint (64 hex digits, "
                "colons allowed)"
            )
        fingerprints.add(normalized)
    return frozenset(fingerprints)


def _parse_source_cidrs(value: object, where: str) -> tuple[IPNetwork, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where}: must be an array of strings")
    if not value:
        raise ConfigError(f"{where}: list at least one network, or remove the key")
    networks = []
    for index, item in enumerate(value):
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise ConfigError(f"{where}[{index}]: {item!r} is not a valid network: {exc}") from None
    return tuple(networks)


def _optional_positive_int(table: Mapping[str, object], key: str, where: str) -> int | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {key} must be an integer of at least 1, got {value!r}")
    return value


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a table")
    return value


def _reject_unknown_keys(table: Mapping[str, object], allowed: set[str], where: str) -> None:
    extra = set(table) - allowed
    if extra:
        raise ConfigError(
            f"{where}: unknown keys {sorted(extra)}; allowed: {', '.join(sorted(allowed))}"
        )


def _warn_unknown_template(scope: str, identity: str, known: set[str]) -> None:
    _, _, template = scope.partition(":")
    if known and template not in ("*", "") and scope not in GLOBAL_SCOPES and template not in known:
        logger.warning("policy grants %s to %s, but no template has that name", scope, identity)

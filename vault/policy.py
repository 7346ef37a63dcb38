"""Which caller may do what: scopes per identity, loaded from a TOML policy file.

Format::

    [[callers]]
    identity = "spiffe://example.org/payments/gateway"
    scopes = ["tokenize:pan", "tokenize:iban"]

Scopes: ``tokenize:<template>``, ``detokenize:<template>`` (full or masked reveal),
``detokenize.masked:<template>`` (masked reveal only), where ``<template>`` is a template name
or ``*`` for all; and ``admin:keys``, ``admin:callers``, ``audit:read``. An identity that the
file does not list has no scope, so it can do nothing.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Iterable, Mapping
import ipaddress
from dataclasses import dataclass, field
from datetime import time as dt_time
from pathlib import Path
from typing import Any

from vault.errors import ConfigError

logger = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

TEMPLATE_SCOPES = ("tokenize", "detokenize", "detokenize.masked")
GLOBAL_SCOPES = ("admin:keys", "admin:callers", "audit:read")
_TEMPLATE_PART = re.compile(r"^(\*|[a-z][a-z0-9_-]{0,63})$")


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


@dataclass(frozen=True)
class CallerPolicy:
    """Everything the policy says about one identity.

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
class TemplatePolicy:
    purpose_required: bool = False


@dataclass(frozen=True)
class Policy:
    scopes_by_identity: Mapping[str, frozenset[str]]
    callers: Mapping[str, CallerPolicy] = field(default_factory=dict)
    templates: Mapping[str, TemplatePolicy] = field(default_factory=dict)

    def caller(self, identity: str) -> CallerPolicy | None:
        return self.callers.get(identity)

    def template(self, name: str) -> TemplatePolicy:
        return self.templates.get(name, TemplatePolicy())

    def scopes(self, identity: str) -> frozenset[str]:
        return self.scopes_by_identity.get(identity, frozenset())

    def allows(self, identity: str, operation: str, template: str | None = None) -> bool:
        """Return whether ``identity`` holds ``operation`` (for ``template``, or ``*``)."""
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
    """Build a policy from a parsed TOML document; raise ConfigError naming the entry."""
    entries = document.get("callers", [])
    if not isinstance(entries, list):
        raise ConfigError("policy: 'callers' must be an array of tables ([[callers]])")

    unknown_keys = set(document) - {"callers"}
    if unknown_keys:
        raise ConfigError(f"policy: unknown top-level keys {sorted(unknown_keys)}")

    known = set(known_templates)
    scopes_by_identity: dict[str, frozenset[str]] = {}
    for number, entry in enumerate(entries, start=1):
        where = f"policy: callers entry {number}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table")
        extra = set(entry) - {"identity", "scopes"}
        if extra:
            raise ConfigError(f"{where}: unknown keys {sorted(extra)}")
        identity = entry.get("identity")
        if not isinstance(identity, str) or not identity:
            raise ConfigError(f"{where}: 'identity' must be a non-empty string")
        if identity in scopes_by_identity:
            raise ConfigError(f"{where}: identity {identity!r} is listed twice")
        scopes = entry.get("scopes", [])
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise ConfigError(f"{where}: 'scopes' must be an array of strings")
        for scope in scopes:
            validate_scope(scope)
            _warn_unknown_template(scope, identity, known)
        scopes_by_identity[identity] = frozenset(scopes)

    callers = {
        identity: CallerPolicy(identity=identity, scopes=scopes)
        for identity, scopes in scopes_by_identity.items()
    }
    return Policy(scopes_by_identity, callers=callers)


def load_policy(path: Path, *, known_templates: Iterable[str] = ()) -> Policy:
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"policy file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"policy file {path} is not valid TOML: {exc}") from None
    try:
        return parse_policy(document, known_templates=known_templates)
    except ConfigError as exc:
        raise ConfigError(f"policy file {path}: {exc}") from None


def _warn_unknown_template(scope: str, identity: str, known: set[str]) -> None:
    _, _, template = scope.partition(":")
    if known and template not in ("*", "") and scope not in GLOBAL_SCOPES and template not in known:
        logger.warning("policy grants %s to %s, but no template has that name", scope, identity)

"""Errors the service reports to callers.

Every message is safe to send over the wire and to record in logs and spans: it names the field
and the rule, and shows at most a masked value. The servicer maps each class to one gRPC status.
"""

from __future__ import annotations


class TokenvaultError(Exception):
    """Base class; ``str(error)`` is the caller-facing message."""


class InvalidValue(TokenvaultError):
    """An input breaks a rule: maps to INVALID_ARGUMENT."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class NotFound(TokenvaultError):
    """An unknown template or token: maps to NOT_FOUND."""


class PermissionDenied(TokenvaultError):
    """The caller lacks a scope: maps to PERMISSION_DENIED."""

    def __init__(self, scope: str) -> None:
        super().__init__(f"missing scope {scope}")
        self.scope = scope


class Unauthenticated(TokenvaultError):
    """No usable client identity: maps to UNAUTHENTICATED."""


class ResourceExhausted(TokenvaultError):
    """A limit was reached (batch size, token space): maps to RESOURCE_EXHAUSTED."""


class Unavailable(TokenvaultError):
    """A dependency (database, key provider) cannot be reached: maps to UNAVAILABLE."""


class FailedPrecondition(TokenvaultError):
    """Stored state does not allow a well-formed request: maps to FAILED_PRECONDITION."""


class ConfigError(TokenvaultError):
    """A configuration file or setting is invalid; raised at start-up or on reload."""


class AccessRefused(TokenvaultError):
    """The caller is revoked, suspended or outside its allowed sources: maps to PERMISSION_DENIED.

    ``reason`` is a fixed code ("identity_revoked", "serial_revoked", "suspended",
    "source_not_allowed") for logs and metrics; the message is the caller-facing text.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

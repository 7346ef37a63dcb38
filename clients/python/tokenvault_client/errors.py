"""Exceptions for calls that fail as a whole.

A failed item inside a batch is not an exception: it comes back as an ``ItemError`` on its
outcome. These classes cover a call that the server rejected or that never completed.
"""

from __future__ import annotations

from typing import Any

import grpc

RETRY_AFTER_KEY = "retry-after"
# Trailing metadata key under which the Tokenvault server returns the id it logged the call with.
REQUEST_ID_KEY = "x-request-id"


class TokenvaultClientError(Exception):
    """A Tokenvault call failed as a whole.

    ``code`` is the gRPC status code and ``details`` the server's message. ``request_id`` is
    the id under which the server logged the call, or None when the call never reached it.
    """

    def __init__(
        self, code: grpc.StatusCode, details: str, *, request_id: str | None = None
    ) -> None:
        message = f"{code.name}: {details}" if details else code.name
        if request_id:
            message += f" (request id {request_id})"
        super().__init__(message)
        self.code = code
        self.details = details
        self.request_id = request_id


class InvalidArgumentError(TokenvaultClientError):
    """The request is unusable, for example empty or with a missing reveal mode."""


class NotFoundError(TokenvaultClientError):
    """Nothing in the request exists on the server, for example no item names a defined template."""


class PermissionDeniedError(TokenvaultClientError):
    """The caller may not make the call, for example it lacks the scope for every item in it."""


class UnauthenticatedError(TokenvaultClientError):
    """The server did not accept the client certificate as an identity."""


class ResourceExhaustedError(TokenvaultClientError):
    """A server limit was reached, such as the batch size or a rate limit.

    ``retry_after`` is the wait in seconds that the server suggested in its ``retry-after``
    trailing metadata, or None when it sent none.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        *,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(code, details, request_id=request_id)
        self.retry_after = retry_after


class UnavailableError(TokenvaultClientError):
    """The server could not be reached, the TLS handshake failed, or a dependency is down."""


class DeadlineExceededError(TokenvaultClientError):
    """The call did not complete before its deadline."""


class FailedPreconditionError(TokenvaultClientError):
    """The system is not in a state that allows the call.

    Key administration raises it, for example, when a second custodian is needed to approve a
    destruction or a key version still protects data.
    """


_CLASS_BY_CODE: dict[grpc.StatusCode, type[TokenvaultClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
}


def error_from_rpc(error: grpc.RpcError) -> TokenvaultClientError:
    """Convert a failed gRPC call into the matching ``TokenvaultClientError`` subclass.

    Codes without a dedicated subclass (CANCELLED, INTERNAL, UNIMPLEMENTED, ...) give the
    base class. An error object that is not a ``grpc.Call`` maps to UNKNOWN.
    """
    code = _call_attribute(error, "code")
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details = _call_attribute(error, "details") or ""
    metadata = _call_attribute(error, "trailing_metadata")
    request_id = _metadata_value(metadata, REQUEST_ID_KEY)

    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry_after = parse_retry_after(_metadata_value(metadata, RETRY_AFTER_KEY))
        return ResourceExhaustedError(code, details, request_id=request_id, retry_after=retry_after)
    error_class = _CLASS_BY_CODE.get(code, TokenvaultClientError)
    return error_class(code, details, request_id=request_id)


def parse_retry_after(value: str | None) -> float | None:
    """Parse a ``retry-after`` value in seconds, or return None if absent, negative or invalid."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    # NaN fails the comparison, so it is rejected along with negative numbers and infinity.
    if not 0 <= seconds < float("inf"):
        return None
    return seconds


def _metadata_value(metadata: Any, key: str) -> str | None:
    """Return the first value for ``key`` in gRPC metadata (key, value) pairs, or None."""
    for entry_key, value in metadata or ():
        if entry_key.lower() != key:
            continue
        if isinstance(value, bytes):
            return value.decode("ascii", errors="replace")
        return str(value)
    return None


def _call_attribute(error: Any, name: str) -> Any:
    """Call ``error.<name>()`` if the error has such a method, else return None."""
    method = getattr(error, name, None)
    if method is None or not callable(method):
        return None
    return method()

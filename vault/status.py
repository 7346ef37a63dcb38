"""The one place that maps service errors to gRPC status codes."""

from __future__ import annotations

import grpc

from keys.errors import KekUnavailable, KeyDestroyed, KeyProviderError
from vault import errors
from vault.modes.vaulted import StoredValueCorrupt

_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (errors.InvalidValue, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (StoredValueCorrupt, grpc.StatusCode.DATA_LOSS),
    (KekUnavailable, grpc.StatusCode.UNAVAILABLE),
    (KeyDestroyed, grpc.StatusCode.FAILED_PRECONDITION),
    (KeyProviderError, grpc.StatusCode.INTERNAL),
]


def status_code_for(error: BaseException) -> grpc.StatusCode:
    for error_type, code in _CODES:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


def safe_message(error: BaseException) -> str:
    """Return the text that may leave the service for ``error``.

    Service errors carry messages written to be safe; key provider errors name the provider
    only; anything else is an internal fault whose text could contain data, so it is replaced.
    """
    if isinstance(error, errors.TokenvaultError):
        return str(error)
    if isinstance(error, KekUnavailable):
        return "key provider is unavailable"
    if isinstance(error, KeyDestroyed):
        return "the key version for this token was destroyed"
    return "internal error"

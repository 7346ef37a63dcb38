"""The one place that maps service and key errors to gRPC status codes and safe messages."""

from __future__ import annotations

import grpc

from keys import errors as key_errors
from vault import errors
from vault.modes.vaulted import StoredValueCorrupt

_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (errors.InvalidValue, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.AccessRefused, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (StoredValueCorrupt, grpc.StatusCode.DATA_LOSS),
    (key_errors.KekUnavailable, grpc.StatusCode.UNAVAILABLE),
    (key_errors.KeyDestroyed, grpc.StatusCode.FAILED_PRECONDITION),
    (key_errors.KeyRetired, grpc.StatusCode.FAILED_PRECONDITION),
    (key_errors.KeyStateError, grpc.StatusCode.FAILED_PRECONDITION),
    (key_errors.DualControlError, grpc.StatusCode.FAILED_PRECONDITION),
    (key_errors.KeyInUse, grpc.StatusCode.FAILED_PRECONDITION),
    (key_errors.DataKeyNotFound, grpc.StatusCode.NOT_FOUND),
    (key_errors.DestroyRequestNotFound, grpc.StatusCode.NOT_FOUND),
    (key_errors.KeyProviderError, grpc.StatusCode.INTERNAL),
]

# Key errors whose messages name only templates, purposes, versions and identities, never key
# material or provider replies, so they may be shown to the (administrator) caller.
_SAFE_KEY_ERRORS = (
    key_errors.KeyStateError,
    key_errors.DualControlError,
    key_errors.KeyInUse,
    key_errors.DataKeyNotFound,
    key_errors.DestroyRequestNotFound,
)


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """Return the status code and safe message for ``error``; never raises.

    gRPC sends the text of an exception that escapes a handler to the client, so a fault here
    falls back to a fixed INTERNAL status.
    """
    try:
        return status_code_for(error), safe_message(error)
    except Exception:  # noqa: BLE001 - the fallback must not fail
        return grpc.StatusCode.INTERNAL, "internal error"


def status_code_for(error: BaseException) -> grpc.StatusCode:
    for error_type, code in _CODES:
        if isinstance(error, error_type):
            return code
    return _job_code(error)


def safe_message(error: BaseException) -> str:
    """Return the text that may leave the service for ``error``.

    Service errors carry messages written to be safe. Key provider errors name the provider at
    most, because a provider's reason can quote its server's reply. Anything else is an internal
    fault whose text could contain data, so it is replaced.
    """
    if isinstance(error, (errors.TokenvaultError, *_SAFE_KEY_ERRORS)):
        return str(error)
    if isinstance(error, key_errors.KekUnavailable):
        return f"KEK provider {error.provider} is unavailable; try again later"
    if isinstance(error, key_errors.KeyDestroyed):
        return "the key version for this token was destroyed"
    if isinstance(error, key_errors.KeyRetired):
        return "the key version for this token is retired"
    if _job_code(error) is not grpc.StatusCode.INTERNAL:
        return str(error)
    return "internal error"


def _job_code(error: BaseException) -> grpc.StatusCode:
    # Imported here: the re-encryption module imports the vaulted mode, which imports this
    # package's errors.
    from keys.reencrypt import JobExists, JobNotFound, JobStateError

    if isinstance(error, JobNotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, JobExists | JobStateError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL

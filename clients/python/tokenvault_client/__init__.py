"""Python client for the Tokenvault tokenization service (gRPC over mutual TLS).

Example::

    from tokenvault_client import TlsConfig, TokenizeItem, TokenvaultClient

    tls = TlsConfig.from_files("ca.pem", "gateway.pem", "gateway-key.pem")
    with TokenvaultClient("127.0.0.1:7443", tls) as client:
        outcomes = client.tokenize([TokenizeItem("pan", "4111111111111111", reference="order-1")])

Key custodians use ``KeyAdminClient`` in the same way for the KeyAdmin service.
"""

from tokenvault_client.admin import (
    DestroyRequest,
    KekRotation,
    KekVersion,
    KeyAdminClient,
    KeyEvent,
    KeyListing,
    KeyVersion,
    ReencryptionJob,
)
from tokenvault_client.client import FALLBACK_MAX_BATCH_ITEMS, TokenvaultClient
from tokenvault_client.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    TokenvaultClientError,
    UnauthenticatedError,
    UnavailableError,
    error_from_rpc,
)
from tokenvault_client.models import (
    DetokenizeItem,
    DetokenizeOutcome,
    ItemError,
    Reveal,
    TemplateInfo,
    TemplateList,
    TokenizeItem,
    TokenizeOutcome,
)
from tokenvault_client.tls import TlsConfig

__all__ = [
    "FALLBACK_MAX_BATCH_ITEMS",
    "DeadlineExceededError",
    "DestroyRequest",
    "DetokenizeItem",
    "DetokenizeOutcome",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "ItemError",
    "KekRotation",
    "KekVersion",
    "KeyAdminClient",
    "KeyEvent",
    "KeyListing",
    "KeyVersion",
    "NotFoundError",
    "PermissionDeniedError",
    "ReencryptionJob",
    "ResourceExhaustedError",
    "Reveal",
    "TemplateInfo",
    "TemplateList",
    "TlsConfig",
    "TokenizeItem",
    "TokenizeOutcome",
    "TokenvaultClient",
    "TokenvaultClientError",
    "UnauthenticatedError",
    "UnavailableError",
    "error_from_rpc",
]

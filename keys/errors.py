"""Errors of the key hierarchy: KEK providers and data keys.

No message contains key material, a passphrase or a wrapped key. Messages name providers, key
ids, versions, templates and file paths, so callers may log them.
"""

from __future__ import annotations


class KeyProviderError(Exception):
    """Base class of the errors of KEK providers, the data key manager and the key lifecycle."""


class KekUnavailable(KeyProviderError):
    """The KEK provider cannot be reached or was closed. A later retry may succeed."""

    def __init__(self, provider: str, reason: str) -> None:
        # Both values go to args so that the exception survives pickling.
        super().__init__(provider, reason)
        self.provider = provider
        self.reason = reason

    def __str__(self) -> str:
        return f"KEK provider {self.provider} is unavailable: {self.reason}"


class UnwrapError(KeyProviderError):
    """A wrapped key failed authentication: wrong KEK, wrong associated data or a modified blob.

    Raised with no message, like ``cryptography.exceptions.InvalidTag``, because the cause cannot
    be distinguished and any detail would help an attacker probe the blob.
    """


class KekNotFound(KeyProviderError):
    """The provider has no KEK with the requested provider name, key id or version."""


class DataKeyNotFound(KeyProviderError):
    """A data key version does not exist, or a template has no active version of a purpose."""


class DestroyRequestNotFound(KeyProviderError):
    """No destroy request has the given id."""


class KeyDestroyed(KeyProviderError):
    """A data key version was destroyed, so what it protected can no longer be decrypted."""


class KeyRetired(KeyProviderError):
    """A data key version is retired: still stored wrapped, but refused until it is reinstated."""


class KeyStateError(KeyProviderError):
    """A requested state transition of a data key version is not allowed.

    The message names the current and the requested state and the rule that forbids the change.
    """


class DualControlError(KeyProviderError):
    """A destroy request breaks dual control.

    Raised when the proposer tries to approve their own proposal, when the request is missing or
    no longer pending, or when the version already has a pending request. The message names the
    case.
    """


class KeyInUse(KeyProviderError):
    """A data key version still protects stored tokens, so destroying it needs force.

    The message gives the number of rows, or explains why the tokens cannot be counted.
    """


class KekConfigError(KeyProviderError):
    """A KEK setting is invalid: a malformed file, unsafe permissions or a missing passphrase.

    The message names the problem and the fix.
    """

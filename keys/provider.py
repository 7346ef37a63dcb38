"""The interface every key-encryption key (KEK) provider implements.

A provider wraps and unwraps data keys under a KEK that it keeps: a local file or passphrase
(``keys.local``), and later an HSM through PKCS#11 or HashiCorp Vault Transit. The data key
manager stores the returned ``KekRef`` next to each wrapped key, so a provider can still
unwrap it after the active KEK version changes.

All methods block, because the remote providers do network or device I/O. Async callers run
them with ``asyncio.to_thread``, so an implementation must be safe to call from several threads
at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Self


@dataclass(frozen=True)
class KekRef:
    """Name of one KEK version. It contains no secret, so it is stored and logged as is.

    ``provider`` is the provider's ``name``. ``key_id`` names the key within the provider, for
    example a Vault Transit key name or an HSM key label. ``version`` is a string so that each
    provider can keep its own scheme, for example a Vault Transit integer version.
    """

    provider: str
    key_id: str
    version: str

    def __str__(self) -> str:
        return f"{self.provider}:{self.key_id}@{self.version}"


class KekProvider(ABC):
    """A source of KEKs that wraps and unwraps data keys.

    Errors, all from ``keys.errors``:

    - ``KekUnavailable`` when the provider cannot be reached or was closed. An implementation
      translates its transport errors (connection refused, timeout, PKCS#11 device error) into
      it, because callers retry on it and treat other errors as permanent.
    - ``KekNotFound`` when ``KekRef`` names another provider, an unknown key id or an unknown
      version.
    - ``UnwrapError``, with no message, when a wrapped key fails authentication.
    - ``KekConfigError`` when the provider's configuration is invalid.
    """

    name: str
    """Short provider name stored in ``tv_data_keys.kek_provider``, for example ``local``."""

    @abstractmethod
    def describe(self) -> KekRef:
        """Return the KEK version that new calls to ``wrap`` use."""

    @abstractmethod
    def wrap(self, key: bytes, *, associated_data: bytes) -> tuple[bytes, KekRef]:
        """Encrypt ``key`` under the active KEK version, bound to ``associated_data``.

        Returns the wrapped key and the KEK version that wrapped it. ``unwrap`` needs both and
        the same associated data.
        """

    @abstractmethod
    def unwrap(self, wrapped_key: bytes, kek: KekRef, *, associated_data: bytes) -> bytes:
        """Decrypt a key that ``wrap`` returned, using the KEK version that ``kek`` names."""

    @abstractmethod
    def rotate(self) -> KekRef:
        """Create a new KEK version, make it active for ``wrap`` and return it.

        Older versions keep unwrapping. Data keys wrapped by them stay as they are until
        something rewraps them.
        """

    @abstractmethod
    def close(self) -> None:
        """Release connections and drop cached key material. Later calls raise KekUnavailable."""

    def can_unwrap(self, provider_name: str) -> bool:
        """Return whether keys wrapped by the provider named ``provider_name`` reach ``unwrap``."""
        return provider_name == self.name

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

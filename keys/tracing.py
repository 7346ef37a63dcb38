"""A KEK provider wrapper that traces every call and counts failures by error type.

Spans carry the provider name, key id and version of the KEK involved, which ``KekRef``
documents as free of secrets. Key bytes, wrapped keys and associated data never reach a span.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.trace import Span

from keys.provider import KekProvider, KekRef
from vault.telemetry import (
    KEK_KEY_ID,
    KEK_PROVIDER,
    KEK_VERSION,
    Telemetry,
    child_span,
)


class TracedKekProvider(KekProvider):
    """Wrap ``provider`` so that wrap, unwrap, rotate and describe each get a ``kek.*`` span.

    The calls run in worker threads (``asyncio.to_thread``), which copy the caller's context,
    so the spans nest under the RPC that caused them. Other attributes and methods go to the
    wrapped provider unchanged.
    """

    def __init__(self, provider: KekProvider, telemetry: Telemetry) -> None:
        self._provider = provider
        self._telemetry = telemetry
        self.name = provider.name

    @property
    def wrapped(self) -> KekProvider:
        """The provider that does the work."""
        return self._provider

    def describe(self) -> KekRef:
        with self._traced("describe") as span:
            kek = self._provider.describe()
            _set_kek(span, kek)
            return kek

    def wrap(self, key: bytes, *, associated_data: bytes) -> tuple[bytes, KekRef]:
        with self._traced("wrap") as span:
            wrapped_key, kek = self._provider.wrap(key, associated_data=associated_data)
            _set_kek(span, kek)
            return wrapped_key, kek

    def unwrap(self, wrapped_key: bytes, kek: KekRef, *, associated_data: bytes) -> bytes:
        with self._traced("unwrap", kek):
            return self._provider.unwrap(wrapped_key, kek, associated_data=associated_data)

    def rotate(self) -> KekRef:
        with self._traced("rotate") as span:
            kek = self._provider.rotate()
            _set_kek(span, kek)
            return kek

    def can_unwrap(self, provider_name: str) -> bool:
        return self._provider.can_unwrap(provider_name)

    def close(self) -> None:
        self._provider.close()

    def __getattr__(self, name: str) -> Any:
        # Looked up through __dict__: during unpickling or a failed __init__, _provider is
        # missing and self._provider would call __getattr__ again without end.
        provider = self.__dict__.get("_provider")
        if provider is None:
            raise AttributeError(name)
        return getattr(provider, name)

    def __repr__(self) -> str:
        return f"TracedKekProvider({self._provider!r})"

    @contextmanager
    def _traced(self, operation: str, kek: KekRef | None = None) -> Iterator[Span]:
        if kek is None:
            # Calls that return the KEK add it to the span when they succeed.
            attributes = {KEK_PROVIDER: self._provider.name}
        else:
            attributes = {
                KEK_PROVIDER: kek.provider,
                KEK_KEY_ID: kek.key_id,
                KEK_VERSION: kek.version,
            }
        try:
            with child_span(self._telemetry, f"kek.{operation}", **attributes) as span:
                yield span
        except Exception as error:
            self._telemetry.record_kek_error(self._provider.name, operation, error)
            raise


def _set_kek(span: Span, kek: KekRef) -> None:
    span.set_attribute(KEK_PROVIDER, kek.provider)
    span.set_attribute(KEK_KEY_ID, kek.key_id)
    span.set_attribute(KEK_VERSION, kek.version)

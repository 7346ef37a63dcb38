"""A KEK provider that moves data keys from one provider to another.

New wraps (and ``rotate``) use the current provider. Unwrapping also accepts keys wrapped by the
previous provider, so the service keeps running on the data keys it already has while a key
custodian runs ``tokenvault keys rotate-kek``, which rewraps every data key under the current
provider. Once that is done, the previous provider can be removed from the settings.
"""

from __future__ import annotations

from keys.errors import KekNotFound
from keys.provider import KekProvider, KekRef


class MigratingKekProvider(KekProvider):
    def __init__(self, current: KekProvider, previous: KekProvider) -> None:
        self._current = current
        self._previous = previous
        self.name = current.name

    def describe(self) -> KekRef:
        return self._current.describe()

    def wrap(self, key: bytes, *, associated_data: bytes) -> tuple[bytes, KekRef]:
        return self._current.wrap(key, associated_data=associated_data)

    def unwrap(self, wrapped_key: bytes, kek: KekRef, *, associated_data: bytes) -> bytes:
        candidates = [p for p in (self._current, self._previous) if p.can_unwrap(kek.provider)]
        if not candidates:
            raise KekNotFound(f"neither KEK provider can unwrap keys of provider {kek.provider}")
        # Two providers of the same kind (say, two local KEK files) share a name, so a KEK
        # version unknown to the current one is tried on the previous one.
        for provider in candidates[:-1]:
            try:
                return provider.unwrap(wrapped_key, kek, associated_data=associated_data)
            except KekNotFound:
                continue
        return candidates[-1].unwrap(wrapped_key, kek, associated_data=associated_data)

    def rotate(self) -> KekRef:
        return self._current.rotate()

    def can_unwrap(self, provider_name: str) -> bool:
        return self._current.can_unwrap(provider_name) or self._previous.can_unwrap(provider_name)

    def close(self) -> None:
        try:
            self._current.close()
        finally:
            self._previous.close()

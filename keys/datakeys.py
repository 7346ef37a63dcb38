"""Per-template data keys, stored in ``tv_data_keys`` only in wrapped form.

Each template has one key series per purpose: an FF1 key (``fpe``), an AES-256-GCM key for
vaulted values (``aead``) and an HMAC-SHA256 key for the value index (``index``). Versions
count up from 1. A version's state is one of:

- ``active``: used for new tokens; a unique index allows one per template and purpose.
- ``decrypt_only``: still opens what it protected, no longer used for new tokens.
- ``retired``: kept wrapped, but ``get`` raises KeyRetired until it is reinstated.
- ``destroyed``: the wrapped key was deleted, so ``get`` raises KeyDestroyed.

``keys.lifecycle`` changes these states. This module only reads them.

Each key is wrapped by the KEK with associated data that names its template, purpose and
version, so a wrapped key copied to another row fails to unwrap.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from keys.errors import (
    DataKeyNotFound,
    KekNotFound,
    KeyDestroyed,
    KeyProviderError,
    KeyRetired,
    UnwrapError,
)
from keys.provider import KekProvider, KekRef

logger = logging.getLogger(__name__)

KEY_SIZE = 32
_ASSOCIATED_DATA_PREFIX = b"tokenvault/data-key/v1\0"


class Purpose(enum.Enum):
    FPE = "fpe"
    AEAD = "aead"
    INDEX = "index"


@dataclass(frozen=True, repr=False)
class DataKey:
    """One unwrapped data key version. Its ``repr`` leaves out the material.

    ``state`` is the state when the key was loaded. The manager caches keys, so it can be stale
    until ``DataKeyManager.clear_cache`` runs.
    """

    template: str
    purpose: Purpose
    version: int
    material: bytes
    state: str

    def __repr__(self) -> str:
        return (
            f"DataKey(template={self.template!r}, purpose={self.purpose.value}, "
            f"version={self.version}, state={self.state!r})"
        )


def associated_data(template: str, purpose: Purpose, version: int) -> bytes:
    """Return the associated data that binds a wrapped key to its row.

    NUL separates the fields. PostgreSQL text cannot contain NUL, so the encoding is unambiguous.
    """
    return b"\0".join(
        [
            _ASSOCIATED_DATA_PREFIX + template.encode("utf-8"),
            purpose.value.encode("ascii"),
            str(version).encode("ascii"),
        ]
    )


def _label(template: str, purpose: Purpose, version: int | None = None) -> str:
    """Name a key series or version in messages, for example ``cards/fpe v2``."""
    if version is None:
        return f"{template}/{purpose.value}"
    return f"{template}/{purpose.value} v{version}"


class DataKeyManager:
    """Creates, unwraps and caches the data keys of every template.

    Unwrapped keys and the version numbers of active and usable keys stay cached in memory until
    ``clear_cache``. ``KeyLifecycle`` clears the cache of the process that changes a key, and
    ``KeyChangeListener`` clears it in every other process that runs one. Errors:

    - ``DataKeyNotFound`` for a version that does not exist, or a template with no active
      version of a purpose. It is separate from KekNotFound, which means the KEK is missing.
    - ``KeyRetired`` for a retired version, ``KeyDestroyed`` for a destroyed one.
    - ``KekNotFound``, ``UnwrapError`` and ``KekUnavailable`` from the provider, unchanged.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        provider: KekProvider,
        *,
        on_lookup: Callable[[bool], None] | None = None,
    ) -> None:
        self._pool = pool
        self._provider = provider
        # Called with True for a cache hit and False for a miss, for the key-cache metric.
        self._on_lookup = on_lookup or (lambda hit: None)
        self._keys: dict[tuple[str, Purpose, int], DataKey] = {}
        self._active_versions: dict[tuple[str, Purpose], int] = {}
        self._usable_versions: dict[tuple[str, Purpose], tuple[int, ...]] = {}
        # One lock per cache entry, so concurrent first requests for a key unwrap it once.
        self._locks: dict[tuple[str, Purpose, int | None], asyncio.Lock] = {}
        # clear_cache increments these (all templates, one template), so a load that started
        # before a clear does not store its possibly stale result.
        self._generation = 0
        self._template_generations: dict[str, int] = {}

    async def ensure(
        self,
        templates: Iterable[str],
        *,
        actor: str = "system",
        purposes: Mapping[str, Sequence[Purpose]] | None = None,
    ) -> None:
        """Create version 1 of each purpose that has no version yet, then load the active keys.

        Replicas may run it at the same time: the insert does nothing on conflict, and every
        caller then reads back the version that won. Each version it creates gets a ``created``
        row in tv_key_events with ``actor``. Loading the active keys checks at start-up that the
        KEK unwraps them. Raises DataKeyNotFound for a purpose that has versions but none active.
        ``purposes`` limits each template to the purposes it uses (all three by default).
        """
        names = sorted(set(templates))
        if not names:
            return

        rows = await self._pool.fetch(
            "SELECT DISTINCT template, purpose FROM tv_data_keys WHERE template = ANY($1::text[])",
            names,
        )
        existing = {(row["template"], row["purpose"]) for row in rows}
        def used(template: str) -> Sequence[Purpose]:
            return list(Purpose) if purposes is None else purposes.get(template, list(Purpose))

        for template in names:
            for purpose in used(template):
                if (template, purpose.value) not in existing:
                    await self._create_first_version(template, purpose, actor)

        for template in names:
            for purpose in used(template):
                await self.active(template, purpose)

    async def active(self, template: str, purpose: Purpose) -> DataKey:
        """Return the active version of a template's key for ``purpose``."""
        cached = self._cached_active(template, purpose)
        self._on_lookup(cached is not None)
        if cached is not None:
            return cached

        async with self._lock((template, purpose, None)):
            cached = self._cached_active(template, purpose)
            if cached is not None:
                return cached

            generation = self._generation_of(template)
            version = await self._pool.fetchval(
                "SELECT version FROM tv_data_keys"
                " WHERE template = $1 AND purpose = $2 AND state = 'active'",
                template,
                purpose.value,
            )
            if version is None:
                raise DataKeyNotFound(
                    f"data key {_label(template, purpose)} has no active version; "
                    "DataKeyManager.ensure creates version 1 of a new template"
                )
            key = await self.get(template, purpose, version)
            if generation == self._generation_of(template):
                self._active_versions[(template, purpose)] = version
            return key

    async def usable(self, template: str, purpose: Purpose) -> list[DataKey]:
        """Return the active and decrypt_only versions of a template's key, newest first.

        During a rotation a value may be indexed or encrypted under any of them, so a lookup
        tries each. The list is empty when the template has no such version.
        """
        cached = self._cached_usable(template, purpose)
        if cached is not None:
            return cached

        generation = self._generation_of(template)
        versions = await self._pool.fetch(
            "SELECT version FROM tv_data_keys"
            " WHERE template = $1 AND purpose = $2 AND state IN ('active', 'decrypt_only')"
            " ORDER BY version DESC",
            template,
            purpose.value,
        )
        keys: list[DataKey] = []
        for row in versions:
            try:
                keys.append(await self.get(template, purpose, row["version"]))
            except (KeyRetired, KeyDestroyed):
                # Retired or destroyed after the query above: it is no longer usable.
                continue
        if generation == self._generation_of(template):
            self._usable_versions[(template, purpose)] = tuple(key.version for key in keys)
        return keys

    async def get(self, template: str, purpose: Purpose, version: int) -> DataKey:
        """Return one version of a template's key if it is active or decrypt_only.

        Raises KeyRetired or KeyDestroyed for a version in those states.
        """
        cache_key = (template, purpose, version)
        cached = self._keys.get(cache_key)
        self._on_lookup(cached is not None)
        if cached is not None:
            return cached

        async with self._lock(cache_key):
            cached = self._keys.get(cache_key)
            if cached is not None:
                return cached

            generation = self._generation_of(template)
            row = await self._pool.fetchrow(
                "SELECT state, kek_provider, kek_key_id, kek_version, wrapped_key"
                " FROM tv_data_keys WHERE template = $1 AND purpose = $2 AND version = $3",
                template,
                purpose.value,
                version,
            )
            if row is None:
                raise DataKeyNotFound(
                    f"data key {_label(template, purpose, version)} does not exist"
                )
            key = await self._unwrap_row(template, purpose, version, row)
            if generation == self._generation_of(template):
                self._keys[cache_key] = key
            return key

    def clear_cache(self, template: str | None = None) -> None:
        """Forget the unwrapped keys of ``template``, or of every template when it is None.

        The next request for them reads the table again.
        """
        if template is None:
            self._generation += 1
            self._keys.clear()
            self._active_versions.clear()
            self._usable_versions.clear()
            return

        self._template_generations[template] = self._template_generations.get(template, 0) + 1
        for key in [key for key in self._keys if key[0] == template]:
            del self._keys[key]
        for series in [series for series in self._active_versions if series[0] == template]:
            del self._active_versions[series]
        for series in [series for series in self._usable_versions if series[0] == template]:
            del self._usable_versions[series]

    # -- helpers

    def _lock(self, cache_key: tuple[str, Purpose, int | None]) -> asyncio.Lock:
        lock = self._locks.get(cache_key)
        if lock is None:
            lock = self._locks[cache_key] = asyncio.Lock()
        return lock

    def _generation_of(self, template: str) -> tuple[int, int]:
        return self._generation, self._template_generations.get(template, 0)

    def _cached_usable(self, template: str, purpose: Purpose) -> list[DataKey] | None:
        versions = self._usable_versions.get((template, purpose))
        if versions is None:
            return None
        keys = [self._keys.get((template, purpose, version)) for version in versions]
        if any(key is None for key in keys):
            return None
        return [key for key in keys if key is not None]

    def _cached_active(self, template: str, purpose: Purpose) -> DataKey | None:
        version = self._active_versions.get((template, purpose))
        if version is None:
            return None
        return self._keys.get((template, purpose, version))

    async def _create_first_version(self, template: str, purpose: Purpose, actor: str) -> None:
        material = secrets.token_bytes(KEY_SIZE)
        wrapped_key, kek = await asyncio.to_thread(
            self._provider.wrap, material, associated_data=associated_data(template, purpose, 1)
        )
        # One statement, so the event row exists exactly when this replica's insert won.
        created = await self._pool.fetchval(
            "WITH inserted AS ("
            " INSERT INTO tv_data_keys"
            " (template, purpose, version, state, kek_provider, kek_key_id, kek_version,"
            " wrapped_key)"
            " VALUES ($1, $2, 1, 'active', $3, $4, $5, $6)"
            " ON CONFLICT DO NOTHING"
            " RETURNING template, purpose, version),"
            " event AS ("
            " INSERT INTO tv_key_events"
            " (template, purpose, version, event, to_state, actor, detail)"
            " SELECT template, purpose, version, 'created', 'active', $7, $8::text::jsonb"
            " FROM inserted RETURNING id)"
            " SELECT count(*) FROM event",
            template,
            purpose.value,
            kek.provider,
            kek.key_id,
            kek.version,
            wrapped_key,
            actor,
            json.dumps({"kek": str(kek)}),
        )
        if created:
            logger.info(
                "created data key %s/%s version 1, wrapped by KEK %s key id %s version %s",
                template,
                purpose.value,
                kek.provider,
                kek.key_id,
                kek.version,
            )
        else:
            logger.debug(
                "data key %s/%s version 1 was created concurrently by another replica",
                template,
                purpose.value,
            )

    async def _unwrap_row(
        self, template: str, purpose: Purpose, version: int, row: asyncpg.Record
    ) -> DataKey:
        label = _label(template, purpose, version)
        if row["state"] == "destroyed" or row["wrapped_key"] is None:
            raise KeyDestroyed(f"data key {label} was destroyed")
        if row["state"] == "retired":
            raise KeyRetired(
                f"data key {label} is retired; reinstate it (tokenvault keys reinstate) to use it "
                "again"
            )
        if not self._provider.can_unwrap(row["kek_provider"]):
            raise KekNotFound(
                f"data key {label} is wrapped by KEK provider {row['kek_provider']}, "
                f"but the configured provider is {self._provider.name}; to move data keys to"
                " a new provider, configure the old one as [kek.previous] and run"
                " tokenvault keys rotate-kek"
            )

        kek = KekRef(row["kek_provider"], row["kek_key_id"], row["kek_version"])
        try:
            material = await asyncio.to_thread(
                self._provider.unwrap,
                bytes(row["wrapped_key"]),
                kek,
                associated_data=associated_data(template, purpose, version),
            )
        except (UnwrapError, KekNotFound) as exc:
            # UnwrapError has no message, so this line is where the key's name is recorded.
            logger.error(
                "failed to unwrap data key %s with KEK %s: %s",
                label,
                kek,
                type(exc).__name__ if isinstance(exc, UnwrapError) else exc,
            )
            raise
        if len(material) != KEY_SIZE:
            raise KeyProviderError(
                f"data key {label} unwrapped to {len(material)} bytes, expected {KEY_SIZE}"
            )

        logger.debug(
            "unwrapped data key %s/%s version %d (state %s) with KEK %s key id %s version %s",
            template,
            purpose.value,
            version,
            row["state"],
            kek.provider,
            kek.key_id,
            kek.version,
        )
        return DataKey(template, purpose, version, material, row["state"])

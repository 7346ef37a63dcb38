"""Vaulted tokens: a random token in the template's format, the value stored encrypted.

The canonical value is encrypted with the template's AES-256-GCM key. The associated data binds
the template, the canonical token and the key version, so a ciphertext copied to another row
does not decrypt. Convergent templates also store an HMAC-SHA256 of the value under the
template's index key, so the same value finds its existing token without an unkeyed hash.

Token space: a template keeps some characters and draws the rest, so each combination of kept
characters has ``product(radices)`` possible tokens (10**5 for a 16-digit card keeping 6 + 4
with a forced Luhn result). A colliding draw is retried up to ``max_rounds`` times per item;
an item still without a free token fails alone with RESOURCE_EXHAUSTED. With fill ratio f a
draw fails with probability f, so 8 rounds start failing noticeably (f**8 > 1%) above 56 % fill.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keys.datakeys import DataKeyManager, Purpose
from keys.errors import DataKeyNotFound, KeyDestroyed, KeyRetired
from vault.errors import (
    FailedPrecondition,
    InvalidValue,
    NotFound,
    ResourceExhausted,
    TokenvaultError,
)
from vault.formats.base import Side, Split, Template
from vault.store.tokens import NewToken, StaleDataKey, StoredToken, TokenStore

DEFAULT_MAX_ROUNDS = 8
_NONCE_BYTES = 12
_AAD_LABEL = b"tokenvault/vaulted/v1\x00"
_INDEX_LABEL = b"tokenvault/index/v1\x00"


class StoredValueCorrupt(TokenvaultError):
    """A stored ciphertext failed authentication: the row was altered or moved."""


@dataclass(frozen=True, repr=False)
class TokenizeJob:
    template: Template
    split: Split
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, repr=False)
class Revealed:
    value: str
    metadata: Mapping[str, str]


def associated_data(template: str, canonical_token: str, key_version: int) -> bytes:
    parts = [template.encode(), canonical_token.encode(), str(key_version).encode()]
    return _AAD_LABEL + b"\x00".join(parts)


def value_index(index_key: bytes, template: str, canonical_value: str) -> bytes:
    message = _INDEX_LABEL + template.encode() + b"\x00" + canonical_value.encode()
    return hmac.new(index_key, message, hashlib.sha256).digest()


class VaultedTokenizer:
    def __init__(
        self, keys: DataKeyManager, store: TokenStore, *, max_rounds: int = DEFAULT_MAX_ROUNDS
    ) -> None:
        self._keys = keys
        self._store = store
        self._max_rounds = max_rounds

    async def tokenize(self, jobs: Sequence[TokenizeJob]) -> list[str | TokenvaultError]:
        results: list[str | TokenvaultError | None] = [None] * len(jobs)
        indexes = await self._value_indexes(jobs)
        await self._reuse_existing(jobs, indexes, results)

        # Convergent duplicates inside one batch share the first one's draw.
        leaders: dict[tuple[str, bytes], int] = {}
        followers: dict[int, int] = {}
        pending: list[int] = []
        for position, job in enumerate(jobs):
            if results[position] is not None:
                continue
            index = indexes.get(position)
            if index is not None and (job.template.name, index) in leaders:
                followers[position] = leaders[(job.template.name, index)]
                continue
            if index is not None:
                leaders[(job.template.name, index)] = position
            pending.append(position)

        for _ in range(self._max_rounds):
            if not pending:
                break
            pending = await self._insert_round(jobs, indexes, pending, results)
            if pending:
                await self._reuse_existing(jobs, indexes, results, only=pending)
                pending = [p for p in pending if results[p] is None]

        for position in pending:
            results[position] = ResourceExhausted(
                f"template {jobs[position].template.name}: no free token left for these kept"
                " characters after several attempts; the token space is nearly full"
            )
        for position, leader in followers.items():
            leader_result = results[leader]
            if isinstance(leader_result, str):
                job = jobs[position]
                results[position] = _render(job.template, job.split, leader_result)
            else:
                results[position] = leader_result

        return [r if r is not None else ResourceExhausted("no token") for r in results]

    async def detokenize(
        self, jobs: Sequence[tuple[Template, Split]]
    ) -> list[Revealed | TokenvaultError]:
        rows = await self._store.fetch([(t.name, s.canonical) for t, s in jobs])
        results: list[Revealed | TokenvaultError] = []
        for template, split in jobs:
            row = rows.get((template.name, split.canonical))
            if row is None:
                results.append(
                    NotFound(f"token: no live token of template {template.name} matches")
                )
                continue
            results.append(await self._reveal(template, split, row))
        return results

    async def _reveal(
        self, template: Template, split: Split, row: StoredToken
    ) -> Revealed | TokenvaultError:
        try:
            key = await self._keys.get(template.name, Purpose.AEAD, row.key_version)
        except KeyDestroyed:
            return FailedPrecondition(
                f"token: key version {row.key_version} of template {template.name} was destroyed"
            )
        except KeyRetired:
            return FailedPrecondition(
                f"token: key version {row.key_version} of template {template.name} is retired;"
                " a key custodian can reinstate it"
            )
        except DataKeyNotFound:
            return FailedPrecondition(
                f"token: key version {row.key_version} of template {template.name} does not exist"
            )
        nonce, ciphertext = row.ciphertext[:_NONCE_BYTES], row.ciphertext[_NONCE_BYTES:]
        aad = associated_data(template.name, row.token, row.key_version)
        try:
            plaintext = AESGCM(key.material).decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            return StoredValueCorrupt("stored value failed its integrity check")
        try:
            value_split = template.split(plaintext.decode(), Side.VALUE)
        except InvalidValue:
            return FailedPrecondition(
                f"token: the stored value no longer fits the rules of template {template.name};"
                " was the template's configuration changed?"
            )
        value = template.join(split.layout, value_split.body, Side.VALUE)
        return Revealed(value=value, metadata=dict(row.metadata))

    # Steps

    async def _value_indexes(self, jobs: Sequence[TokenizeJob]) -> dict[int, bytes]:
        """Return each convergent item's value index under the template's active index key."""
        indexes: dict[int, bytes] = {}
        for position, job in enumerate(jobs):
            if not job.template.convergent:
                continue
            key = await self._keys.active(job.template.name, Purpose.INDEX)
            indexes[position] = value_index(key.material, job.template.name, job.split.canonical)
        return indexes

    async def _reuse_existing(
        self,
        jobs: Sequence[TokenizeJob],
        indexes: Mapping[int, bytes],
        results: list[str | TokenvaultError | None],
        only: Sequence[int] | None = None,
    ) -> None:
        """Give each convergent item the live token its value already has, if any.

        During an index key rotation a row may still carry its index under an older usable
        version, so the lookup tries the value's index under every usable version.
        """
        positions = [p for p in (only if only is not None else indexes) if p in indexes]
        candidates: dict[int, list[bytes]] = {}
        for position in positions:
            job = jobs[position]
            usable = await self._keys.usable(job.template.name, Purpose.INDEX)
            candidates[position] = [indexes[position]] + [
                value_index(key.material, job.template.name, job.split.canonical)
                for key in usable
                if value_index(key.material, job.template.name, job.split.canonical)
                != indexes[position]
            ]
        found = await self._store.find_by_index(
            [(jobs[p].template.name, index) for p in positions for index in candidates[p]]
        )
        for position in positions:
            job = jobs[position]
            for index in candidates[position]:
                existing = found.get((job.template.name, index))
                if existing is not None:
                    results[position] = _render(job.template, job.split, existing)
                    break

    async def _insert_round(
        self,
        jobs: Sequence[TokenizeJob],
        indexes: Mapping[int, bytes],
        pending: Sequence[int],
        results: list[str | TokenvaultError | None],
    ) -> list[int]:
        """Draw a token for each pending item and insert; return the items still pending."""
        rows: list[NewToken] = []
        drawn: dict[int, tuple[str, str]] = {}
        drawn_this_round: set[tuple[str, str]] = set()
        for position in pending:
            job = jobs[position]
            draw = _draw(job.template, job.split)
            # Two items drawing the same token in one round would both see it stored, so the
            # second waits for the next round.
            if draw is None or (job.template.name, draw[1]) in drawn_this_round:
                continue
            drawn_this_round.add((job.template.name, draw[1]))
            drawn[position] = draw
            rows.append(await self._sealed_row(job, draw[1], indexes.get(position)))

        try:
            stored = await self._store.insert(rows)
        except StaleDataKey as stale:
            # Another replica rotated this template's keys since they were cached: reload
            # them and seal every pending item again in the next round.
            self._keys.clear_cache(stale.template)
            return list(pending)
        still_pending = []
        for position in pending:
            if position not in drawn:
                still_pending.append(position)
                continue
            token, canonical = drawn[position]
            if (jobs[position].template.name, canonical) in stored:
                results[position] = token
            else:
                still_pending.append(position)
        return still_pending

    async def _sealed_row(
        self, job: TokenizeJob, canonical_token: str, index: bytes | None
    ) -> NewToken:
        template = job.template
        key = await self._keys.active(template.name, Purpose.AEAD)
        nonce = os.urandom(_NONCE_BYTES)
        ciphertext = AESGCM(key.material).encrypt(
            nonce,
            job.split.canonical.encode(),
            associated_data(template.name, canonical_token, key.version),
        )
        index_version = None
        if index is not None:
            index_version = (await self._keys.active(template.name, Purpose.INDEX)).version
        expires_at = None
        if template.ttl_seconds:
            expires_at = datetime.now(UTC) + timedelta(seconds=template.ttl_seconds)
        return NewToken(
            template=template.name,
            token=canonical_token,
            ciphertext=nonce + ciphertext,
            key_version=key.version,
            value_index=index,
            index_key_version=index_version,
            metadata=job.metadata,
            expires_at=expires_at,
        )


_MAX_DRAWS = 64


def _draw(template: Template, split: Split) -> tuple[str, str] | None:
    """Return a random token for ``split`` and its canonical form, never the value itself.

    Returns None when every draw equalled the value, which only a body of one or two possible
    tokens makes likely.
    """
    for _ in range(_MAX_DRAWS):
        body = [secrets.randbelow(radix) for radix in split.radices]
        token = template.join(split.layout, body, Side.TOKEN)
        canonical = template.split(token, Side.TOKEN).canonical
        if canonical != split.canonical:
            return token, canonical
    return None


def _render(template: Template, split: Split, canonical_token: str) -> str:
    """Lay out a stored canonical token with the separators of this request's value."""
    body = template.split(canonical_token, Side.TOKEN).body
    return template.join(split.layout, body, Side.TOKEN)

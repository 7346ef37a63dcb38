"""Vaultless tokens: FF1 (NIST SP 800-38G) over the template's body, nothing stored.

The tweak binds the template name, the kept characters and the body's radices, so the same
digits under another BIN, country or template give an unrelated token. Detokenizing recomputes
the value, which means any well-formed token decrypts to some value: only vaulted mode can
return NOT_FOUND.

Key versions: a template whose tokens carry a version (``Template.max_key_versions`` > 1, such
as PAN tokens that fail the Luhn check) tokenizes with its active FF1 key and writes that
version into the token; detokenizing decrypts with the version the token names, so tokens
survive rotation. Any other template is pinned to FF1 key version 1, which never rotates.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

from keys.datakeys import DataKeyManager, Purpose
from keys.errors import DataKeyNotFound, KeyDestroyed, KeyRetired
from vault.errors import FailedPrecondition, InvalidValue, TokenvaultError
from vault.formats.base import Side, Split, Template
from vault.fpe import FPEError, PositionCipher

_TWEAK_LABEL = b"tokenvault/ff1/v1\x00"
PINNED_VERSION = 1

Job = tuple[Template, Split]
# A job ready for FF1: the cipher and the key version it belongs to.
_Prepared = tuple[Template, Split, PositionCipher, int]


def tweak_for(template: Template, split: Split) -> bytes:
    """Derive the FF1 tweak from the template, the kept characters and the body's radices.

    The radices are included because mixed-radix bodies of the same bit length would otherwise
    share one radix-2 permutation under the same tweak.
    """
    radices = ",".join(str(radix) for radix in split.radices).encode()
    message = _TWEAK_LABEL + template.name.encode() + b"\x00" + split.context + b"\x00" + radices
    return hashlib.sha256(message).digest()


class VaultlessTokenizer:
    def __init__(self, keys: DataKeyManager) -> None:
        self._keys = keys
        self._ciphers: dict[tuple[str, int], PositionCipher] = {}

    async def tokenize(self, jobs: Sequence[Job]) -> list[str | TokenvaultError]:
        return await self._transform(jobs, Side.TOKEN)

    async def detokenize(self, jobs: Sequence[Job]) -> list[str | TokenvaultError]:
        return await self._transform(jobs, Side.VALUE)

    async def _transform(self, jobs: Sequence[Job], target: Side) -> list[str | TokenvaultError]:
        results: list[str | TokenvaultError | None] = [None] * len(jobs)
        prepared: list[tuple[int, _Prepared]] = []
        for position, (template, split) in enumerate(jobs):
            outcome = await self._prepare(template, split, target)
            if isinstance(outcome, TokenvaultError):
                results[position] = outcome
            else:
                prepared.append((position, outcome))

        # FF1 is CPU work, so it runs in a thread and the event loop keeps serving other calls.
        outputs = await asyncio.to_thread(_run, [job for _, job in prepared], target)
        for (position, _), output in zip(prepared, outputs, strict=True):
            results[position] = output
        return [r if r is not None else InvalidValue("token", "not processed") for r in results]

    async def _prepare(
        self, template: Template, split: Split, target: Side
    ) -> _Prepared | TokenvaultError:
        if template.max_key_versions <= 1:
            version = PINNED_VERSION
        elif target is Side.TOKEN:
            version = (await self._keys.active(template.name, Purpose.FPE)).version
            if version > template.max_key_versions:
                return FailedPrecondition(
                    f"template {template.name}: its active FF1 key version {version} is above"
                    f" the {template.max_key_versions} versions its tokens can carry"
                )
        else:
            version = split.key_version or PINNED_VERSION

        try:
            cipher = await self._cipher(template.name, version)
        except (KeyDestroyed, KeyRetired, DataKeyNotFound) as error:
            return FailedPrecondition(
                f"token: FF1 key version {version} of template {template.name} is"
                f" {_unusable_reason(error)}"
            )
        return template, split, cipher, version

    async def _cipher(self, template: str, version: int) -> PositionCipher:
        cached = self._ciphers.get((template, version))
        if cached is None:
            key = await self._keys.get(template, Purpose.FPE, version)
            cached = self._ciphers[(template, version)] = PositionCipher(key.material)
        return cached

    def forget(self, template: str | None = None) -> None:
        """Drop cached ciphers (after a key state change), for one template or all."""
        for cache_key in list(self._ciphers):
            if template is None or cache_key[0] == template:
                del self._ciphers[cache_key]


def _unusable_reason(error: Exception) -> str:
    if isinstance(error, KeyDestroyed):
        return "destroyed"
    if isinstance(error, KeyRetired):
        return "retired"
    return "unknown"


def _run(jobs: Sequence[_Prepared], target: Side) -> list[str | TokenvaultError]:
    results: list[str | TokenvaultError] = []
    for template, split, cipher, version in jobs:
        tweak = tweak_for(template, split)
        try:
            if target is Side.TOKEN:
                body = cipher.encrypt(split.radices, split.body, tweak)
            else:
                body = cipher.decrypt(split.radices, split.body, tweak)
        except FPEError:
            field = "value" if target is Side.TOKEN else "token"
            results.append(
                InvalidValue(
                    field,
                    "too few characters to tokenize without a vault (FF1 needs a domain of"
                    " at least 1,000,000); use a vaulted template for short values",
                )
            )
            continue
        results.append(template.join(split.layout, body, target, key_version=version))
    return results

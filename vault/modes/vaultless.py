"""Vaultless tokens: FF1 (NIST SP 800-38G) over the template's body, nothing stored.

The tweak binds the template name and the kept characters, so the same digits under another
BIN, country or template give an unrelated token. Detokenizing recomputes the value, which means
any well-formed token decrypts to some value: only vaulted mode can answer NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

from keys.datakeys import DataKeyManager, Purpose
from vault.errors import InvalidValue, TokenvaultError
from vault.formats.base import Side, Split, Template
from vault.fpe import FPEError, PositionCipher

_TWEAK_LABEL = b"tokenvault/ff1/v1\x00"

Job = tuple[Template, Split]


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
        ciphers = await self._ciphers_for(jobs)
        # FF1 is CPU work; a thread keeps the event loop answering other calls meanwhile.
        return await asyncio.to_thread(self._run, jobs, ciphers, Side.TOKEN)

    async def detokenize(self, jobs: Sequence[Job]) -> list[str | TokenvaultError]:
        ciphers = await self._ciphers_for(jobs)
        return await asyncio.to_thread(self._run, jobs, ciphers, Side.VALUE)

    async def _ciphers_for(self, jobs: Sequence[Job]) -> dict[str, PositionCipher]:
        # NOTE: tokens carry no key version yet, so vaultless templates always use the active
        # FF1 key; rotating it would change every token. Key rotation must add a version marker.
        ciphers: dict[str, PositionCipher] = {}
        for template, _ in jobs:
            if template.name in ciphers:
                continue
            key = await self._keys.active(template.name, Purpose.FPE)
            cache_key = (template.name, key.version)
            if cache_key not in self._ciphers:
                self._ciphers[cache_key] = PositionCipher(key.material)
            ciphers[template.name] = self._ciphers[cache_key]
        return ciphers

    @staticmethod
    def _run(
        jobs: Sequence[Job], ciphers: dict[str, PositionCipher], target: Side
    ) -> list[str | TokenvaultError]:
        results: list[str | TokenvaultError] = []
        for template, split in jobs:
            cipher = ciphers[template.name]
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
            results.append(template.join(split.layout, body, target))
        return results

"""FF1 over strings whose positions have different radices, such as an IBAN's BBAN."""

from __future__ import annotations

from collections.abc import Sequence

from vault.fpe.aes import new_aes_ecb
from vault.fpe.domain import MIN_DOMAIN, check_min_domain, domain_size
from vault.fpe.errors import FPEError
from vault.fpe.ff1 import FF1


def _mixed_radix_to_int(radices: Sequence[int], numerals: Sequence[int]) -> int:
    """Return the value of numerals in mixed radix, the first position most significant."""
    x = 0
    for position, (radix, numeral) in enumerate(zip(radices, numerals, strict=True)):
        if not 0 <= numeral < radix:
            raise FPEError(f"numerals: position {position} is outside radix {radix}")
        x = x * radix + numeral
    return x


def _int_to_mixed_radix(radices: Sequence[int], x: int) -> list[int]:
    numerals = [0] * len(radices)
    for position in range(len(radices) - 1, -1, -1):
        x, numerals[position] = divmod(x, radices[position])
    return numerals


class PositionCipher:
    """FF1 over numeral strings where each position has its own radix.

    When all positions share one radix and there are at least two, this is plain FF1 with that
    radix. Otherwise the numerals are read as one mixed-radix integer x < M, where M is the
    product of the radices, and FF1 with radix 2 over L = max(2, bit length of M - 1) bits
    encrypts x. The result is encrypted again while it is M or more (cycle walking), so the
    output is a permutation of [0, M). Averaged over all x, the walk takes 2**L / M FF1 calls,
    which is at most 2.

    The tweak goes to FF1 unchanged, so callers that use one key for several radix patterns
    should put the pattern into the tweak if they need the outputs to be unrelated.
    """

    __slots__ = ("_key", "_min_domain", "_ff1_by_radix")

    def __init__(self, key: bytes, *, min_domain: int = MIN_DOMAIN) -> None:
        new_aes_ecb(key)  # Validates the key length now rather than on first use.
        check_min_domain(min_domain)

        self._key = bytes(key)
        self._min_domain = min_domain
        self._ff1_by_radix: dict[int, FF1] = {}

    def __repr__(self) -> str:
        return f"PositionCipher(min_domain={self._min_domain})"

    def encrypt(self, radices: Sequence[int], numerals: Sequence[int], tweak: bytes) -> list[int]:
        """Encrypt numerals, where numerals[i] is in 0..radices[i]-1, under the tweak."""
        return self._permute(radices, numerals, tweak, decrypt=False)

    def decrypt(self, radices: Sequence[int], numerals: Sequence[int], tweak: bytes) -> list[int]:
        """Decrypt numerals that encrypt produced with the same radices, key and tweak."""
        return self._permute(radices, numerals, tweak, decrypt=True)

    def _ff1(self, radix: int) -> FF1:
        ff1 = self._ff1_by_radix.get(radix)
        if ff1 is None:
            # The domain check in _permute runs first, so this FF1 never rejects a length
            # for min_domain: radix**n = M, or 2**L >= M for the radix-2 walk.
            ff1 = FF1(self._key, radix, min_domain=self._min_domain)
            self._ff1_by_radix[radix] = ff1
        return ff1

    def _permute(
        self, radices: Sequence[int], numerals: Sequence[int], tweak: bytes, *, decrypt: bool
    ) -> list[int]:
        if not radices:
            raise FPEError("radices: needs at least one position")
        if len(numerals) != len(radices):
            raise FPEError(
                f"numerals: length {len(numerals)} does not match {len(radices)} radices"
            )
        M = domain_size(radices)
        if M < self._min_domain:
            raise FPEError(f"radices: domain size {M} is below min_domain {self._min_domain}")

        first = radices[0]
        if len(radices) >= 2 and radices.count(first) == len(radices):
            ff1 = self._ff1(first)
            if decrypt:
                return ff1.decrypt(numerals, tweak)
            return ff1.encrypt(numerals, tweak)

        x = _mixed_radix_to_int(radices, numerals)
        return _int_to_mixed_radix(radices, self._cycle_walk(x, M, tweak, decrypt=decrypt))

    def _cycle_walk(self, x: int, M: int, tweak: bytes, *, decrypt: bool) -> int:
        """Apply radix-2 FF1 to x < M until the result is below M."""
        ff1 = self._ff1(2)
        L = max(2, (M - 1).bit_length())
        step = ff1._decrypt_int if decrypt else ff1._encrypt_int
        y = step(x, L, tweak)
        while y >= M:
            y = step(y, L, tweak)
        return y

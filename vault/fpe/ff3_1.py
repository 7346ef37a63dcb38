"""FF3-1 format-preserving encryption, NIST SP 800-38G Rev. 1, Algorithms 9 and 10.

Variable names follow the standard. A and B hold NUM_radix(REV(A)) and NUM_radix(REV(B)),
the values FF3-1 computes with, instead of numeral strings: each round's C = REV(STR^m_radix(c))
has NUM_radix(REV(C)) = c, so the numeral string is built once at the end.
"""

from __future__ import annotations

from collections.abc import Sequence

from vault.fpe.aes import new_aes_ecb
from vault.fpe.domain import MIN_DOMAIN, check_radix, int_to_numerals, minimum_length
from vault.fpe.errors import FPEError

TWEAK_LENGTH = 7
ROUNDS = 8


def maximum_length(radix: int) -> int:
    """Return FF3-1's maxlen, 2 * floor(log_radix(2**96)), computed in integers."""
    half = 0
    while radix ** (half + 1) <= 2**96:
        half += 1
    return 2 * half


def _reversed_numerals_to_int(numerals: Sequence[int], radix: int) -> int:
    """Return NUM_radix(REV(X)), checking each numeral against radix."""
    x = 0
    for position in range(len(numerals) - 1, -1, -1):
        numeral = numerals[position]
        if not 0 <= numeral < radix:
            raise FPEError(f"numerals: position {position} is outside radix {radix}")
        x = x * radix + numeral
    return x


def _split_tweak(T: bytes) -> tuple[int, int]:
    """Return (TL, TR) of step 3 as 32-bit integers.

    TL = T[0..27] || 0^4 and TR = T[32..55] || T[28..31] || 0^4, with T's bits numbered from 0.
    """
    TL = int.from_bytes(T[:4], "big") & 0xFFFFFFF0
    TR = (int.from_bytes(T[4:], "big") << 8) | ((T[3] & 0x0F) << 4)
    return TL, TR


class FF3_1:
    """FF3-1 over numeral strings of one radix, with AES-128, AES-192 or AES-256.

    Lengths run from the smallest n >= 2 with radix ** n >= min_domain up to
    2 * floor(log_radix(2**96)). The tweak has exactly 7 bytes (56 bits).
    """

    __slots__ = ("_aes", "_radix", "_min_domain", "_minlen", "_maxlen")

    def __init__(self, key: bytes, radix: int, *, min_domain: int = MIN_DOMAIN) -> None:
        check_radix(radix)
        minlen = minimum_length(radix, min_domain)
        maxlen = maximum_length(radix)
        if minlen > maxlen:
            raise FPEError(
                f"min_domain: {min_domain} needs length {minlen}, above the FF3-1 maximum "
                f"{maxlen} for radix {radix}"
            )

        # CIPH_REVB(K): FF3-1 keys AES with the key's bytes in reverse order.
        self._aes = new_aes_ecb(bytes(key)[::-1])
        self._radix = radix
        self._min_domain = min_domain
        self._minlen = minlen
        self._maxlen = maxlen

    def __repr__(self) -> str:
        return f"FF3_1(radix={self._radix}, min_domain={self._min_domain})"

    @property
    def radix(self) -> int:
        return self._radix

    @property
    def minlen(self) -> int:
        """Smallest accepted length: radix ** minlen >= min_domain and minlen >= 2."""
        return self._minlen

    @property
    def maxlen(self) -> int:
        """Largest accepted length, 2 * floor(log_radix(2**96))."""
        return self._maxlen

    def encrypt(self, numerals: Sequence[int], tweak: bytes) -> list[int]:
        """Encrypt a numeral string (each numeral in 0..radix-1) under a 7-byte tweak."""
        return self._feistel(numerals, tweak, decrypt=False)

    def decrypt(self, numerals: Sequence[int], tweak: bytes) -> list[int]:
        """Decrypt a numeral string that encrypt produced under the same key and tweak."""
        return self._feistel(numerals, tweak, decrypt=True)

    def _check(self, n: int, T: bytes) -> None:
        if not self._minlen <= n <= self._maxlen:
            raise FPEError(
                f"numerals: length {n} is outside {self._minlen}..{self._maxlen} for radix "
                f"{self._radix} and min_domain {self._min_domain}"
            )
        if len(T) != TWEAK_LENGTH:
            raise FPEError(f"tweak: FF3-1 needs {TWEAK_LENGTH} bytes, got {len(T)}")

    def _feistel(self, X: Sequence[int], T: bytes, *, decrypt: bool) -> list[int]:
        radix = self._radix
        n = len(X)
        REV_X = _reversed_numerals_to_int(X, radix)
        self._check(n, T)
        update = self._aes.encryptor().update

        # Step 1.
        u = (n + 1) // 2
        v = n - u
        radix_u = radix**u
        radix_v = radix**v

        # Step 2: NUM_radix(REV(X)) = NUM_radix(REV(B)) * radix**u + NUM_radix(REV(A)).
        B, A = divmod(REV_X, radix_u)

        # Step 3.
        TL, TR = _split_tweak(bytes(T))

        if decrypt:
            # Algorithm 10, step 4: i runs from 7 down to 0, and P takes NUM_radix(REV(A)).
            for i in range(ROUNDS - 1, -1, -1):
                W = TR if i % 2 == 0 else TL
                P = (W ^ i).to_bytes(4, "big") + A.to_bytes(12, "big")
                y = int.from_bytes(update(P[::-1])[::-1], "big")
                c = (B - y) % (radix_u if i % 2 == 0 else radix_v)
                B = A
                A = c
        else:
            # Algorithm 9, step 4.
            for i in range(ROUNDS):
                # Steps 4.i-ii: m = u and W = TR for even i, m = v and W = TL for odd i.
                W = TR if i % 2 == 0 else TL
                P = (W ^ i).to_bytes(4, "big") + B.to_bytes(12, "big")
                # Steps 4.iii-iv: S = REVB(CIPH_REVB(K)(REVB(P))).
                y = int.from_bytes(update(P[::-1])[::-1], "big")
                # Steps 4.v-vi.
                c = (A + y) % (radix_u if i % 2 == 0 else radix_v)
                # Steps 4.vii-viii.
                A = B
                B = c

        # Step 5: A || B, whose reverse REV(B) || REV(A) has the value below.
        return int_to_numerals(B * radix_u + A, radix, n)[::-1]

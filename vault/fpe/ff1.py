"""FF1 format-preserving encryption, NIST SP 800-38G Rev. 1, Algorithms 7 and 8.

Variable names follow the standard. A and B hold the values NUM_radix(A) and NUM_radix(B) of
the two halves instead of numeral strings: NUM_radix(STR^m_radix(c)) = c, so the rounds need
no conversion, and the numeral string is built once at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vault.fpe.aes import BlockEncryptor, new_aes_ecb
from vault.fpe.domain import (
    MIN_DOMAIN,
    check_radix,
    int_to_numerals,
    minimum_length,
    numerals_to_int,
)
from vault.fpe.errors import FPEError

# [n]^4 and [t]^4 in P are 4-byte fields, so lengths must stay below 2**32.
MAX_LENGTH = 2**32 - 1
ROUNDS = 10

# Round function of steps 6.i-iv: takes i and the NUM_radix value of the half that feeds
# round i, and returns y.
RoundFunction = Callable[[int, int], int]


def _cbc_mac(update: BlockEncryptor, Y: int, X: bytes) -> int:
    """Continue the CBC-MAC chain of PRF (SP 800-38G Algorithm 6) from state Y over X."""
    for j in range(0, len(X), 16):
        block = (Y ^ int.from_bytes(X[j : j + 16], "big")).to_bytes(16, "big")
        Y = int.from_bytes(update(block), "big")
    return Y


def _expand(update: BlockEncryptor, R: int, d: int) -> int:
    """Return y = NUM(S), where S is the first d bytes of R || CIPH(R xor [1]^16) || ...

    These are steps 6.iii-iv.
    """
    if d <= 16:
        return R >> (8 * (16 - d))

    blocks = b"".join((R ^ j).to_bytes(16, "big") for j in range(1, (d + 15) // 16))
    S = R.to_bytes(16, "big") + update(blocks)
    return int.from_bytes(S[:d], "big")


def _make_round_function(
    update: BlockEncryptor, P: bytes, T: bytes, b: int, d: int
) -> RoundFunction:
    """Build the round function for one call, with the round-independent work done once.

    Q = T || [0]^((-t-b-1) mod 16) || [i]^1 || [NUM_radix(B)]^b. PRF's chain over P and over
    the whole blocks of Q before [i]^1 is the same in every round, so it runs here.
    """
    Q_head = T + bytes((-len(T) - b - 1) % 16)
    whole = len(Q_head) - len(Q_head) % 16
    Y = _cbc_mac(update, 0, P + Q_head[:whole])
    Q_rest = Q_head[whole:]

    if d <= 16 and len(Q_rest) + 1 + b == 16:
        # Common case (b <= 12): the rest of Q is one block and S is R, so a round is one
        # AES call on Y xor (Q_rest || [i]^1 || [NUM_radix(B)]^b).
        Y_rest = Y ^ (int.from_bytes(Q_rest, "big") << (8 * (b + 1)))
        i_shift = 8 * b
        S_shift = 8 * (16 - d)

        def one_block_round(i: int, number: int) -> int:
            block = (Y_rest ^ (i << i_shift) ^ number).to_bytes(16, "big")
            return int.from_bytes(update(block), "big") >> S_shift

        return one_block_round

    def general_round(i: int, number: int) -> int:
        # Steps 6.i-ii.
        R = _cbc_mac(update, Y, Q_rest + bytes((i,)) + number.to_bytes(b, "big"))
        # Steps 6.iii-iv.
        return _expand(update, R, d)

    return general_round


class FF1:
    """FF1 over numeral strings of one radix, with AES-128, AES-192 or AES-256.

    Lengths run from the smallest n >= 2 with radix ** n >= min_domain up to 2**32 - 1.
    Tweaks may have 0..max_tweak_length bytes.
    """

    __slots__ = ("_aes", "_radix", "_min_domain", "_minlen", "_max_tweak_length")

    def __init__(
        self,
        key: bytes,
        radix: int,
        *,
        min_domain: int = MIN_DOMAIN,
        max_tweak_length: int = 256,
    ) -> None:
        check_radix(radix)
        if not 0 <= max_tweak_length <= MAX_LENGTH:
            raise FPEError(f"max_tweak_length: must be in 0..{MAX_LENGTH}, got {max_tweak_length}")

        self._aes = new_aes_ecb(key)
        self._radix = radix
        self._min_domain = min_domain
        self._minlen = minimum_length(radix, min_domain)
        self._max_tweak_length = max_tweak_length

    def __repr__(self) -> str:
        return f"FF1(radix={self._radix}, min_domain={self._min_domain})"

    @property
    def radix(self) -> int:
        return self._radix

    @property
    def minlen(self) -> int:
        """Smallest accepted length: radix ** minlen >= min_domain and minlen >= 2."""
        return self._minlen

    def encrypt(self, numerals: Sequence[int], tweak: bytes) -> list[int]:
        """Encrypt a numeral string (each numeral in 0..radix-1) under the tweak."""
        n = len(numerals)
        x = numerals_to_int(numerals, self._radix)
        return int_to_numerals(self._encrypt_int(x, n, tweak), self._radix, n)

    def decrypt(self, numerals: Sequence[int], tweak: bytes) -> list[int]:
        """Decrypt a numeral string that encrypt produced under the same key and tweak."""
        n = len(numerals)
        x = numerals_to_int(numerals, self._radix)
        return int_to_numerals(self._decrypt_int(x, n, tweak), self._radix, n)

    def _encrypt_int(self, x: int, n: int, tweak: bytes) -> int:
        """Encrypt the n-numeral string X with NUM_radix(X) = x.

        Returns the NUM_radix value of the output, so callers can skip numeral lists.
        """
        return self._feistel(x, n, tweak, decrypt=False)

    def _decrypt_int(self, x: int, n: int, tweak: bytes) -> int:
        """Invert _encrypt_int."""
        return self._feistel(x, n, tweak, decrypt=True)

    def _check(self, n: int, t: int) -> None:
        if n < self._minlen:
            raise FPEError(
                f"numerals: length {n} is below the minimum {self._minlen} for radix "
                f"{self._radix} and min_domain {self._min_domain}"
            )
        if n > MAX_LENGTH:
            raise FPEError(f"numerals: length {n} is above the FF1 maximum {MAX_LENGTH}")
        if t > self._max_tweak_length:
            raise FPEError(
                f"tweak: length {t} bytes is above max_tweak_length {self._max_tweak_length}"
            )

    def _feistel(self, x: int, n: int, T: bytes, *, decrypt: bool) -> int:
        T = bytes(T)
        t = len(T)
        self._check(n, t)
        radix = self._radix
        # A fresh ECB context per call keeps an FF1 instance safe to share between threads.
        update = self._aes.encryptor().update

        # Step 1.
        u = n // 2
        v = n - u
        radix_u = radix**u
        radix_v = radix**v

        # Step 2.
        A, B = divmod(x, radix_v)

        # Step 3: ceil(v * log2(radix)) computed exactly as the bit length of radix**v - 1.
        b = ((radix_v - 1).bit_length() + 7) // 8

        # Step 4.
        d = 4 * ((b + 3) // 4) + 4

        # Step 5.
        P = (
            bytes((1, 2, 1))
            + radix.to_bytes(3, "big")
            + bytes((10, u % 256))
            + n.to_bytes(4, "big")
            + t.to_bytes(4, "big")
        )
        F = _make_round_function(update, P, T, b, d)

        if decrypt:
            # Algorithm 8, step 6: i runs from 9 down to 0, and Q takes NUM_radix(A).
            for i in range(ROUNDS - 1, -1, -1):
                y = F(i, A)
                c = (B - y) % (radix_u if i % 2 == 0 else radix_v)
                B = A
                A = c
        else:
            # Algorithm 7, step 6.
            for i in range(ROUNDS):
                # Steps 6.i-iv.
                y = F(i, B)
                # Steps 6.v-vii: m = u for even i, v for odd i.
                c = (A + y) % (radix_u if i % 2 == 0 else radix_v)
                # Steps 6.viii-ix.
                A = B
                B = c

        # Step 7: the value of A || B.
        return A * radix_v + B

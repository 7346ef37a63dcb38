"""Radix, domain and length rules shared by FF1, FF3-1 and PositionCipher."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from vault.fpe.errors import FPEError

# Smallest domain (radix ** length) that the SP 800-38G Rev. 1 draft accepts.
MIN_DOMAIN = 1_000_000

MIN_RADIX = 2
MAX_RADIX = 65536


def check_radix(radix: int, parameter: str = "radix") -> None:
    """Raise FPEError unless radix is in 2..65536, the range SP 800-38G allows."""
    if not MIN_RADIX <= radix <= MAX_RADIX:
        raise FPEError(f"{parameter}: must be in {MIN_RADIX}..{MAX_RADIX}, got {radix}")


def check_min_domain(min_domain: int) -> None:
    """Raise FPEError unless min_domain is a positive integer."""
    if min_domain < 1:
        raise FPEError(f"min_domain: must be at least 1, got {min_domain}")


def minimum_length(radix: int, min_domain: int = MIN_DOMAIN) -> int:
    """Return the smallest n >= 2 with radix ** n >= min_domain.

    SP 800-38G sets 2 as the least length for both FF1 and FF3-1.
    """
    check_radix(radix)
    check_min_domain(min_domain)

    n = 2
    while radix**n < min_domain:
        n += 1
    return n


def domain_size(radices: Iterable[int]) -> int:
    """Return the number of values a string with these per-position radices can take."""
    radices = list(radices)
    # min and max keep the valid case fast. The loop runs only to name the bad position.
    if radices and (min(radices) < MIN_RADIX or max(radices) > MAX_RADIX):
        for position, radix in enumerate(radices):
            check_radix(radix, f"radices: position {position}")
    return math.prod(radices)


def numerals_to_int(numerals: Sequence[int], radix: int) -> int:
    """Return NUM_radix(X), the value of X with the first numeral most significant.

    Raises FPEError naming the first position whose numeral is outside 0..radix-1.
    """
    x = 0
    for position, numeral in enumerate(numerals):
        if not 0 <= numeral < radix:
            raise FPEError(f"numerals: position {position} is outside radix {radix}")
        x = x * radix + numeral
    return x


def int_to_numerals(x: int, radix: int, m: int) -> list[int]:
    """Return STR^m_radix(x), the m numerals of x with the first numeral most significant."""
    numerals = [0] * m
    for position in range(m - 1, -1, -1):
        x, numerals[position] = divmod(x, radix)
    return numerals

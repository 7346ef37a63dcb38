"""Format-preserving encryption (NIST SP 800-38G FF1 and FF3-1) over numeral strings.

A numeral string is a sequence of integers in 0..radix-1. Alphabet converts text to numerals
and back. PositionCipher applies FF1 to strings whose positions have different radices.
Every rule violation raises FPEError, whose message never contains input values or keys.
"""

from vault.fpe.alphabet import Alphabet
from vault.fpe.domain import MIN_DOMAIN, domain_size, minimum_length
from vault.fpe.errors import FPEError
from vault.fpe.ff1 import FF1
from vault.fpe.ff3_1 import FF3_1
from vault.fpe.positions import PositionCipher

__all__ = [
    "MIN_DOMAIN",
    "Alphabet",
    "FF1",
    "FF3_1",
    "FPEError",
    "PositionCipher",
    "domain_size",
    "minimum_length",
]

"""ISO 7064 MOD 97-10 as ISO 13616 uses it for IBAN check digits."""

from __future__ import annotations

from vault.formats.alphabets import ASCII_DIGITS, ASCII_UPPER


def _to_number(text: str) -> int:
    # ISO 13616 replaces each letter by two digits: A = 10, B = 11, ... Z = 35.
    digits = []
    for char in text:
        if char in ASCII_DIGITS:
            digits.append(char)
        elif char in ASCII_UPPER:
            digits.append(str(ord(char) - 55))
        else:
            raise ValueError("MOD 97-10 input must be ASCII digits and upper-case letters")
    return int("".join(digits))


def iban_remainder(iban: str) -> int:
    """Return the MOD 97 remainder of an electronic-format IBAN (1 for a valid IBAN)."""
    return _to_number(iban[4:] + iban[:4]) % 97


def is_iban_checksum_valid(iban: str) -> bool:
    return iban_remainder(iban) == 1


def iban_check_digits(country_code: str, bban: str) -> str:
    """Return the two check digits (``02`` to ``98``) for a country code and BBAN."""
    remainder = _to_number(bban + country_code + "00") % 97
    return f"{98 - remainder:02d}"

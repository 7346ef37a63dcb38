"""The Luhn check (ISO/IEC 7812-1 Annex B) over strings of ASCII digits."""

from __future__ import annotations


def _weighted(digit: int, doubled: bool) -> int:
    if not doubled:
        return digit
    twice = digit * 2
    return twice - 9 if twice > 9 else twice


def luhn_checksum(digits: str) -> int:
    """Return the Luhn sum modulo 10. A string passes the check when the result is 0.

    Counting from the rightmost digit as position 1, every even position is doubled.
    """
    total = 0
    for offset, char in enumerate(reversed(digits)):
        total += _weighted(ord(char) - 48, offset % 2 == 1)
    return total % 10


def is_luhn_valid(digits: str) -> bool:
    return luhn_checksum(digits) == 0


def luhn_digit_at(digits: str, index: int) -> int:
    """Return the digit that makes ``digits`` Luhn-valid when written at ``index``.

    The digit currently at ``index`` is ignored. Exactly one digit fits, because the weighting
    of a single position (doubled or not) maps 0-9 onto 0-9 one to one.
    """
    doubled = (len(digits) - 1 - index) % 2 == 1
    without = luhn_checksum(digits[:index] + "0" + digits[index + 1 :])
    for digit in range(10):
        if (without + _weighted(digit, doubled)) % 10 == 0:
            return digit
    raise AssertionError("unreachable: one digit always completes the Luhn sum")

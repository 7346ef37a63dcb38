"""Luhn and MOD 97-10 helpers, and the explicit character sets."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vault.formats.alphabets import DIGITS, LOWER, UPPER, UPPER_ALPHANUMERIC, Alphabet
from vault.formats.luhn import is_luhn_valid, luhn_checksum, luhn_digit_at
from vault.formats.mod97 import iban_check_digits, iban_remainder, is_iban_checksum_valid

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    ("digits", "valid"),
    [
        ("79927398713", True),
        ("79927398710", False),
        ("0", True),
        ("18", True),
        ("4111111111111111", True),
    ],
)
def test_luhn_known_answers(digits: str, valid: bool) -> None:
    assert is_luhn_valid(digits) is valid


def test_luhn_accepts_every_test_pan() -> None:
    for row in csv.DictReader((DATA / "test-pans.csv").open()):
        assert luhn_checksum(row["pan"]) == 0


@given(digits=st.text(alphabet="0123456789", min_size=2, max_size=19), data=st.data())
def test_luhn_digit_at_any_position(digits: str, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(digits) - 1))
    fixed = digits[:index] + str(luhn_digit_at(digits, index)) + digits[index + 1 :]

    assert is_luhn_valid(fixed)
    # Every other digit at that position fails, so the derived digit is unique.
    others = [d for d in "0123456789" if d != fixed[index]]
    assert not any(is_luhn_valid(fixed[:index] + d + fixed[index + 1 :]) for d in others)


def test_mod97_known_answers() -> None:
    assert iban_remainder("GB82WEST12345698765432") == 1
    assert iban_check_digits("GB", "WEST12345698765432") == "82"
    assert iban_check_digits("DE", "370400440532013000") == "89"
    assert not is_iban_checksum_valid("GB82WEST12345698765431")


def test_mod97_rejects_non_ascii() -> None:
    with pytest.raises(ValueError):
        iban_check_digits("GB", "WEST1234569876543\uff12")


def test_alphabets_radices() -> None:
    assert (DIGITS.radix, UPPER.radix, LOWER.radix, UPPER_ALPHANUMERIC.radix) == (10, 26, 26, 36)
    assert DIGITS.index["7"] == 7
    assert UPPER_ALPHANUMERIC.symbols[10] == "A"
    with pytest.raises(ValueError, match="distinct"):
        Alphabet("x", "aa")


def test_ascii_sets_exclude_unicode_digits() -> None:
    for char in ("\uff14", "\u0664", "\u06f4", "\u0966", "\u00b2", "\u0410"):
        assert char.isdigit() or char.isalpha()
        assert char not in DIGITS.index
        assert char not in UPPER.index
        assert char not in UPPER_ALPHANUMERIC.index

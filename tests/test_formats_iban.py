"""IBAN template: every registry example, country table, check digits, classes and mask."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vault.errors import ConfigError, InvalidValue
from vault.formats import Side, build_template
from vault.formats.alphabets import ASCII_DIGITS, ASCII_UPPER
from vault.formats.iban import IbanTemplate
from vault.formats.iban_registry import IBAN_COUNTRIES
from vault.formats.mod97 import iban_check_digits, is_iban_checksum_valid

DATA = Path(__file__).parent / "data"
EXAMPLES = [
    (row["iban"], row["country"]) for row in csv.DictReader((DATA / "iban-examples.csv").open())
]
CLASS_CHARS = {"n": ASCII_DIGITS, "a": ASCII_UPPER, "c": ASCII_DIGITS + ASCII_UPPER}


def not_allowed(position: int) -> str:
    return (
        f"character at position {position} is not allowed (allowed: "
        "A-Z, 0-9, single spaces between groups of 4)"
    )


def iban_template(**settings: Any) -> IbanTemplate:
    template = build_template("accounts", {"type": "iban", **settings})
    assert isinstance(template, IbanTemplate)
    return template


def print_format(iban: str) -> str:
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


def make_token(template: IbanTemplate, value: str, seed: int) -> str:
    split = template.split(value, Side.VALUE)
    generator = random.Random(seed)
    body = [generator.randrange(radix) for radix in split.radices]
    return template.join(split.layout, body, Side.TOKEN)


def assert_same_classes(token: str, value: str) -> None:
    country = IBAN_COUNTRIES[value[:2]]
    for offset, kind in enumerate(country.bban_classes):
        assert token[4 + offset] in CLASS_CHARS[kind], f"BBAN position {offset + 1}"


def assert_message_hides(error: InvalidValue, text: str) -> None:
    message = str(error)
    for start in range(len(text) - 3):
        assert text[start : start + 4] not in message


def test_examples_file_matches_table() -> None:
    assert len(EXAMPLES) >= 30
    for iban, country_code in EXAMPLES:
        country = IBAN_COUNTRIES[country_code]
        assert iban[:2] == country_code
        assert len(iban) == country.length
        assert is_iban_checksum_valid(iban)
        assert_same_classes(iban, iban)


def test_registry_entries_consistent() -> None:
    assert len(IBAN_COUNTRIES) == 89
    for code, country in IBAN_COUNTRIES.items():
        assert code == country.code
        assert len(code) == 2 and all(char in ASCII_UPPER for char in code)
        assert 15 <= country.length <= 34
        assert len(country.bban_classes) == country.length - 4
        if country.bank_code is not None:
            start, end = country.bank_code
            assert 0 <= start < end <= len(country.bban_classes)


@pytest.mark.parametrize("keep_bank_code", [False, True])
@pytest.mark.parametrize("mode", ["vaultless", "vaulted"])
@pytest.mark.parametrize(("iban", "country_code"), EXAMPLES)
def test_every_example_tokenizes(
    iban: str, country_code: str, mode: str, keep_bank_code: bool
) -> None:
    template = iban_template(mode=mode, keep_bank_code=keep_bank_code)
    country = IBAN_COUNTRIES[country_code]
    if keep_bank_code and country.bank_code is None:
        with pytest.raises(InvalidValue, match="keep_bank_code is not supported"):
            template.split(iban, Side.VALUE)
        return

    for value in (iban, print_format(iban)):
        value_split = template.split(value, Side.VALUE)
        assert template.join(value_split.layout, value_split.body, Side.VALUE) == value
        for seed in range(5):
            token = make_token(template, value, seed)
            token_split = template.split(token, Side.TOKEN)
            electronic = token.replace(" ", "")

            assert len(token) == len(value)
            assert [i for i, c in enumerate(token) if c == " "] == [
                i for i, c in enumerate(value) if c == " "
            ]
            assert electronic[:2] == country_code
            assert is_iban_checksum_valid(electronic)
            assert_same_classes(electronic, iban)
            assert token_split.context == value_split.context
            assert token_split.radices == value_split.radices
            assert template.join(token_split.layout, value_split.body, Side.VALUE) == value
            if keep_bank_code and country.bank_code is not None:
                start, end = country.bank_code
                assert electronic[4 + start : 4 + end] == iban[4 + start : 4 + end]


def test_radices_follow_classes() -> None:
    split = iban_template().split("GB29NWBK60161331926819", Side.VALUE)
    assert split.radices == (26,) * 4 + (10,) * 14

    split = iban_template().split("QA58DOHB00001234567890ABCDEFG", Side.VALUE)
    assert split.radices == (26,) * 4 + (36,) * 21


def test_keep_bank_code_keeps_identifier() -> None:
    template = iban_template(keep_bank_code=True)
    split = template.split("DE89370400440532013000", Side.VALUE)

    assert len(split.body) == 10
    assert b"4:33" in split.context
    italian = template.split("IT60X0542811101000000123456", Side.VALUE)
    # The Italian CIN (BBAN position 1) is tokenized; the 5-digit ABI after it is kept.
    assert len(italian.body) == 23 - 5


def test_check_digits_derived_on_both_sides() -> None:
    template = iban_template()
    split = template.split("GB29 NWBK 6016 1331 9268 19", Side.VALUE)
    assert split.layout.derived == (2, 3)

    zeros = [0] * len(split.body)
    check_digits = iban_check_digits("GB", "AAAA" + "0" * 14)
    expected = f"GB{check_digits} AAAA 0000 0000 0000 00"
    assert template.join(split.layout, zeros, Side.TOKEN) == expected
    assert template.join(split.layout, zeros, Side.VALUE) == expected


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("GB28NWBK60161331926819", "IBAN check digits are wrong (ISO 7064 MOD 97-10)"),
        ("GB29NWBK60161331926818", "IBAN check digits are wrong (ISO 7064 MOD 97-10)"),
        (
            "gb29nwbk60161331926819",
            "character at position 1 is lower case, but letters must be upper case",
        ),
        (
            "GB29NWBk60161331926819",
            "character at position 8 is lower case, but letters must be upper case",
        ),
        ("GB29NWBK6016133192681", "must be 22 characters long for its country"),
        ("GB29NWBK601613319268190", "must be 22 characters long for its country"),
        ("ZZ29NWBK60161331926819", "country code is not an IBAN country in the registry"),
        ("1229NWBK60161331926819", "must start with a two-letter country code"),
        ("GBXXNWBK60161331926819", "check digits (positions 3-4) must be digits"),
        ("GB0", "must be 15 to 33 characters, not counting print-format spaces"),
        (
            "GB29N1BK60161331926819",
            "character at position 6 must be an upper-case letter for this country's BBAN format",
        ),
        (
            "GB29NWBK6016133192681A",
            "character at position 22 must be a digit for this country's BBAN format",
        ),
        (
            "GB29 NWBK 6016 1331 9268 1A",
            "character at position 27 must be a digit for this country's BBAN format",
        ),
        (
            "GB29-NWBK-6016-1331-9268-19",
            not_allowed(5),
        ),
        (
            "GB29 NWBK6016 1331 9268 19",
            "print format needs a single space after every group of 4 characters",
        ),
        (
            "GB29 NW BK 6016 1331 9268 1",
            "spaces are allowed only between groups of 4 characters (print format)",
        ),
        (
            "GB29  NWBK 6016 1331 9268 19",
            "spaces are allowed only between groups of 4 characters (print format)",
        ),
        (
            "GB\uff12\uff19NWBK60161331926819",
            not_allowed(3),
        ),
        (
            "GB29NWBK6016133192681\u0669",
            not_allowed(22),
        ),
        (
            "GB29\u0410WBK60161331926819",
            not_allowed(5),
        ),
    ],
)
def test_bad_values_rejected(text: str, rule: str) -> None:
    for side in (Side.VALUE, Side.TOKEN):
        with pytest.raises(InvalidValue) as caught:
            iban_template().split(text, side)
        assert caught.value.field == side.value
        assert caught.value.rule == rule
        assert_message_hides(caught.value, text)


def test_out_of_range_check_digits_rejected() -> None:
    # "01" also satisfies MOD 97-10 when "98" does, but only 02-98 round-trip.
    bban = "NWBK60161331926819"
    valid = iban_check_digits("GB", bban)
    assert valid == "29"
    for digits in ("00", "01", "99"):
        with pytest.raises(InvalidValue, match="must be from 02 to 98"):
            iban_template().split(f"GB{digits}{bban}", Side.VALUE)


def test_vaultless_domain_checked_per_item() -> None:
    template = iban_template(keep_bank_code=True)
    template.check_domain()
    # Norway: 11-digit BBAN, 4-digit bank code kept, 7 digits left (10**7).
    assert len(template.split("NO9386011117947", Side.VALUE).body) == 7


def test_check_domain_passes_for_table() -> None:
    iban_template().check_domain()
    iban_template(keep_bank_code=True).check_domain()
    iban_template(mode="vaulted", keep_bank_code=True).check_domain()


def test_bad_settings_rejected() -> None:
    with pytest.raises(
        ConfigError, match="template 'accounts': keep_bank_code must be true or false"
    ):
        iban_template(keep_bank_code="yes")
    with pytest.raises(ConfigError, match="unknown key 'keep_bank'"):
        iban_template(keep_bank=True)


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("GB29NWBK60161331926819", "GB29**************6819"),
        ("GB29 NWBK 6016 1331 9268 19", "GB29 **** **** **** **68 19"),
        ("NO9386011117947", "NO93*******7947"),
    ],
)
def test_mask(value: str, masked: str) -> None:
    assert iban_template().mask(value) == masked


@st.composite
def ibans(draw: st.DrawFn) -> str:
    country = IBAN_COUNTRIES[draw(st.sampled_from(sorted(IBAN_COUNTRIES)))]
    bban = "".join(draw(st.sampled_from(CLASS_CHARS[kind])) for kind in country.bban_classes)
    iban = country.code + iban_check_digits(country.code, bban) + bban
    return print_format(iban) if draw(st.booleans()) else iban


@given(value=ibans(), keep_bank_code=st.booleans(), seed=st.integers(0, 2**32))
def test_property_round_trip_and_validity(value: str, keep_bank_code: bool, seed: int) -> None:
    template = iban_template(keep_bank_code=keep_bank_code, mode="vaulted")
    electronic = value.replace(" ", "")
    if keep_bank_code and IBAN_COUNTRIES[electronic[:2]].bank_code is None:
        return

    value_split = template.split(value, Side.VALUE)
    token = make_token(template, value, seed)
    token_split = template.split(token, Side.TOKEN)

    assert template.join(value_split.layout, value_split.body, Side.VALUE) == value
    assert template.join(token_split.layout, value_split.body, Side.VALUE) == value
    assert token_split.layout == value_split.layout
    assert token.replace(" ", "")[:2] == electronic[:2]
    assert is_iban_checksum_valid(token.replace(" ", ""))
    assert_same_classes(token.replace(" ", ""), electronic)

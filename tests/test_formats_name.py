"""Name template: letter classes (ASCII and Latin), kept punctuation, per-item domain, mask."""

from __future__ import annotations

import random
import unicodedata
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vault.errors import InvalidValue
from vault.formats import Side, build_template
from vault.formats.alphabets import ASCII_LOWER, ASCII_UPPER, LATIN_LOWER, LATIN_UPPER
from vault.formats.name import NameTemplate

PUNCTUATION = " -'\u2019."


def not_allowed(position: int) -> str:
    return (
        f"character at position {position} is not allowed (allowed: "
        "Latin letters, space, hyphen, apostrophe, period, with letters precomposed (NFC))"
    )


def name_template(**settings: Any) -> NameTemplate:
    template = build_template("person", {"type": "name", "mode": "vaulted", **settings})
    assert isinstance(template, NameTemplate)
    return template


def make_token(template: NameTemplate, value: str, seed: int) -> str:
    split = template.split(value, Side.VALUE)
    generator = random.Random(seed)
    return template.join(split.layout, [generator.randrange(r) for r in split.radices], Side.TOKEN)


def letter_class(char: str) -> str:
    for name, letters in (
        ("ascii-upper", ASCII_UPPER),
        ("ascii-lower", ASCII_LOWER),
        ("latin-upper", LATIN_UPPER),
        ("latin-lower", LATIN_LOWER),
    ):
        if char in letters:
            return name
    return char


def assert_message_hides(error: InvalidValue, text: str) -> None:
    message = str(error)
    for start in range(len(text) - 3):
        assert text[start : start + 4] not in message


def test_latin_sets_are_letters_of_one_case() -> None:
    assert len(set(LATIN_UPPER)) == len(LATIN_UPPER) == 93
    assert len(set(LATIN_LOWER)) == len(LATIN_LOWER) == 94
    for char in LATIN_UPPER:
        assert unicodedata.category(char) == "Lu", hex(ord(char))
        assert 0xC0 <= ord(char) <= 0x17F
    for char in LATIN_LOWER:
        assert unicodedata.category(char) == "Ll", hex(ord(char))
        assert 0xDF <= ord(char) <= 0x17F


@pytest.mark.parametrize(
    "value",
    [
        "Jane Doe",
        "Mary-Jane O'Neil",
        "O\u2019Brien",
        "Łukasz Müller-Żak",
        "Zoë",
        "J. R. R. Tolkien",
    ],
)
def test_token_keeps_classes_and_punctuation(value: str) -> None:
    template = name_template()
    for seed in range(10):
        token = make_token(template, value, seed)
        assert [letter_class(c) for c in token] == [letter_class(c) for c in value]


def test_radices_per_class() -> None:
    split = name_template().split("Ab Éé", Side.VALUE)
    assert split.radices == (26, 26, 93, 94)


def test_vaultless_needs_five_letters() -> None:
    template = build_template("person", {"type": "name"})
    with pytest.raises(InvalidValue) as caught:
        template.split("Li Wu", Side.VALUE)
    assert caught.value.rule == (
        "has too few letters for vaultless tokenization "
        "(need a domain of 1,000,000, about 5 letters)"
    )
    assert len(template.split("Li Wang", Side.VALUE).body) == 6
    template.check_domain()


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (
            "Jose\u0301 Garcia",
            not_allowed(5),
        ),
        (
            "J\u0430ne Smith",
            not_allowed(2),
        ),
        (
            "Jane Smith\uff21",
            not_allowed(11),
        ),
        (
            "Jane Smith2",
            not_allowed(11),
        ),
        (
            "Jane_Smith",
            not_allowed(5),
        ),
        (
            "\u0416\u0435\u043d\u044f",
            not_allowed(1),
        ),
        ("- . '", "must contain at least one letter"),
        ("A" * 201, "must be at most 200 characters long"),
        (" Jane", "must not start or end with whitespace"),
    ],
)
def test_bad_values_rejected(text: str, rule: str) -> None:
    for side in (Side.VALUE, Side.TOKEN):
        with pytest.raises(InvalidValue) as caught:
            name_template().split(text, side)
        assert caught.value.field == side.value
        assert caught.value.rule == rule
        assert_message_hides(caught.value, text)


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("Mary-Jane O'Neil", "M***-J*** O'****"),
        ("J. R. R. Tolkien", "J. R. R. T******"),
        ("Łukasz Müller", "Ł***** M*****"),
        ("Li", "L*"),
    ],
)
def test_mask(value: str, masked: str) -> None:
    assert name_template().mask(value) == masked


names = st.text(
    alphabet=st.sampled_from(ASCII_UPPER + ASCII_LOWER + LATIN_UPPER + LATIN_LOWER + PUNCTUATION),
    min_size=1,
    max_size=60,
).filter(lambda text: text.strip() == text and any(c not in PUNCTUATION for c in text))


@given(value=names, seed=st.integers(0, 2**32))
def test_property_round_trip_and_classes(value: str, seed: int) -> None:
    template = name_template()
    value_split = template.split(value, Side.VALUE)
    token = make_token(template, value, seed)
    token_split = template.split(token, Side.TOKEN)

    assert template.join(value_split.layout, value_split.body, Side.VALUE) == value
    assert template.join(token_split.layout, value_split.body, Side.VALUE) == value
    assert token_split.context == value_split.context
    assert [letter_class(c) for c in token] == [letter_class(c) for c in value]

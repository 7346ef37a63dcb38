"""Generic template: configured alphabet, kept prefix and suffix, domain check and mask."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vault.errors import ConfigError, InvalidValue
from vault.formats import Side, build_template
from vault.formats.generic import GenericTemplate

HEX = "0123456789abcdef"


def generic_template(**settings: Any) -> GenericTemplate:
    template = build_template("ids", {"type": "generic", "alphabet": HEX, **settings})
    assert isinstance(template, GenericTemplate)
    return template


def make_token(template: GenericTemplate, value: str, seed: int) -> str:
    split = template.split(value, Side.VALUE)
    generator = random.Random(seed)
    return template.join(split.layout, [generator.randrange(r) for r in split.radices], Side.TOKEN)


def test_prefix_and_suffix_kept() -> None:
    template = generic_template(min_length=8, max_length=8, keep_first=2, keep_last=1)
    split = template.split("ab12cd34", Side.VALUE)
    token = template.join(split.layout, [0] * 5, Side.TOKEN)

    assert split.radices == (16,) * 5
    assert token == "ab000004"


def test_large_alphabet() -> None:
    # Plane 1 code points: 65,536 distinct characters with no surrogates among them.
    alphabet = "".join(chr(code) for code in range(0x10000, 0x20000))
    template = build_template("wide", {"type": "generic", "alphabet": alphabet, "min_length": 2})
    template.check_domain()

    assert template.describe()["alphabet"] == "65536 characters"
    with pytest.raises(ConfigError, match="alphabet must have 2 to 65,536 characters"):
        build_template("wider", {"type": "generic", "alphabet": alphabet + "a"})


def test_value_may_contain_whitespace_in_alphabet() -> None:
    template = build_template(
        "spaced", {"type": "generic", "alphabet": " abcdefghij", "min_length": 6, "mode": "vaulted"}
    )
    split = template.split(" abc j", Side.VALUE)
    assert template.join(split.layout, split.body, Side.VALUE) == " abc j"


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("", "must not be empty"),
        ("abc12", "must be 6 to 256 characters"),
        ("abcdef0123g", "character at position 11 is not in the alphabet"),
        ("ABCDEF0123", "character at position 1 is not in the alphabet"),
        ("abcdef\uff10123", "character at position 7 is not in the alphabet"),
    ],
)
def test_bad_values_rejected(text: str, rule: str) -> None:
    template = generic_template(min_length=6)
    with pytest.raises(InvalidValue) as caught:
        template.split(text, Side.VALUE)
    assert caught.value.rule == rule
    for start in range(len(text) - 3):
        assert text[start : start + 4] not in str(caught.value)


def test_domain_check_uses_min_length() -> None:
    generic_template(min_length=5).check_domain()
    with pytest.raises(ConfigError) as caught:
        generic_template(min_length=6, keep_first=1, keep_last=1).check_domain()

    message = str(caught.value)
    assert "a 6-character value leaves 4 characters of radix 16" in message
    assert "a domain of 65,536" in message
    assert "Raise min_length to 7" in message
    generic_template(min_length=6, keep_first=1, keep_last=1, mode="vaulted").check_domain()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"alphabet": "a"}, "alphabet must have 2 to 65,536 characters"),
        ({"alphabet": "abca"}, "alphabet must not repeat a character"),
        ({"alphabet": 12}, "alphabet must be a string"),
        ({"alphabet": None}, "alphabet is required"),
        (
            {"min_length": 4, "keep_first": 2, "keep_last": 2},
            "keep_first + keep_last must be less than min_length",
        ),
        ({"max_length": 5000}, "max_length must be an integer from 1 to 4096"),
    ],
)
def test_bad_settings_rejected(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        generic_template(**settings)
    assert message in str(caught.value)


def test_mask_shows_kept_parts() -> None:
    template = generic_template(min_length=8, keep_first=2, keep_last=2)
    assert template.mask("ab12cd34") == "ab****34"
    assert generic_template(min_length=8).mask("ab12cd34") == "********"


@given(
    value=st.text(alphabet=HEX, min_size=8, max_size=40),
    keep_first=st.integers(0, 3),
    keep_last=st.integers(0, 3),
    seed=st.integers(0, 2**32),
)
def test_property_round_trip_and_kept(
    value: str, keep_first: int, keep_last: int, seed: int
) -> None:
    template = generic_template(min_length=8, keep_first=keep_first, keep_last=keep_last)
    value_split = template.split(value, Side.VALUE)
    token = make_token(template, value, seed)
    token_split = template.split(token, Side.TOKEN)

    assert template.join(value_split.layout, value_split.body, Side.VALUE) == value
    assert token[:keep_first] == value[:keep_first]
    assert token[len(token) - keep_last :] == value[len(value) - keep_last :]
    assert all(char in HEX for char in token)
    assert token_split.context == value_split.context

"""Phone template: E.164 shape, separators, calling codes, per-item domain and mask."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vault.errors import ConfigError, InvalidValue
from vault.formats import Side, build_template
from vault.formats.calling_codes import CALLING_CODES
from vault.formats.phone import PhoneTemplate


def not_allowed(position: int) -> str:
    return (
        f"character at position {position} is not allowed (allowed: "
        "digits, space, dash, dot, parentheses)"
    )


def phone_template(**settings: Any) -> PhoneTemplate:
    template = build_template("phone", {"type": "phone", **settings})
    assert isinstance(template, PhoneTemplate)
    return template


def make_token(template: PhoneTemplate, value: str, seed: int) -> str:
    split = template.split(value, Side.VALUE)
    generator = random.Random(seed)
    return template.join(split.layout, [generator.randrange(r) for r in split.radices], Side.TOKEN)


def assert_message_hides(error: InvalidValue, text: str) -> None:
    message = str(error)
    for start in range(len(text) - 3):
        assert text[start : start + 4] not in message


@pytest.mark.parametrize(
    ("value", "code_length"),
    [
        ("+1 (415) 555-2671", 1),
        ("+44 20 7946 0958", 2),
        ("+49.30.1234567", 2),
        ("+353 1 234 5678", 3),
        ("+7 495 123-45-67", 1),
        ("+971 4 123 4567", 3),
        ("+44 (0)20 7946 0958", 2),
    ],
)
def test_calling_code_and_separators_kept(value: str, code_length: int) -> None:
    template = phone_template()
    split = template.split(value, Side.VALUE)
    digits = split.canonical[1:]
    for seed in range(5):
        token = make_token(template, value, seed)
        assert [c for c in token if c not in "0123456789"] == [
            c for c in value if c not in "0123456789"
        ]
        assert (
            token.replace(" ", "").replace("-", "").replace(".", "")[: 1 + code_length]
            == value.replace(" ", "").replace("-", "").replace(".", "")[: 1 + code_length]
        )
    assert len(split.body) == len(digits) - code_length
    assert split.canonical.startswith("+")


def test_keep_last_digits() -> None:
    template = phone_template(keep_last=2)
    token = make_token(template, "+44 20 7946 0958", 1)
    assert token.endswith("58")
    assert token.startswith("+44 ")


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("14155552671", 'must start with "+" and the country calling code'),
        ("+1415555", "must have 8 to 15 digits after the +"),
        ("+1234567890123456", "must have 8 to 15 digits after the +"),
        ("+0 415 555 2671", "does not start with an assigned country calling code"),
        ("+28 415 555 2671", "does not start with an assigned country calling code"),
        ("+1  415 555 2671", "separators must be single characters between digits"),
        ("+ 1 415 555 2671", "separators must be single characters between digits"),
        ("+1 415 555 2671-", "must end with a digit"),
        ("+1 (415 555 2671", "parentheses must enclose digits only"),
        ("+1 (415)) 555 2671", "parentheses must enclose one group of digits, not nested"),
        ("+1 ((415)) 555 2671", "parentheses must enclose one group of digits, not nested"),
        ("+1 (4152) 555 (267", "has an unclosed parenthesis"),
        (
            "+1 415 555 2671 ext 5",
            not_allowed(17),
        ),
        (
            "+1/415/555/2671",
            not_allowed(3),
        ),
        (
            "+1 415 555 267\uff11",
            not_allowed(15),
        ),
        (
            "+1 415 555 267\u0661",
            not_allowed(15),
        ),
        ("\uff0b1 415 555 2671", 'must start with "+" and the country calling code'),
    ],
)
def test_bad_values_rejected(text: str, rule: str) -> None:
    for side in (Side.VALUE, Side.TOKEN):
        with pytest.raises(InvalidValue) as caught:
            phone_template().split(text, side)
        assert caught.value.field == side.value
        assert caught.value.rule == rule
        assert_message_hides(caught.value, text)


def test_vaultless_short_subscriber_rejected() -> None:
    # 3-digit calling code and 5 subscriber digits: a domain of 10**5.
    with pytest.raises(InvalidValue, match="too few subscriber digits for vaultless"):
        phone_template().split("+354 12345", Side.VALUE)
    vaulted = phone_template(mode="vaulted")
    assert len(vaulted.split("+354 12345", Side.VALUE).body) == 5


def test_no_subscriber_digit_left_rejected() -> None:
    with pytest.raises(InvalidValue, match="no subscriber digits left"):
        phone_template(mode="vaulted", keep_last=5).split("+354 12345", Side.VALUE)


def test_check_domain_rejects_large_keep_last() -> None:
    phone_template(keep_last=8).check_domain()
    with pytest.raises(ConfigError, match="keep_last \\(9\\) leaves at most 5 digits"):
        phone_template(keep_last=9).check_domain()
    phone_template(keep_last=9, mode="vaulted").check_domain()


def test_calling_codes_are_prefix_free() -> None:
    for code in CALLING_CODES:
        for other in CALLING_CODES:
            assert code == other or not other.startswith(code)
    assert {"1", "7", "20", "44", "211", "212", "998"} <= CALLING_CODES
    assert "379" not in CALLING_CODES


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("+1 (415) 555-2671", "+1 (***) ***-**71"),
        ("+44 20 7946 0958", "+44 ** **** **58"),
        ("+353 1 234 5678", "+353 * *** **78"),
    ],
)
def test_mask(value: str, masked: str) -> None:
    assert phone_template().mask(value) == masked


@st.composite
def phone_numbers(draw: st.DrawFn) -> str:
    code = draw(st.sampled_from(sorted(CALLING_CODES)))
    rest_length = draw(st.integers(6 + 2, 15 - len(code)))
    rest = draw(st.text(alphabet="0123456789", min_size=rest_length, max_size=rest_length))
    separator = draw(st.sampled_from(["", " ", "-", "."]))
    groups = [rest[i : i + 3] for i in range(0, len(rest), 3)]
    return f"+{code}{separator}{separator.join(groups)}"


@given(value=phone_numbers(), keep_last=st.integers(0, 2), seed=st.integers(0, 2**32))
def test_property_round_trip(value: str, keep_last: int, seed: int) -> None:
    template = phone_template(keep_last=keep_last)
    value_split = template.split(value, Side.VALUE)
    token = make_token(template, value, seed)
    token_split = template.split(token, Side.TOKEN)

    assert template.join(value_split.layout, value_split.body, Side.VALUE) == value
    assert template.join(token_split.layout, value_split.body, Side.VALUE) == value
    assert token_split.context == value_split.context
    assert token_split.layout == value_split.layout
    if keep_last:
        assert token[-keep_last:] == value[-keep_last:]

"""SSN template: layouts, assignment rules on values only, keep_last4 and mask."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vault.errors import ConfigError, InvalidValue
from vault.formats import Side, build_template, load_templates
from vault.formats.ssn import SsnTemplate


def dashed_not_allowed(position: int) -> str:
    return (
        f"character at position {position} is not allowed (allowed: "
        "digits, dashes after the 3rd and 5th digits)"
    )


def ssn_template(**settings: Any) -> SsnTemplate:
    template = build_template("ssn", {"type": "ssn", **settings})
    assert isinstance(template, SsnTemplate)
    return template


def assert_message_hides(error: InvalidValue, text: str) -> None:
    message = str(error)
    for start in range(len(text) - 3):
        assert text[start : start + 4] not in message


@pytest.mark.parametrize("value", ["123-45-6789", "123456789", "665-01-0001", "899-99-9999"])
def test_round_trip_keeps_layout(value: str) -> None:
    template = ssn_template()
    split = template.split(value, Side.VALUE)
    token = template.join(
        split.layout, [random.Random(1).randrange(10) for _ in split.body], Side.TOKEN
    )

    assert template.join(split.layout, split.body, Side.VALUE) == value
    assert split.canonical == value.replace("-", "")
    assert len(split.body) == 9
    assert [i for i, c in enumerate(token) if c == "-"] == [
        i for i, c in enumerate(value) if c == "-"
    ]


@pytest.mark.parametrize(
    ("text", "rule", "distinctive"),
    [
        ("000-27-3458", "area number (first 3 digits) must not be 000, 666 or 900-999", "27-3458"),
        ("666-27-3458", "area number (first 3 digits) must not be 000, 666 or 900-999", "27-3458"),
        ("901-27-3458", "area number (first 3 digits) must not be 000, 666 or 900-999", "27-3458"),
        ("999273458", "area number (first 3 digits) must not be 000, 666 or 900-999", "273458"),
        ("123-00-4567", "group number (digits 4-5) must not be 00", "4567"),
        ("123-45-0000", "serial number (last 4 digits) must not be 0000", "123-45"),
    ],
)
def test_assignment_rules_apply_to_values_only(text: str, rule: str, distinctive: str) -> None:
    # The rule names the forbidden numbers, so only the rest of the input is checked for.
    template = ssn_template()
    with pytest.raises(InvalidValue) as caught:
        template.split(text, Side.VALUE)

    assert caught.value.rule == rule
    assert distinctive not in str(caught.value)
    assert template.split(text, Side.TOKEN).canonical == text.replace("-", "")


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (
            "12-345-6789",
            dashed_not_allowed(3),
        ),
        (
            "123 45 6789",
            dashed_not_allowed(4),
        ),
        ("123-456789", "must be 9 digits, either without separators or as AAA-GG-SSSS with dashes"),
        ("12345678", "must be 9 digits, either without separators or as AAA-GG-SSSS with dashes"),
        ("1234567890", "must be 9 digits, either without separators or as AAA-GG-SSSS with dashes"),
        (
            "123-45-678\uff19",
            dashed_not_allowed(11),
        ),
        ("1234567\u0668\u0669", "character at position 8 is not allowed (allowed: digits)"),
        ("123-45-67890", "must be at most 11 characters long"),
        ("", "must not be empty"),
    ],
)
def test_bad_shapes_rejected(text: str, rule: str) -> None:
    for side in (Side.VALUE, Side.TOKEN):
        with pytest.raises(InvalidValue) as caught:
            ssn_template().split(text, side)
        assert caught.value.field == side.value
        assert caught.value.rule == rule
        assert_message_hides(caught.value, text)


def test_keep_last4_vaultless_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        ssn_template(keep_last4=True).check_domain()

    message = str(caught.value)
    assert message.startswith("template 'ssn': keep_last4 leaves 5 digits")
    assert "a domain of 100,000" in message
    assert 'mode = "vaulted"' in message


def test_keep_last4_vaulted_accepted() -> None:
    templates = load_templates({"ssn": {"type": "ssn", "mode": "vaulted", "keep_last4": True}})
    template = templates["ssn"]
    split = template.split("123-45-6789", Side.VALUE)
    token = template.join(split.layout, [0] * 5, Side.TOKEN)

    assert len(split.body) == 5
    assert token == "000-00-6789"


def test_default_domain_accepted() -> None:
    ssn_template().check_domain()


@pytest.mark.parametrize(
    ("value", "masked"), [("123-45-6789", "***-**-6789"), ("123456789", "*****6789")]
)
def test_mask(value: str, masked: str) -> None:
    assert ssn_template().mask(value) == masked


def test_bad_settings_rejected() -> None:
    with pytest.raises(ConfigError, match="keep_last4 must be true or false"):
        ssn_template(keep_last4=1)
    with pytest.raises(ConfigError, match='convergent applies only to mode = "vaulted"'):
        ssn_template(convergent=True)


@st.composite
def ssns(draw: st.DrawFn) -> str:
    area = draw(st.integers(1, 899).filter(lambda n: n != 666))
    group = draw(st.integers(1, 99))
    serial = draw(st.integers(1, 9999))
    dashed = draw(st.booleans())
    return (
        f"{area:03d}-{group:02d}-{serial:04d}" if dashed else f"{area:03d}{group:02d}{serial:04d}"
    )


@given(value=ssns(), keep_last4=st.booleans(), seed=st.integers(0, 2**32))
def test_property_round_trip(value: str, keep_last4: bool, seed: int) -> None:
    template = ssn_template(mode="vaulted", keep_last4=keep_last4)
    value_split = template.split(value, Side.VALUE)
    generator = random.Random(seed)
    token = template.join(
        value_split.layout, [generator.randrange(10) for _ in value_split.body], Side.TOKEN
    )
    token_split = template.split(token, Side.TOKEN)

    assert template.join(value_split.layout, value_split.body, Side.VALUE) == value
    assert template.join(token_split.layout, value_split.body, Side.VALUE) == value
    assert token_split.context == value_split.context
    if keep_last4:
        assert token[-4:] == value[-4:]

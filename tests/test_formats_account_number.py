"""Account number template: digits only, kept suffix, keep_fewer and mask."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vault.errors import ConfigError, InvalidValue
from vault.formats import Side, build_template
from vault.formats.account_number import AccountNumberTemplate
from vault.fpe import MIN_DOMAIN


def account_template(**settings: Any) -> AccountNumberTemplate:
    template = build_template("account", {"type": "account_number", **settings})
    assert isinstance(template, AccountNumberTemplate)
    return template


def assert_message_hides(error: InvalidValue, text: str) -> None:
    message = str(error)
    for start in range(len(text) - 3):
        assert text[start : start + 4] not in message


def test_last_digits_kept() -> None:
    template = account_template(min_length=10)
    split = template.split("9876543210", Side.VALUE)
    token = template.join(split.layout, [0] * len(split.body), Side.TOKEN)

    assert token == "0000003210"
    assert template.join(split.layout, split.body, Side.VALUE) == "9876543210"


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("12345", "must be 6 to 17 digits"),
        ("123456789012345678", "must be at most 17 characters long"),
        ("12345-6789", "character at position 6 is not allowed (allowed: digits)"),
        ("98765\uff14321", "character at position 6 is not allowed (allowed: digits)"),
        ("98765\u06f4321", "character at position 6 is not allowed (allowed: digits)"),
        ("9876 54321", "character at position 5 is not allowed (allowed: digits)"),
    ],
)
def test_bad_values_rejected(text: str, rule: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        account_template().split(text, Side.VALUE)
    assert caught.value.rule == rule
    assert_message_hides(caught.value, text)


def test_domain_rejects_short_lengths() -> None:
    with pytest.raises(ConfigError) as caught:
        account_template().check_domain()

    message = str(caught.value)
    assert message.startswith("template 'account': a 6-digit account number keeps 4")
    assert "a domain of 100" in message
    assert "Narrow min_length to 10" in message
    assert 'short_domain = "keep_fewer"' in message


def test_keep_fewer_reaches_minimum() -> None:
    template = account_template(short_domain="keep_fewer")
    template.check_domain()
    for length in range(6, 18):
        kept = template.kept_last_for_length(length)
        assert 10 ** (length - kept) >= MIN_DOMAIN
        assert kept == min(4, length - 6)


def test_keep_fewer_cannot_fix_below_six_digits() -> None:
    with pytest.raises(ConfigError, match="a 5-digit account number keeps 0 trailing digits"):
        account_template(short_domain="keep_fewer", min_length=5).check_domain()


def test_vaulted_has_no_floor() -> None:
    template = account_template(mode="vaulted", min_length=5)
    template.check_domain()
    assert len(template.split("12345", Side.VALUE).body) == 1


def test_keep_last_must_leave_a_digit() -> None:
    with pytest.raises(ConfigError, match="keep_last \\(6\\) must be less than min_length \\(6\\)"):
        account_template(keep_last=6, mode="vaulted")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"min_length": 0}, "min_length must be an integer from 1 to 34"),
        ({"max_length": 35}, "max_length must be an integer from 1 to 34"),
        ({"min_length": 12, "max_length": 10}, "min_length must not be greater than max_length"),
        ({"short_domain": "keep_fewer", "mode": "vaulted"}, 'applies only to mode = "vaultless"'),
        ({"keep_first": 2}, "unknown key 'keep_first'"),
    ],
)
def test_bad_settings_rejected(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        account_template(**settings)
    assert message in str(caught.value)
    assert str(caught.value).startswith("template 'account': ")


@pytest.mark.parametrize(
    ("value", "masked"),
    [("12345678901234", "**********1234"), ("12345678", "****5678"), ("123456", "****56")],
)
def test_mask(value: str, masked: str) -> None:
    assert account_template().mask(value) == masked


@given(
    value=st.text(alphabet="0123456789", min_size=10, max_size=17),
    seed=st.integers(0, 2**32),
)
def test_property_round_trip(value: str, seed: int) -> None:
    template = account_template(min_length=10)
    value_split = template.split(value, Side.VALUE)
    generator = random.Random(seed)
    token = template.join(
        value_split.layout, [generator.randrange(10) for _ in value_split.body], Side.TOKEN
    )
    token_split = template.split(token, Side.TOKEN)

    assert template.join(value_split.layout, value_split.body, Side.VALUE) == value
    assert token[-4:] == value[-4:]
    assert len(token) == len(value)
    assert token_split.context == value_split.context

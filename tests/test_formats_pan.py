"""PAN template: every published test card, Luhn handling, keep_fewer and mask."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vault.errors import ConfigError, InvalidValue
from vault.formats import Side, build_template, load_templates
from vault.formats.luhn import is_luhn_valid, luhn_digit_at
from vault.formats.pan import PanTemplate
from vault.fpe import MIN_DOMAIN

DATA = Path(__file__).parent / "data"
TEST_PANS = [row["pan"] for row in csv.DictReader((DATA / "test-pans.csv").open())]


def pan_template(**settings: Any) -> PanTemplate:
    template = build_template("cards", {"type": "pan", **settings})
    assert isinstance(template, PanTemplate)
    return template


def digits_of(text: str) -> str:
    return "".join(char for char in text if char in "0123456789")


def make_token(template: PanTemplate, value: str, seed: int) -> str:
    split = template.split(value, Side.VALUE)
    generator = random.Random(seed)
    body = [generator.randrange(radix) for radix in split.radices]
    return template.join(split.layout, body, Side.TOKEN)


def assert_message_hides(error: InvalidValue, text: str) -> None:
    message = str(error)
    for start in range(len(text) - 3):
        assert text[start : start + 4] not in message


CONFIGURATIONS = [
    {"mode": "vaulted", "luhn": "invalid"},
    {"mode": "vaulted", "luhn": "valid"},
    {"mode": "vaulted", "luhn": "any"},
    {"mode": "vaultless", "luhn": "invalid", "short_domain": "keep_fewer"},
    {"mode": "vaultless", "luhn": "valid", "short_domain": "keep_fewer"},
    {"mode": "vaultless", "luhn": "any", "short_domain": "keep_fewer"},
]


def test_test_pans_file_is_valid() -> None:
    assert len(TEST_PANS) >= 15
    for pan in TEST_PANS:
        assert is_luhn_valid(pan)


@pytest.mark.parametrize("settings", CONFIGURATIONS, ids=lambda s: f"{s['mode']}-{s['luhn']}")
@pytest.mark.parametrize("pan", TEST_PANS)
def test_every_test_pan_tokenizes(pan: str, settings: dict[str, Any]) -> None:
    template = pan_template(**settings)
    plan = template.plan_for_length(len(pan))

    for seed in range(5):
        token = make_token(template, pan, seed)
        token_split = template.split(token, Side.TOKEN)
        value_split = template.split(pan, Side.VALUE)

        assert len(token) == len(pan)
        assert token[: plan.first] == pan[: plan.first]
        assert token[len(pan) - plan.last :] == pan[len(pan) - plan.last :]
        assert token_split.context == value_split.context
        assert token_split.radices == value_split.radices
        if settings["luhn"] == "valid":
            assert is_luhn_valid(token)
        if settings["luhn"] == "invalid":
            assert not is_luhn_valid(token)
        assert template.join(token_split.layout, value_split.body, Side.VALUE) == pan


def test_invalid_luhn_token_uses_next_digit() -> None:
    template = pan_template(mode="vaulted")
    token = make_token(template, "4111111111111111", 3)
    index = 16 - 4 - 1

    assert int(token[index]) == (luhn_digit_at(token, index) + 1) % 10


def test_separators_keep_positions_in_token() -> None:
    template = pan_template(mode="vaulted")
    for value in ("4111 1111 1111 1111", "4111-1111-1111-1111", "3782 822463 10005"):
        token = make_token(template, value, 11)
        separators = [i for i, char in enumerate(value) if char in " -"]

        assert [i for i, char in enumerate(token) if char in " -"] == separators
        assert all(token[i] == value[i] for i in separators)
        assert not is_luhn_valid(digits_of(token))


def test_separators_do_not_change_context() -> None:
    template = pan_template(short_domain="keep_fewer")
    plain = template.split("4111111111111111", Side.VALUE)
    spaced = template.split("4111 1111 1111 1111", Side.VALUE)
    dashed = template.split("4111-1111-1111-1111", Side.VALUE)

    assert plain.context == spaced.context == dashed.context
    assert plain.body == spaced.body == dashed.body
    assert plain.canonical == spaced.canonical == "4111111111111111"


def test_luhn_any_encrypts_whole_middle() -> None:
    template = pan_template(luhn="any")
    split = template.split("4111111111111111", Side.VALUE)

    assert len(split.body) == 6
    assert split.layout.derived == ()


def test_forced_luhn_derives_one_digit() -> None:
    template = pan_template(mode="vaulted", luhn="valid")
    split = template.split("4111 1111 1111 1111", Side.VALUE)

    assert len(split.body) == 5
    assert split.layout.derived == (13,)


def test_value_side_recomputes_check_digit() -> None:
    template = pan_template(mode="vaulted")
    split = template.split("4111111111111111", Side.VALUE)
    for seed in range(10):
        body = [random.Random(seed).randrange(10) for _ in split.radices]
        assert is_luhn_valid(template.join(split.layout, body, Side.VALUE))


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("4111111111111112", "fails the Luhn check"),
        ("41111111111", "must be 12 to 19 digits after removing spaces and dashes"),
        ("41111111111111111111", "must be 12 to 19 digits after removing spaces and dashes"),
        ("4111 1111-1111 1111", "must use one kind of separator, not a mix"),
        ("4111  1111 1111 1111", "separators must be single characters between digits"),
        ("-4111111111111111", "must not start or end with a separator"),
        ("4111111111111111-", "must not start or end with a separator"),
        (
            "4111_1111_1111_1111",
            "character at position 5 is not allowed (allowed: digits, space, dash)",
        ),
        (
            "4111111111111111x",
            "character at position 17 is not allowed (allowed: digits, space, dash)",
        ),
        (
            "４１１１１１１１１１１１１１１１",
            "character at position 1 is not allowed (allowed: digits, space, dash)",
        ),
        ("", "must not be empty"),
        (" 4111111111111111", "must not start or end with whitespace"),
    ],
)
def test_bad_values_rejected(text: str, rule: str) -> None:
    template = pan_template()
    with pytest.raises(InvalidValue) as caught:
        template.split(text, Side.VALUE)

    assert caught.value.field == "value"
    assert caught.value.rule == rule
    assert_message_hides(caught.value, text)


def test_overlong_text_rejected_before_parsing() -> None:
    with pytest.raises(InvalidValue, match="at most 37 characters"):
        pan_template().split("4" * 38, Side.VALUE)


def test_token_with_wrong_check_digit_rejected() -> None:
    invalid = pan_template(mode="vaulted")
    valid = pan_template(mode="vaulted", luhn="valid")

    with pytest.raises(InvalidValue) as caught:
        invalid.split("4111111111111111", Side.TOKEN)
    assert caught.value.field == "token"
    assert "1111" not in str(caught.value)
    with pytest.raises(InvalidValue, match="fails the Luhn check"):
        valid.split("4111111111111112", Side.TOKEN)


def test_token_side_accepts_any_digits_with_luhn_any() -> None:
    template = pan_template(luhn="any")
    assert template.split("4111111111111112", Side.TOKEN).canonical == "4111111111111112"


def test_configured_lengths_enforced() -> None:
    template = pan_template(min_length=16, max_length=16, mode="vaulted")
    with pytest.raises(InvalidValue, match="must be 16 to 16 digits"):
        template.split("378282246310005", Side.VALUE)


def test_domain_rejects_forced_luhn_16_digits() -> None:
    template = pan_template(min_length=16, max_length=16)
    with pytest.raises(ConfigError) as caught:
        template.check_domain()

    message = str(caught.value)
    assert message.startswith("template 'cards': a 16-digit PAN")
    assert "leaving 5 digits to encrypt (a domain of 100,000" in message
    assert "Keep fewer digits" in message
    assert 'short_domain = "keep_fewer"' in message
    assert 'mode = "vaulted"' in message


def test_domain_error_suggests_min_length() -> None:
    with pytest.raises(ConfigError) as caught:
        pan_template().check_domain()

    message = str(caught.value)
    assert "a 12-digit PAN keeps 6 leading and 4 trailing digits" in message
    assert "Narrow min_length to 17" in message


def test_domain_names_shortest_failing_length() -> None:
    with pytest.raises(ConfigError, match="a 12-digit PAN"):
        pan_template().check_domain()
    with pytest.raises(ConfigError, match="a 13-digit PAN"):
        pan_template(luhn="any", min_length=13, keep_first=8).check_domain()


def test_domain_accepts_exact_minimum() -> None:
    template = pan_template(min_length=16, max_length=16, luhn="any")
    template.check_domain()
    assert 10 ** len(template.split("4111111111111111", Side.VALUE).body) == MIN_DOMAIN


def test_domain_rejects_short_cards_keep_8_4() -> None:
    with pytest.raises(ConfigError, match="a 15-digit PAN"):
        pan_template(keep_first=8, luhn="any", min_length=15).check_domain()


def test_load_templates_runs_domain_check() -> None:
    with pytest.raises(ConfigError, match="template 'strict'"):
        load_templates({"strict": {"type": "pan"}})


@pytest.mark.parametrize("luhn", ["invalid", "valid", "any"])
@pytest.mark.parametrize("keep_last", range(5))
@pytest.mark.parametrize("keep_first", range(9))
def test_keep_fewer_reaches_minimum(keep_first: int, keep_last: int, luhn: str) -> None:
    template = pan_template(
        keep_first=keep_first, keep_last=keep_last, luhn=luhn, short_domain="keep_fewer"
    )
    template.check_domain()
    for length in range(12, 20):
        plan = template.plan_for_length(length)
        assert 10**plan.body >= MIN_DOMAIN
        assert plan.last == keep_last
        assert plan.first <= keep_first
        assert plan.first + plan.last + plan.derived + plan.body == length
        # Fewer digits are kept only where the configured ones leave too small a domain.
        if plan.first < keep_first:
            assert plan.body == 6


def test_keep_fewer_table_for_shipped_settings() -> None:
    template = pan_template(short_domain="keep_fewer")
    firsts = [template.plan_for_length(length).first for length in range(12, 20)]
    bodies = [template.plan_for_length(length).body for length in range(12, 20)]

    assert firsts == [1, 2, 3, 4, 5, 6, 6, 6]
    assert bodies == [6, 6, 6, 6, 6, 6, 7, 8]


def test_keep_fewer_context_records_kept_digits() -> None:
    template = pan_template(short_domain="keep_fewer")
    value = template.split("4222222222222", Side.VALUE)
    token = template.split(make_token(template, "4222222222222", 5), Side.TOKEN)
    kept_field = value.context.split(b"\x1f")[2]

    assert value.context == token.context
    # 13 digits keep 2 leading digits (not 6) and the last 4, as canonical index:code point.
    assert kept_field == b"0:34,1:32,9:32,10:32,11:32,12:32"


def test_vaulted_keeps_configured_digits() -> None:
    template = pan_template(mode="vaulted")
    template.check_domain()
    assert template.plan_for_length(12).first == 6
    assert template.plan_for_length(12).body == 1


def test_vaulted_with_no_digit_left_rejected() -> None:
    with pytest.raises(ConfigError, match="leave no digit to tokenize in 12-digit PANs"):
        pan_template(mode="vaulted", keep_first=8)


def test_keep_fewer_on_vaulted_rejected() -> None:
    with pytest.raises(ConfigError, match='applies only to mode = "vaultless"'):
        pan_template(mode="vaulted", short_domain="keep_fewer")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"keep_first": 9}, "template 'cards': keep_first must be an integer from 0 to 8"),
        ({"keep_first": True}, "template 'cards': keep_first must be an integer from 0 to 8"),
        ({"keep_last": 5}, "template 'cards': keep_last must be an integer from 0 to 4"),
        ({"keep_last": "4"}, "template 'cards': keep_last must be an integer from 0 to 4"),
        ({"min_length": 11}, "template 'cards': min_length must be an integer from 12 to 19"),
        ({"max_length": 20}, "template 'cards': max_length must be an integer from 12 to 19"),
        ({"min_length": 16, "max_length": 15}, "min_length must not be greater than max_length"),
        ({"luhn": "maybe"}, 'luhn must be one of "invalid", "valid", "any"'),
        ({"short_domain": "shrink"}, 'short_domain must be one of "reject", "keep_fewer"'),
        ({"keep_frist": 6}, "unknown key 'keep_frist'"),
    ],
)
def test_bad_settings_rejected(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        pan_template(**settings)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("4111111111111111", "411111******1111"),
        ("4111 1111 1111 1111", "4111 11** **** 1111"),
        ("3782-822463-10005", "3782-82****-*0005"),
        ("6205500000000000004", "620550*********0004"),
        ("4222222222222", "42222****2222"),
        ("501800000009", "5018****0009"),
        ("4111111111111112", "411111******1112"),
    ],
)
def test_mask(value: str, masked: str) -> None:
    assert pan_template().mask(value) == masked


def test_mask_rejects_non_pan() -> None:
    with pytest.raises(InvalidValue):
        pan_template().mask("4111 1111 1111 111x")


@st.composite
def pans(draw: st.DrawFn) -> str:
    length = draw(st.integers(min_value=12, max_value=19))
    digits = draw(st.text(alphabet="0123456789", min_size=length - 1, max_size=length - 1))
    digits += "0"
    digits = digits[:-1] + str(luhn_digit_at(digits, length - 1))
    separator = draw(st.sampled_from(["", " ", "-"]))
    if not separator:
        return digits
    groups = [digits[i : i + 4] for i in range(0, length, 4)]
    return separator.join(groups)


@given(
    value=pans(),
    settings=st.sampled_from(CONFIGURATIONS),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_property_round_trip_and_kept(value: str, settings: dict[str, Any], seed: int) -> None:
    template = pan_template(**settings)
    value_split = template.split(value, Side.VALUE)
    token = make_token(template, value, seed)
    token_split = template.split(token, Side.TOKEN)
    plan = template.plan_for_length(len(value_split.canonical))
    canonical_token = digits_of(token)

    assert template.join(value_split.layout, value_split.body, Side.VALUE) == value
    assert template.join(token_split.layout, value_split.body, Side.VALUE) == value
    assert token_split.context == value_split.context
    assert token_split.layout == value_split.layout
    assert canonical_token[: plan.first] == value_split.canonical[: plan.first]
    assert (
        canonical_token[len(canonical_token) - plan.last :]
        == value_split.canonical[len(canonical_token) - plan.last :]
    )
    assert [c for c in token if c in " -"] == [c for c in value if c in " -"]
    if settings["luhn"] == "invalid":
        assert not is_luhn_valid(canonical_token)
    if settings["luhn"] == "valid":
        assert is_luhn_valid(canonical_token)

"""Contract tests that every template type must pass, run over the shipped templates."""

from __future__ import annotations

import random

import pytest

from vault.errors import InvalidValue
from vault.formats import Side, Template, build_template, default_templates

DEFAULTS = default_templates()

# Valid values per shipped template, with and without separators where the type allows them.
SAMPLES: dict[str, list[str]] = {
    "pan": ["4111111111111111", "4111 1111 1111 1111", "3782-822463-10005", "4222222222222"],
    "pan_fpe": ["4111111111111111", "5555-5555-5555-4444", "6205500000000000004"],
    "iban": ["GB29NWBK60161331926819", "GB29 NWBK 6016 1331 9268 19", "NO9386011117947"],
    "ssn": ["123-45-6789", "078051120", "899-99-9999"],
    "account_number": ["0123456789", "12345678901234567"],
    "email": ["jane.doe+news@example.com", "a@b.co", "X_Y-9@mail.example.org"],
    "phone": ["+14155552671", "+1 (415) 555-2671", "+44 20 7946 0958", "+49.30.1234567"],
    "name": ["Jane Doe", "Mary-Jane O'Neil", "Łukasz Müller-Żak", "J. R. R. Tolkien", "Li"],
}

# One look-alike substitution per template: full-width, Arabic-Indic and Cyrillic characters
# that str.isdigit() or str.isalpha() would accept.
LOOKALIKES: dict[str, list[str]] = {
    "pan": ["4111111111111１11", "4111111111111\u066411", "4111 1111 1111 111\u0661"],
    "pan_fpe": ["４111111111111111"],
    "iban": [
        "GB29NWBK6016133192681\uff19",
        "GB29NWB\u041a60161331926819",
        "GB29NWBK6016133192681\u0669",
    ],
    "ssn": ["123-45-678\uff19", "12345678\u0669"],
    "account_number": ["012345678\uff19", "01234567\u0668\u0669"],
    "email": ["j\u0430ne.doe@example.com", "jane.doe@ex\u0430mple.com", "jane\uff20example.com"],
    "phone": ["+1415555267\uff11", "+1 415 555 267\u0661"],
    "name": ["J\u0430ne Doe", "Jane D\u043ee", "Jane Doe\uff21"],
}


def assert_message_hides(error: InvalidValue, text: str) -> None:
    """Fail if the error message repeats any 4-character run of the rejected text."""
    message = str(error)
    run = min(4, len(text))
    if run < 3:
        return
    for start in range(len(text) - run + 1):
        piece = text[start : start + run]
        assert piece not in message, f"message repeats input run {piece!r}"


def random_body(radices: tuple[int, ...], seed: int) -> list[int]:
    generator = random.Random(seed)
    return [generator.randrange(radix) for radix in radices]


@pytest.mark.parametrize(
    ("template_name", "value"),
    [(name, value) for name, values in SAMPLES.items() for value in values],
)
def test_value_round_trip(template_name: str, value: str) -> None:
    template = DEFAULTS[template_name]
    split = template.split(value, Side.VALUE)

    assert template.join(split.layout, split.body, Side.VALUE) == value
    assert len(split.body) == len(split.radices) == len(split.layout.body_positions)
    assert all(
        0 <= numeral < radix for numeral, radix in zip(split.body, split.radices, strict=True)
    )


@pytest.mark.parametrize(
    ("template_name", "value"),
    [(name, value) for name, values in SAMPLES.items() for value in values],
)
def test_token_split_agrees_with_value(template_name: str, value: str) -> None:
    template = DEFAULTS[template_name]
    value_split = template.split(value, Side.VALUE)

    for seed in range(20):
        body = random_body(value_split.radices, seed)
        token = template.join(value_split.layout, body, Side.TOKEN)
        token_split = template.split(token, Side.TOKEN)

        assert len(token) == len(value)
        assert token_split.context == value_split.context
        assert token_split.radices == value_split.radices
        assert token_split.layout == value_split.layout
        assert list(token_split.body) == body
        assert template.join(token_split.layout, value_split.body, Side.VALUE) == value


@pytest.mark.parametrize(
    ("template_name", "value"),
    [(name, value) for name, values in SAMPLES.items() for value in values],
)
def test_vaulted_rebuild_from_canonical_value(template_name: str, value: str) -> None:
    template = DEFAULTS[template_name]
    value_split = template.split(value, Side.VALUE)
    token = template.join(value_split.layout, random_body(value_split.radices, 7), Side.TOKEN)

    token_layout = template.split(token, Side.TOKEN).layout
    stored_body = template.split(value_split.canonical, Side.VALUE).body

    assert template.join(token_layout, stored_body, Side.VALUE) == value


@pytest.mark.parametrize(
    ("template_name", "value"),
    [(name, value) for name, values in LOOKALIKES.items() for value in values],
)
def test_lookalike_characters_rejected(template_name: str, value: str) -> None:
    template = DEFAULTS[template_name]
    for side in (Side.VALUE, Side.TOKEN):
        with pytest.raises(InvalidValue) as caught:
            template.split(value, side)
        assert caught.value.field == side.value
        assert_message_hides(caught.value, value)


@pytest.mark.parametrize("template_name", sorted(SAMPLES))
def test_empty_and_padded_rejected(template_name: str) -> None:
    template = DEFAULTS[template_name]
    sample = SAMPLES[template_name][0]
    for text, rule in (
        ("", "must not be empty"),
        (" " + sample, "must not start or end with whitespace"),
        (sample + "\n", "must not start or end with whitespace"),
    ):
        with pytest.raises(InvalidValue) as caught:
            template.split(text, Side.VALUE)
        assert caught.value.rule == rule
        assert_message_hides(caught.value, text)


@pytest.mark.parametrize("template_name", sorted(SAMPLES))
def test_overlong_input_rejected(template_name: str) -> None:
    template = DEFAULTS[template_name]
    text = SAMPLES[template_name][0] * 40
    with pytest.raises(InvalidValue) as caught:
        template.split(text, Side.VALUE)
    assert_message_hides(caught.value, text)


@pytest.mark.parametrize("template_name", sorted(SAMPLES))
def test_join_rejects_wrong_body(template_name: str) -> None:
    template = DEFAULTS[template_name]
    split = template.split(SAMPLES[template_name][0], Side.VALUE)

    with pytest.raises(ValueError, match="numerals"):
        template.join(split.layout, list(split.body) + [0], Side.TOKEN)
    too_big = list(split.body)
    too_big[0] = split.radices[0]
    with pytest.raises(ValueError, match="radix"):
        template.join(split.layout, too_big, Side.TOKEN)


def test_context_names_the_type() -> None:
    pan = DEFAULTS["pan_fpe"].split("4111111111111111", Side.VALUE)
    account = build_template(
        "digits", {"type": "account_number", "keep_last": 0, "max_length": 19}
    ).split("4111111111111111", Side.VALUE)

    assert pan.context != account.context
    assert pan.context.startswith(b"pan\x1f16\x1f")


def test_default_templates_cover_every_name() -> None:
    assert sorted(DEFAULTS) == sorted(SAMPLES)
    for name, template in DEFAULTS.items():
        assert isinstance(template, Template)
        assert template.name == name

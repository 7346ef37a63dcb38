"""E-mail template: accepted subset, case classes, kept domain, per-item domain and mask."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vault.errors import ConfigError, InvalidValue
from vault.formats import Side, build_template
from vault.formats.email import EmailTemplate

LETTERS_LOWER = "abcdefghijklmnopqrstuvwxyz"
LETTERS_UPPER = LETTERS_LOWER.upper()
DIGITS = "0123456789"


def local_not_allowed(position: int) -> str:
    return (
        f"character at position {position} is not allowed (allowed: "
        "A-Z, a-z, 0-9, '.', '_', '+', '-' before the @)"
    )


def domain_not_allowed(position: int) -> str:
    return (
        f"character at position {position} is not allowed (allowed: "
        "A-Z, a-z, 0-9, '-', '.' after the @)"
    )


def email_template(**settings: Any) -> EmailTemplate:
    template = build_template("mail", {"type": "email", "mode": "vaulted", **settings})
    assert isinstance(template, EmailTemplate)
    return template


def make_token(template: EmailTemplate, value: str, seed: int) -> str:
    split = template.split(value, Side.VALUE)
    generator = random.Random(seed)
    return template.join(split.layout, [generator.randrange(r) for r in split.radices], Side.TOKEN)


def character_class(char: str) -> str:
    if char in LETTERS_LOWER:
        return "lower"
    if char in LETTERS_UPPER:
        return "upper"
    if char in DIGITS:
        return "digit"
    return char


def assert_message_hides(error: InvalidValue, text: str) -> None:
    message = str(error)
    for start in range(len(text) - 3):
        assert text[start : start + 4] not in message


def test_token_keeps_classes_and_domain() -> None:
    template = email_template()
    value = "Jane.Doe_42+News@Example.co.uk"
    for seed in range(10):
        token = make_token(template, value, seed)
        local, domain = token.split("@")

        assert domain == "Example.co.uk"
        assert [character_class(c) for c in local] == [
            character_class(c) for c in value.split("@")[0]
        ]


def test_radices_per_class() -> None:
    split = email_template().split("aB3.x@example.com", Side.VALUE)
    assert split.radices == (26, 26, 10, 26)


def test_domain_tokenized_without_keep_domain() -> None:
    template = email_template(keep_domain=False)
    value = "jane@mail-01.example.org"
    split = template.split(value, Side.VALUE)
    token = make_token(template, value, 3)

    assert len(split.body) == 4 + 6 + 7
    assert token.endswith(".org")
    assert token[token.index("@") :].count(".") == 2
    assert token[token.index("@") + 5] == "-"
    assert [character_class(c) for c in token] == [character_class(c) for c in value]
    assert template.split(token, Side.TOKEN).context == split.context


def test_vaultless_short_local_part_rejected() -> None:
    template = build_template("mail", {"type": "email"})
    with pytest.raises(InvalidValue) as caught:
        template.split("jo@example.com", Side.VALUE)

    assert caught.value.rule == (
        "local part has too few letters and digits for vaultless tokenization "
        "(need a domain of 1,000,000)"
    )
    # 5 letters give 26**5 = 11,881,376, above the minimum.
    assert len(template.split("jonas@example.com", Side.VALUE).body) == 5


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("jane.example.com", "must contain exactly one @"),
        ("jane@doe@example.com", "must contain exactly one @"),
        ("@example.com", "local part (before the @) must be 1 to 64 characters"),
        ("j" * 65 + "@example.com", "local part (before the @) must be 1 to 64 characters"),
        (
            ".jane@example.com",
            "local part must not start or end with a dot or have two dots in a row",
        ),
        (
            "jane.@example.com",
            "local part must not start or end with a dot or have two dots in a row",
        ),
        (
            "ja..ne@example.com",
            "local part must not start or end with a dot or have two dots in a row",
        ),
        (
            "ja ne@example.com",
            local_not_allowed(3),
        ),
        (
            '"jane"@example.com',
            local_not_allowed(1),
        ),
        (
            "jäne@example.com",
            local_not_allowed(2),
        ),
        (
            "jane@exam_ple.com",
            domain_not_allowed(10),
        ),
        (
            "jane@[192.0.2.1]",
            domain_not_allowed(6),
        ),
        ("jane@localhost", "domain must have at least two labels separated by a dot"),
        ("jane@example..com", "each domain label must be 1 to 63 characters"),
        ("jane@" + "x" * 64 + ".com", "each domain label must be 1 to 63 characters"),
        ("jane@-example.com", "domain labels must not start or end with a hyphen"),
        ("jane@example-.com", "domain labels must not start or end with a hyphen"),
        ("jane@example.123", "top-level domain label must not be all digits"),
        ("jane@" + ("a" * 60 + ".") * 5 + "com", "must be at most 254 characters long"),
        (
            "j\u0430ne@example.com",
            local_not_allowed(2),
        ),
        (
            "jane\uff11@example.com",
            local_not_allowed(5),
        ),
    ],
)
def test_bad_values_rejected(text: str, rule: str) -> None:
    for side in (Side.VALUE, Side.TOKEN):
        with pytest.raises(InvalidValue) as caught:
            email_template().split(text, side)
        assert caught.value.field == side.value
        assert caught.value.rule == rule
        assert_message_hides(caught.value, text)


def test_check_domain_is_per_item() -> None:
    build_template("mail", {"type": "email"}).check_domain()
    email_template().check_domain()


def test_bad_settings_rejected() -> None:
    with pytest.raises(ConfigError, match="template 'mail': keep_domain must be true or false"):
        email_template(keep_domain="no")
    with pytest.raises(ConfigError, match="ttl_seconds must be an integer from 1 to"):
        email_template(ttl_seconds=0)


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("jane.doe@example.com", "j***@example.com"),
        ("X@example.com", "***@example.com"),
    ],
)
def test_mask(value: str, masked: str) -> None:
    assert email_template().mask(value) == masked


local_parts = st.from_regex(r"[A-Za-z0-9_+-]{1,20}(\.[A-Za-z0-9_+-]{1,20}){0,2}", fullmatch=True)
labels = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,10}[A-Za-z0-9])?", fullmatch=True)
top_levels = st.from_regex(r"[A-Za-z]{2,6}", fullmatch=True)


@given(
    local=local_parts,
    domain_labels=st.lists(labels, min_size=1, max_size=3),
    top_level=top_levels,
    keep_domain=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_property_round_trip_and_classes(
    local: str, domain_labels: list[str], top_level: str, keep_domain: bool, seed: int
) -> None:
    template = email_template(keep_domain=keep_domain)
    value = f"{local}@{'.'.join(domain_labels)}.{top_level}"
    value_split = template.split(value, Side.VALUE)
    token = make_token(template, value, seed)
    token_split = template.split(token, Side.TOKEN)

    assert template.join(value_split.layout, value_split.body, Side.VALUE) == value
    assert template.join(token_split.layout, value_split.body, Side.VALUE) == value
    assert token_split.context == value_split.context
    assert [character_class(c) for c in token] == [character_class(c) for c in value]
    assert token.endswith("." + top_level)
    if keep_domain:
        assert token.split("@")[1] == value.split("@")[1]

"""Template registry: names, types, shared settings, load-time checks and shipped defaults."""

from __future__ import annotations

from typing import Any

import pytest

from vault.errors import ConfigError
from vault.formats import (
    TEMPLATE_TYPES,
    Mode,
    build_template,
    default_templates,
    load_templates,
)


@pytest.mark.parametrize("name", ["pan", "a", "card_numbers-2", "x" * 64])
def test_valid_names_accepted(name: str) -> None:
    assert build_template(name, {"type": "ssn"}).name == name


@pytest.mark.parametrize("name", ["", "Pan", "1pan", "_pan", "pan.fpe", "pan fpe", "x" * 65, "pän"])
def test_invalid_names_rejected(name: str) -> None:
    with pytest.raises(ConfigError, match="starting with a letter"):
        build_template(name, {"type": "ssn"})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "template 't': type is required"),
        ({"type": "card"}, 'template \'t\': type must be one of "pan", "iban"'),
        ({"type": 3}, "template 't': type must be one of"),
        (
            {"type": "ssn", "mode": "vault"},
            'template \'t\': mode must be one of "vaultless", "vaulted"',
        ),
        (
            {"type": "ssn", "convergent": True},
            "template 't': convergent applies only to mode = \"vaulted\"",
        ),
        (
            {"type": "ssn", "ttl_seconds": 60},
            "template 't': ttl_seconds applies only to mode = \"vaulted\"",
        ),
        (
            {"type": "ssn", "mode": "vaulted", "convergent": "yes"},
            "template 't': convergent must be true or false",
        ),
        (
            {"type": "ssn", "mode": "vaulted", "ttl_seconds": 0},
            "template 't': ttl_seconds must be an integer from 1 to 2147483647",
        ),
        (
            {"type": "ssn", "mode": "vaulted", "ttl_seconds": 1.5},
            "template 't': ttl_seconds must be an integer",
        ),
        ({"type": "ssn", "colour": "blue"}, "template 't': unknown key 'colour' (allowed keys: "),
    ],
)
def test_bad_settings_rejected(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_template("t", settings)
    assert message in str(caught.value)


def test_settings_must_be_table() -> None:
    with pytest.raises(ConfigError, match="settings must be a table"):
        build_template("t", ["type", "ssn"])  # type: ignore[arg-type]


def test_vaulted_settings_read() -> None:
    template = build_template(
        "cards", {"type": "pan", "mode": "vaulted", "convergent": True, "ttl_seconds": 3600}
    )
    assert template.mode is Mode.VAULTED
    assert template.convergent is True
    assert template.ttl_seconds == 3600
    assert template.describe()["ttl_seconds"] == 3600


def test_vaultless_defaults() -> None:
    template = build_template("numbers", {"type": "ssn"})
    assert template.mode is Mode.VAULTLESS
    assert template.convergent is False
    assert template.ttl_seconds is None


def test_every_type_registered() -> None:
    assert sorted(TEMPLATE_TYPES) == sorted(
        ["pan", "iban", "ssn", "account_number", "email", "phone", "name", "generic"]
    )


def test_load_templates_builds_and_checks() -> None:
    templates = load_templates(
        {
            "cards": {"type": "pan", "short_domain": "keep_fewer"},
            "ssn": {"type": "ssn", "mode": "vaulted", "keep_last4": True},
        }
    )
    assert sorted(templates) == ["cards", "ssn"]

    with pytest.raises(ConfigError, match="template 'ssn_short': keep_last4 leaves 5 digits"):
        load_templates({"ssn_short": {"type": "ssn", "keep_last4": True}})


def test_default_templates_match_documentation() -> None:
    templates = default_templates()
    expected = {
        "pan": ("pan", Mode.VAULTED, True),
        "pan_fpe": ("pan", Mode.VAULTLESS, False),
        "iban": ("iban", Mode.VAULTLESS, False),
        "ssn": ("ssn", Mode.VAULTLESS, False),
        "account_number": ("account_number", Mode.VAULTLESS, False),
        "email": ("email", Mode.VAULTED, True),
        "phone": ("phone", Mode.VAULTLESS, False),
        "name": ("name", Mode.VAULTED, True),
    }
    assert sorted(templates) == sorted(expected)
    for name, (type_name, mode, convergent) in expected.items():
        template = templates[name]
        assert template.type_name == type_name
        assert template.mode is mode
        assert template.convergent is convergent

    pan_fpe = templates["pan_fpe"].describe()
    assert pan_fpe["keep_first"] == 6
    assert pan_fpe["keep_last"] == 4
    assert pan_fpe["luhn"] == "invalid"
    assert pan_fpe["short_domain"] == "keep_fewer"
    assert templates["pan"].describe()["luhn"] == "invalid"
    assert templates["account_number"].describe()["min_length"] == 10
    assert templates["ssn"].describe()["keep_last4"] is False

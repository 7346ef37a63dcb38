"""Parsing and validation of the policy file: scopes, defaults, limits, pinning, anomaly rules."""

from __future__ import annotations

import ipaddress
import logging
import tomllib
from datetime import UTC, datetime
from datetime import time as dt_time
from pathlib import Path

import pytest

from vault.errors import ConfigError
from vault.policy import (
    AnomalyRule,
    CallerDefaults,
    Policy,
    RateLimit,
    TemplatePolicy,
    load_policy,
    parse_policy,
    parse_policy_bytes,
)

BACKOFFICE = "spiffe://bank.example/backoffice"
GATEWAY = "spiffe://bank.example/gateway"
FINGERPRINT = "ab" * 32
TEMPLATES = ["pan", "iban"]

FULL_POLICY = f"""
[defaults]
max_concurrent_calls = 16
[defaults.rate_limits]
tokenize = {{ rate = 2000.0, burst = 20000 }}
detokenize = {{ rate = 200.0, burst = 2000 }}

[[callers]]
identity = "{BACKOFFICE}"
scopes = ["detokenize:*"]
fingerprints = ["{FINGERPRINT}", "{":".join(["CD"] * 32)}"]
source_cidrs = ["10.20.0.0/16", "127.0.0.1/32", "fd00::/8"]
max_concurrent_calls = 4
rate_limits = {{ detokenize = {{ rate = 50, burst = 500 }}, admin = {{ rate = 1.5, burst = 1 }} }}
[callers.anomaly]
max_items_per_window = 5000
window_seconds = 600
allowed_hours = "07:00-19:00"
timezone = "Europe/Paris"

[[callers]]
identity = "{GATEWAY}"
scopes = ["tokenize:pan", "admin:callers"]

[templates.pan]
purpose_required = true

[templates.iban]
purpose_required = false
"""


def _parse(text: str) -> Policy:
    return parse_policy(tomllib.loads(text), known_templates=TEMPLATES)


def _caller_entry(extra: str, identity: str = BACKOFFICE) -> str:
    return f'[[callers]]\nidentity = "{identity}"\nscopes = ["detokenize:*"]\n{extra}\n'


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _parse(text)
    return str(caught.value)


# -- every key parsed


def test_full_policy_caller_fields() -> None:
    policy = _parse(FULL_POLICY)
    caller = policy.caller(BACKOFFICE)

    assert caller is not None
    assert caller.scopes == frozenset({"detokenize:*"})
    assert caller.fingerprints == frozenset({FINGERPRINT, "cd" * 32})
    assert caller.source_networks == (
        ipaddress.ip_network("10.20.0.0/16"),
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert caller.max_concurrent_calls == 4


def test_full_policy_rate_limits_merge_defaults() -> None:
    caller = _parse(FULL_POLICY).caller(BACKOFFICE)
    assert caller is not None

    # Own limits win per operation; tokenize comes from [defaults].
    assert caller.rate_limits == {
        "tokenize": RateLimit(rate=2000.0, burst=20000),
        "detokenize": RateLimit(rate=50.0, burst=500),
        "admin": RateLimit(rate=1.5, burst=1),
    }
    assert isinstance(caller.rate_limits["detokenize"].rate, float)


def test_full_policy_anomaly_rule() -> None:
    caller = _parse(FULL_POLICY).caller(BACKOFFICE)
    assert caller is not None

    assert caller.anomaly == AnomalyRule(
        max_items_per_window=5000,
        window_seconds=600,
        allowed_hours=(dt_time(7, 0), dt_time(19, 0)),
        timezone="Europe/Paris",
    )


def test_caller_without_own_limits_takes_defaults() -> None:
    policy = _parse(FULL_POLICY)
    gateway = policy.caller(GATEWAY)

    assert gateway is not None
    assert gateway.max_concurrent_calls == 16
    assert gateway.rate_limits == {
        "tokenize": RateLimit(rate=2000.0, burst=20000),
        "detokenize": RateLimit(rate=200.0, burst=2000),
    }
    assert gateway.fingerprints == frozenset()
    assert gateway.source_networks == ()
    assert gateway.anomaly is None
    assert policy.defaults == CallerDefaults(
        max_concurrent_calls=16,
        rate_limits={
            "tokenize": RateLimit(rate=2000.0, burst=20000),
            "detokenize": RateLimit(rate=200.0, burst=2000),
        },
    )


def test_templates_section() -> None:
    policy = _parse(FULL_POLICY)

    assert policy.template("pan") == TemplatePolicy(purpose_required=True)
    assert policy.template("iban") == TemplatePolicy(purpose_required=False)
    # A template the section does not name gets the defaults.
    assert policy.template("ssn") == TemplatePolicy()


def test_scope_checks_unchanged() -> None:
    policy = _parse(FULL_POLICY)

    assert policy.allows(GATEWAY, "tokenize", "pan")
    assert not policy.allows(GATEWAY, "tokenize", "iban")
    assert policy.allows(GATEWAY, "admin:callers")
    assert policy.may_detokenize(BACKOFFICE, "pan", masked=False)
    assert not policy.may_detokenize(GATEWAY, "pan", masked=True)
    assert policy.granted_for_template(BACKOFFICE, "iban") == ["detokenize"]
    assert policy.scopes("spiffe://bank.example/unknown") == frozenset()


def test_minimal_policy_without_new_sections() -> None:
    policy = _parse(f'[[callers]]\nidentity = "{GATEWAY}"\nscopes = ["tokenize:*"]\n')
    caller = policy.caller(GATEWAY)

    assert caller is not None
    assert caller.rate_limits == {}
    assert caller.max_concurrent_calls is None
    assert policy.templates == {}
    assert policy.defaults == CallerDefaults()


def test_empty_document_is_empty_policy() -> None:
    policy = _parse("")

    assert policy.callers == {}
    assert policy.scopes_by_identity == {}


def test_anomaly_with_only_window_count() -> None:
    caller = _parse(_caller_entry("anomaly = { max_items_per_window = 10 }")).caller(BACKOFFICE)

    assert caller is not None
    assert caller.anomaly == AnomalyRule(max_items_per_window=10, window_seconds=3600)


def test_allowed_hours_within() -> None:
    rule = AnomalyRule(allowed_hours=(dt_time(7, 0), dt_time(19, 0)), timezone="Europe/Paris")

    # 06:30 UTC in July is 08:30 in Paris (UTC+2).
    assert rule.within_allowed_hours(datetime(2024, 7, 1, 6, 30, tzinfo=UTC))
    # 17:00 UTC is 19:00 in Paris: the end is excluded.
    assert not rule.within_allowed_hours(datetime(2024, 7, 1, 17, 0, tzinfo=UTC))
    assert not rule.within_allowed_hours(datetime(2024, 7, 1, 4, 59, tzinfo=UTC))


def test_allowed_hours_across_midnight() -> None:
    rule = AnomalyRule(allowed_hours=(dt_time(22, 0), dt_time(6, 0)))

    assert rule.within_allowed_hours(datetime(2024, 1, 1, 23, 0, tzinfo=UTC))
    assert rule.within_allowed_hours(datetime(2024, 1, 1, 5, 59, tzinfo=UTC))
    assert not rule.within_allowed_hours(datetime(2024, 1, 1, 12, 0, tzinfo=UTC))


def test_allowed_hours_rejects_naive_time() -> None:
    rule = AnomalyRule(allowed_hours=(dt_time(7, 0), dt_time(19, 0)))

    with pytest.raises(ValueError, match="timezone-aware"):
        rule.within_allowed_hours(datetime(2024, 1, 1, 12, 0))


def test_unknown_scope_template_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="vault.policy"):
        _parse(f'[[callers]]\nidentity = "{GATEWAY}"\nscopes = ["tokenize:ssn"]\n')

    assert "tokenize:ssn" in caplog.text


# -- validation errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # top level
        ("[other]\nx = 1\n", "unknown top-level keys ['other']"),
        ("callers = 1\n", "'callers' must be an array of tables"),
        ("defaults = 1\n", "policy: defaults: must be a table"),
        ("templates = []\n", "policy: templates: must be a table"),
        # [defaults]
        ("[defaults]\nburst = 1\n", "policy: defaults: unknown keys ['burst']"),
        (
            "[defaults]\nmax_concurrent_calls = 0\n",
            "max_concurrent_calls must be an integer of at least 1",
        ),
        ("[defaults]\nmax_concurrent_calls = true\n", "max_concurrent_calls must be an integer"),
        ("[defaults]\nmax_concurrent_calls = 2.5\n", "max_concurrent_calls must be an integer"),
        (
            "[defaults.rate_limits]\nexport = { rate = 1.0, burst = 1 }\n",
            "policy: defaults: rate_limits: unknown operations ['export']",
        ),
        (
            "[defaults.rate_limits]\ntokenize = { rate = 0.0, burst = 1 }\n",
            "policy: defaults: rate_limits.tokenize.rate: must be a finite number greater than 0",
        ),
        (
            "[defaults.rate_limits]\ntokenize = { rate = -5, burst = 1 }\n",
            "rate_limits.tokenize.rate: must be a finite number greater than 0, got -5",
        ),
        (
            "[defaults.rate_limits]\ntokenize = { rate = inf, burst = 1 }\n",
            "rate_limits.tokenize.rate: must be a finite number",
        ),
        (
            '[defaults.rate_limits]\ntokenize = { rate = "fast", burst = 1 }\n',
            "rate_limits.tokenize.rate: must be a number of items per second",
        ),
        (
            "[defaults.rate_limits]\ntokenize = { rate = 1.0, burst = 0 }\n",
            "rate_limits.tokenize.burst: must be at least 1, got 0",
        ),
        (
            "[defaults.rate_limits]\ntokenize = { rate = 1.0, burst = 10.0 }\n",
            "rate_limits.tokenize.burst: must be an integer number of items",
        ),
        (
            "[defaults.rate_limits]\ntokenize = { rate = 1.0 }\n",
            "rate_limits.tokenize: 'burst' is missing",
        ),
        (
            "[defaults.rate_limits]\ntokenize = { rate = 1.0, burst = 1, period = 1 }\n",
            "rate_limits.tokenize: unknown keys ['period']",
        ),
        ("[defaults]\nrate_limits = 5\n", "policy: defaults: rate_limits: must be a table"),
        # [templates]
        ("[templates.pna]\npurpose_required = true\n", "templates.pna: no template is named 'pna'"),
        (
            "[templates.pan]\npurpose_required = 1\n",
            "templates.pan: purpose_required must be true or false",
        ),
        ("[templates.pan]\nrequired = true\n", "templates.pan: unknown keys ['required']"),
        ('[templates."*"]\npurpose_required = true\n', "is not a valid template name"),
        ("[templates]\npan = 1\n", "policy: templates.pan: must be a table"),
    ],
)
def test_document_errors(text: str, expected: str) -> None:
    assert expected in _error(text)


WHERE = f"policy: callers entry 1 ({BACKOFFICE})"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("colour = 1", "policy: callers entry 1: unknown keys ['colour']"),
        ('scopes_extra = ["x"]', "policy: callers entry 1: unknown keys ['scopes_extra']"),
        ('fingerprints = "ab"', f"{WHERE}: fingerprints: must be an array of strings"),
        ("fingerprints = []", f"{WHERE}: fingerprints: list at least one fingerprint"),
        ('fingerprints = ["abc"]', f"{WHERE}: fingerprints[0]: 'abc' is not a SHA-256 fingerprint"),
        (
            f'fingerprints = ["{FINGERPRINT}", "{"zz" * 32}"]',
            f"{WHERE}: fingerprints[1]: '{'zz' * 32}' is not a SHA-256 fingerprint",
        ),
        (f'fingerprints = ["{"ab" * 31}"]', f"{WHERE}: fingerprints[0]"),
        ('source_cidrs = "10.0.0.0/8"', f"{WHERE}: source_cidrs: must be an array of strings"),
        ("source_cidrs = []", f"{WHERE}: source_cidrs: list at least one network"),
        (
            'source_cidrs = ["10.0.0.300/8"]',
            f"{WHERE}: source_cidrs[0]: '10.0.0.300/8' is not a valid network",
        ),
        (
            'source_cidrs = ["10.20.1.0/16"]',
            "'10.20.1.0/16' is not a valid network: 10.20.1.0/16 has host bits set",
        ),
        ('source_cidrs = ["10.0.0.0/33"]', f"{WHERE}: source_cidrs[0]: '10.0.0.0/33'"),
        ('source_cidrs = ["localhost"]', f"{WHERE}: source_cidrs[0]: 'localhost'"),
        (
            "max_concurrent_calls = -1",
            f"{WHERE}: max_concurrent_calls must be an integer of at least 1",
        ),
        (
            "rate_limits = { read = { rate = 1.0, burst = 1 } }",
            f"{WHERE}: rate_limits: unknown operations ['read']",
        ),
        ("rate_limits = { admin = { rate = 0, burst = 1 } }", f"{WHERE}: rate_limits.admin.rate"),
        ("rate_limits = { admin = { rate = 1, burst = -3 } }", f"{WHERE}: rate_limits.admin.burst"),
        (
            "rate_limits = { admin = { burst = 3 } }",
            f"{WHERE}: rate_limits.admin: 'rate' is missing",
        ),
        ("rate_limits = { admin = 5 }", f"{WHERE}: rate_limits.admin: must be a table"),
        ("anomaly = 1", f"{WHERE}: anomaly: must be a table"),
        (
            "anomaly = { window_seconds = 60 }",
            f"{WHERE}: anomaly: set max_items_per_window, allowed_hours or both",
        ),
        (
            "anomaly = { max_items_per_window = 0 }",
            f"{WHERE}: anomaly: max_items_per_window must be an integer",
        ),
        (
            "anomaly = { max_items_per_window = 5, window_seconds = 0 }",
            f"{WHERE}: anomaly: window_seconds must be",
        ),
        (
            "anomaly = { max_items_per_window = 5, limit = 3 }",
            f"{WHERE}: anomaly: unknown keys ['limit']",
        ),
        (
            'anomaly = { allowed_hours = "07:00-19:00", timezone = "Mars/Olympus" }',
            f"{WHERE}: anomaly.timezone: unknown time zone 'Mars/Olympus'",
        ),
        (
            'anomaly = { allowed_hours = "07:00-19:00", timezone = "../etc/passwd" }',
            "anomaly.timezone: unknown time zone '../etc/passwd'",
        ),
        (
            'anomaly = { allowed_hours = "07:00-19:00", timezone = 1 }',
            "anomaly.timezone: must be an IANA",
        ),
        (
            'anomaly = { allowed_hours = "7-19" }',
            f"{WHERE}: anomaly.allowed_hours: '7-19' is not valid",
        ),
        (
            'anomaly = { allowed_hours = "07:00-24:00" }',
            "anomaly.allowed_hours: '07:00-24:00' is not valid",
        ),
        (
            'anomaly = { allowed_hours = "07:60-19:00" }',
            "anomaly.allowed_hours: '07:60-19:00' is not valid",
        ),
        ('anomaly = { allowed_hours = "07:00 - 19:00" }', "anomaly.allowed_hours: '07:00 - 19:00'"),
        ("anomaly = { allowed_hours = 7 }", "anomaly.allowed_hours: 7 is not valid"),
        (
            'anomaly = { allowed_hours = "08:30-08:30" }',
            "anomaly.allowed_hours: start and end are both 08:30",
        ),
    ],
)
def test_caller_errors(extra: str, expected: str) -> None:
    assert expected in _error(_caller_entry(extra))


def test_invalid_scope_names_entry() -> None:
    message = _error(f'[[callers]]\nidentity = "{GATEWAY}"\nscopes = ["tokenize"]\n')

    assert message.startswith(f"policy: callers entry 1 ({GATEWAY}): scopes: scope 'tokenize'")


def test_duplicate_identity() -> None:
    message = _error(_caller_entry("") + _caller_entry(""))

    assert message == f"policy: callers entry 2: identity {BACKOFFICE!r} is listed twice"


def test_missing_identity() -> None:
    message = _error('[[callers]]\nscopes = ["tokenize:*"]\n')

    assert message == "policy: callers entry 1: 'identity' must be a non-empty string"


def test_error_names_second_entry() -> None:
    text = _caller_entry("", identity=GATEWAY) + _caller_entry('source_cidrs = ["nope"]')

    assert f"policy: callers entry 2 ({BACKOFFICE}): source_cidrs[0]" in _error(text)


def test_fingerprint_normalized_to_lower_hex() -> None:
    upper = ":".join(["AB"] * 32)
    caller = _parse(_caller_entry(f'fingerprints = ["{upper}"]')).caller(BACKOFFICE)

    assert caller is not None
    assert caller.fingerprints == frozenset({FINGERPRINT})


# -- files


def test_load_policy_names_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(_caller_entry("max_concurrent_calls = 0"))

    with pytest.raises(ConfigError) as caught:
        load_policy(path, known_templates=TEMPLATES)

    assert str(caught.value).startswith(f"policy file {path}: policy: callers entry 1")


def test_load_policy_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError, match="does not exist"):
        load_policy(path)


def test_load_policy_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("[[callers]\n")

    with pytest.raises(ConfigError, match=f"policy file {path} is not valid TOML"):
        load_policy(path)


def test_policy_bytes_not_utf8() -> None:
    with pytest.raises(ConfigError, match="policy file p.toml is not valid UTF-8"):
        parse_policy_bytes(b"\xff\xfe", source="p.toml")


def test_load_policy_full_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(FULL_POLICY)

    policy = load_policy(path, known_templates=TEMPLATES)

    assert set(policy.callers) == {BACKOFFICE, GATEWAY}
    assert policy.template("pan").purpose_required


def test_templates_unchecked_without_known_list() -> None:
    document = tomllib.loads("[templates.anything]\npurpose_required = true\n")

    policy = parse_policy(document)

    assert policy.template("anything").purpose_required

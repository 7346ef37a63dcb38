"""Start-up demo for `tokenvault dev`: round trips over public test data, through the real API.

The data are card processors' published test card numbers and the example IBANs of the SWIFT
IBAN registry (ISO 13616), plus made-up personal data. The demo prints values masked.
"""

from __future__ import annotations

import csv
from importlib import resources

import grpc
from tokenvault_client import (
    DetokenizeItem,
    PermissionDeniedError,
    Reveal,
    TlsConfig,
    TokenizeItem,
    TokenvaultClient,
)

from vault.devstate import StatePaths

SAMPLE_PERSONAL_DATA = [
    ("ssn", "123-45-6789"),
    ("account_number", "000123456789"),
    ("email", "jane.doe@example.com"),
    ("phone", "+44 20 7946 0958"),
    ("name", "Jane Doe-Smith"),
]


def demo_items() -> list[TokenizeItem]:
    """Return the demo's inputs: every test PAN (two templates), every IBAN, and samples."""
    folder = resources.files("vault.demo")
    with (folder / "test-pans.csv").open() as handle:
        pans = [row["pan"] for row in csv.DictReader(handle)]
    with (folder / "iban-examples.csv").open() as handle:
        ibans = [row["iban"] for row in csv.DictReader(handle)]

    items = [TokenizeItem("pan", pan, f"pan-{n}") for n, pan in enumerate(pans, 1)]
    items += [TokenizeItem("pan_fpe", pan, f"pan_fpe-{n}") for n, pan in enumerate(pans, 1)]
    items += [TokenizeItem("iban", iban, f"iban-{n}") for n, iban in enumerate(ibans, 1)]
    items += [TokenizeItem(t, v, f"{t}-1") for t, v in SAMPLE_PERSONAL_DATA]
    return items


def _client(paths: StatePaths, endpoint: str, caller: str) -> TokenvaultClient:
    tls = TlsConfig.from_files(paths.ca_cert, paths.client_cert(caller), paths.client_key(caller))
    return TokenvaultClient(endpoint, tls)


def run_demo(paths: StatePaths, endpoint: str) -> bool:
    """Tokenize as the gateway, reveal as the back office and support; return True if all held."""
    items = demo_items()
    with _client(paths, endpoint, "gateway") as gateway:
        tokenized = gateway.tokenize(items)

    tokens = [
        DetokenizeItem(item.template, outcome.token, item.reference)
        for item, outcome in zip(items, tokenized, strict=True)
        if outcome.token is not None
    ]
    with _client(paths, endpoint, "backoffice") as backoffice:
        revealed = backoffice.detokenize(tokens, reveal=Reveal.FULL, purpose="dev demo")
    with _client(paths, endpoint, "support") as support:
        masked = support.detokenize(tokens, reveal=Reveal.MASKED, purpose="dev demo")
        try:
            support.detokenize(tokens[:1], reveal=Reveal.FULL, purpose="dev demo")
            support_denied = False
        except PermissionDeniedError:
            support_denied = True

    value_by_reference = {item.reference: item.value for item in items}
    revealed_by_reference = {o.reference: o.value for o in revealed}
    masked_by_reference = {o.reference: o.value for o in masked}
    failures = 0
    print(f"{'template':<15} {'masked value':<36} {'token':<36} round trip")
    for item, outcome in zip(items, tokenized, strict=True):
        if outcome.token is None:
            failures += 1
            code = outcome.error.code.name if outcome.error else grpc.StatusCode.UNKNOWN.name
            print(f"{item.template:<15} {'':<36} {'(' + code + ')':<36} FAILED")
            continue
        same = revealed_by_reference.get(item.reference) == value_by_reference[item.reference]
        failures += 0 if same else 1
        shown = masked_by_reference.get(item.reference) or ""
        print(f"{item.template:<15} {shown:<36} {outcome.token:<36} {'ok' if same else 'MISMATCH'}")

    print(f"\n{len(items) - failures} of {len(items)} values tokenized and revealed intact.")
    print(
        "support asking for a full reveal: "
        + ("denied (PERMISSION_DENIED), as the policy says" if support_denied else "NOT DENIED")
    )
    return failures == 0 and support_denied

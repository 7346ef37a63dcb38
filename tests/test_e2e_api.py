"""End to end through a real server: mTLS on loopback, real PostgreSQL, the client library."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from harness import ServiceHarness
from tokenvault.v1 import tokenization_pb2 as pb
from tokenvault.v1 import tokenization_pb2_grpc as pb_grpc
from tokenvault_client import (
    DetokenizeItem,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    Reveal,
    TokenizeItem,
)

from vault.audit.events import token_digest
from vault.formats.luhn import is_luhn_valid
from vault.formats.mod97 import is_iban_checksum_valid
from vault.store.embedded import EmbeddedPostgres

DATA = Path(__file__).resolve().parent / "data"


def _column(name: str, column: str) -> list[str]:
    with (DATA / name).open() as handle:
        return [row[column] for row in csv.DictReader(handle)]


PANS = _column("test-pans.csv", "pan")
IBANS = _column("iban-examples.csv", "iban")


@pytest.fixture(scope="module")
def service(
    pg_server: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceHarness]:
    harness = ServiceHarness(
        pg_server,
        tmp_path_factory.mktemp("e2e"),
        templates={"otp_ref": {"type": "pan", "mode": "vaulted", "ttl_seconds": 1}},
    ).start()
    yield harness
    harness.stop()


def _query(service: ServiceHarness, sql: str) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(service.dsn)
        try:
            return await connection.fetch(sql)
        finally:
            await connection.close()

    return asyncio.run(run())


def _round_trip(service: ServiceHarness, template: str, values: list[str]) -> list[str]:
    with service.client("gateway") as gateway:
        tokenized = gateway.tokenize(
            [TokenizeItem(template, v, str(n)) for n, v in enumerate(values)]
        )
    assert all(o.ok for o in tokenized), [o.error for o in tokenized if not o.ok]
    tokens = [o.token for o in tokenized]
    with service.client("backoffice") as backoffice:
        revealed = backoffice.detokenize(
            [DetokenizeItem(template, t, str(n)) for n, t in enumerate(tokens)], reveal=Reveal.FULL
        )
    assert [o.value for o in revealed] == values
    return [t for t in tokens if t is not None]


@pytest.mark.parametrize("template", ["pan", "pan_fpe"])
def test_every_test_pan_round_trips(service: ServiceHarness, template: str) -> None:
    tokens = _round_trip(service, template, PANS)

    for pan, token in zip(PANS, tokens, strict=True):
        assert token != pan
        assert len(token) == len(pan)
        assert token[-4:] == pan[-4:]
        assert not is_luhn_valid(token)


def test_vaulted_pan_keeps_bin_and_last_four(service: ServiceHarness) -> None:
    tokens = _round_trip(service, "pan", PANS)

    for pan, token in zip(PANS, tokens, strict=True):
        assert token[:6] == pan[:6]


def test_every_example_iban_round_trips(service: ServiceHarness) -> None:
    tokens = _round_trip(service, "iban", IBANS)

    for iban, token in zip(IBANS, tokens, strict=True):
        assert token != iban
        assert token[:2] == iban[:2]
        assert len(token) == len(iban)
        assert is_iban_checksum_valid(token)


def test_personal_data_round_trips(service: ServiceHarness) -> None:
    for template, value in [
        ("ssn", "123-45-6789"),
        ("account_number", "000123456789"),
        ("email", "jane.doe@example.com"),
        ("phone", "+44 20 7946 0958"),
        ("name", "Jane Doe-Smith"),
    ]:
        _round_trip(service, template, [value])


def test_separators_keep_their_positions(service: ServiceHarness) -> None:
    spaced = "4111 1111 1111 1111"

    tokens = _round_trip(service, "pan_fpe", [spaced, "4111111111111111"])

    assert tokens[0][4] == tokens[0][9] == tokens[0][14] == " "
    assert tokens[0].replace(" ", "") == tokens[1]


def test_convergent_template_reuses_token(service: ServiceHarness) -> None:
    with service.client("gateway") as gateway:
        first = gateway.tokenize([TokenizeItem("pan", PANS[0]), TokenizeItem("pan", PANS[0])])
        again = gateway.tokenize([TokenizeItem("pan", PANS[0])])

    assert first[0].token == first[1].token == again[0].token


def test_masked_reveal_for_support(service: ServiceHarness) -> None:
    with service.client("gateway") as gateway:
        token = gateway.tokenize([TokenizeItem("pan", "4111111111111111")])[0].token
    assert token is not None

    with service.client("support") as support:
        masked = support.detokenize([DetokenizeItem("pan", token)], reveal=Reveal.MASKED)

    assert masked[0].value == "411111******1111"


def test_support_cannot_reveal_in_full(service: ServiceHarness) -> None:
    with service.client("support") as support, pytest.raises(PermissionDeniedError) as caught:
        support.detokenize([DetokenizeItem("pan", "4111110000001111")], reveal=Reveal.FULL)

    assert "detokenize:pan" in caught.value.details


def test_gateway_cannot_detokenize(service: ServiceHarness) -> None:
    with service.client("gateway") as gateway, pytest.raises(PermissionDeniedError):
        gateway.detokenize([DetokenizeItem("pan", "4111110000001111")], reveal=Reveal.MASKED)


def test_identity_without_scope_is_denied(service: ServiceHarness) -> None:
    with service.client("nobody") as nobody, pytest.raises(PermissionDeniedError) as caught:
        nobody.tokenize([TokenizeItem("pan", PANS[0])])

    assert "tokenize:pan" in caught.value.details


def test_scope_checked_per_template(service: ServiceHarness) -> None:
    # backoffice may tokenize IBANs only
    with service.client("backoffice") as backoffice:
        outcomes = backoffice.tokenize(
            [TokenizeItem("iban", IBANS[0]), TokenizeItem("pan", PANS[0])]
        )

    assert outcomes[0].ok
    assert outcomes[1].error is not None
    assert outcomes[1].error.code == grpc.StatusCode.PERMISSION_DENIED


def _raw_channel(service: ServiceHarness, cert: str | None) -> grpc.Channel:
    folder = service.folder
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(folder / "ca.pem").read_bytes(),
        private_key=(folder / f"{cert}-key.pem").read_bytes() if cert else None,
        certificate_chain=(folder / f"{cert}.pem").read_bytes() if cert else None,
    )
    return grpc.secure_channel(service.endpoint, credentials)


def _raw_tokenize(channel: grpc.Channel, request: pb.TokenizeRequest) -> pb.TokenizeResponse:
    stub = pb_grpc.TokenizationStub(channel)
    response: pb.TokenizeResponse = stub.Tokenize(request, timeout=10)
    return response


def test_connection_without_client_certificate_fails(service: ServiceHarness) -> None:
    request = pb.TokenizeRequest(items=[pb.TokenizeItem(template="pan", value=PANS[0])])

    with _raw_channel(service, None) as channel, pytest.raises(grpc.RpcError) as caught:
        _raw_tokenize(channel, request)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_fails(service: ServiceHarness) -> None:
    request = pb.TokenizeRequest(items=[pb.TokenizeItem(template="pan", value=PANS[0])])

    with _raw_channel(service, "stranger") as channel, pytest.raises(grpc.RpcError) as caught:
        _raw_tokenize(channel, request)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_empty_batch_is_invalid(service: ServiceHarness) -> None:
    with _raw_channel(service, "gateway") as channel, pytest.raises(grpc.RpcError) as caught:
        _raw_tokenize(channel, pb.TokenizeRequest())

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items" in (caught.value.details() or "")


def test_oversize_batch_is_refused(service: ServiceHarness) -> None:
    items = [pb.TokenizeItem(template="pan_fpe", value=PANS[0])] * (service.max_batch_items + 1)

    with _raw_channel(service, "gateway") as channel, pytest.raises(grpc.RpcError) as caught:
        _raw_tokenize(channel, pb.TokenizeRequest(items=items))

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_unspecified_reveal_is_invalid(service: ServiceHarness) -> None:
    request = pb.DetokenizeRequest(items=[pb.DetokenizeItem(template="pan", token=PANS[0])])

    with _raw_channel(service, "backoffice") as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.TokenizationStub(channel).Detokenize(request, timeout=10)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reveal" in (caught.value.details() or "")


def test_unknown_template_fails_alone(service: ServiceHarness) -> None:
    with service.client("gateway") as gateway:
        outcomes = gateway.tokenize([TokenizeItem("nope", "1"), TokenizeItem("pan", PANS[0])])

    assert outcomes[0].error is not None
    assert outcomes[0].error.code == grpc.StatusCode.NOT_FOUND
    assert outcomes[1].ok


def test_only_unknown_templates_fail_the_call(service: ServiceHarness) -> None:
    with service.client("gateway") as gateway, pytest.raises(NotFoundError):
        gateway.tokenize([TokenizeItem("nope", "1")])


BAD_INPUT = [
    ("pan", "4111111111111112"),  # Luhn fails
    ("pan", "41111111111"),  # too short
    ("pan", "41111111111111111111"),  # too long
    ("pan", "4111x11111111111"),  # letter
    ("pan", "４１１１１１１１１１１１１１１１"),  # full-width digits
    ("pan", ""),
    ("pan_fpe", "4111-1111 1111-1111"),  # mixed separators
    ("iban", "GB82WEST12345698765433"),  # checksum
    ("iban", "GB82WEST1234569876543"),  # length
    ("iban", "ZZ82WEST12345698765432"),  # country
    ("iban", "GB82WЕST12345698765432"),  # Cyrillic Е
    ("ssn", "000-12-3456"),  # area 000
    ("ssn", "123-45-678"),
    ("account_number", "12345"),
    ("account_number", "12345678901a"),
    ("email", "no-at-sign.example.com"),
    ("email", "jane..doe@example.com"),
    ("phone", "0044207946095"),  # no +
    ("phone", "+1"),
    ("name", "J4ne"),
    ("name", ""),
]


def test_bad_input_is_invalid_and_stores_nothing(service: ServiceHarness) -> None:
    rows_before = _query(service, "SELECT count(*) AS n FROM tv_tokens")[0]["n"]

    with service.client("gateway") as gateway:
        outcomes = gateway.tokenize(
            [TokenizeItem(t, v, f"bad-{n}") for n, (t, v) in enumerate(BAD_INPUT)]
        )

    for (template, value), outcome in zip(BAD_INPUT, outcomes, strict=True):
        assert outcome.error is not None, (template, outcome.reference)
        assert outcome.error.code == grpc.StatusCode.INVALID_ARGUMENT, (template, outcome.reference)
        assert outcome.error.message.startswith("value"), outcome.error.message
        digits = "".join(c for c in value if c.isascii() and c.isalnum())
        if len(digits) >= 4:
            assert digits not in outcome.error.message
    assert _query(service, "SELECT count(*) AS n FROM tv_tokens")[0]["n"] == rows_before


def test_one_bad_item_does_not_fail_the_batch(service: ServiceHarness) -> None:
    with service.client("gateway") as gateway:
        outcomes = gateway.tokenize(
            [
                TokenizeItem("pan", PANS[1], "good-1"),
                TokenizeItem("pan", "4111111111111112", "bad"),
                TokenizeItem("iban", IBANS[1], "good-2"),
            ]
        )

    assert [o.reference for o in outcomes] == ["good-1", "bad", "good-2"]
    assert [o.ok for o in outcomes] == [True, False, True]


def test_unknown_vaulted_token_is_not_found(service: ServiceHarness) -> None:
    with service.client("backoffice") as backoffice:
        outcomes = backoffice.detokenize(
            [DetokenizeItem("pan", "4111110000001111")], reveal=Reveal.FULL
        )

    assert outcomes[0].error is not None
    assert outcomes[0].error.code == grpc.StatusCode.NOT_FOUND


def test_expired_token_is_not_found(service: ServiceHarness) -> None:
    with service.client("gateway") as gateway:
        token = gateway.tokenize([TokenizeItem("otp_ref", PANS[2])])[0].token
    assert token is not None
    _query(
        service,
        "UPDATE tv_tokens SET expires_at = now() - interval '1 second' WHERE template = 'otp_ref'",
    )

    with service.client("backoffice") as backoffice:
        outcomes = backoffice.detokenize([DetokenizeItem("otp_ref", token)], reveal=Reveal.FULL)

    assert outcomes[0].error is not None
    assert outcomes[0].error.code == grpc.StatusCode.NOT_FOUND


def test_metadata_round_trips_for_vaulted(service: ServiceHarness) -> None:
    with service.client("gateway") as gateway:
        token = gateway.tokenize(
            [TokenizeItem("email", "meta@example.com", metadata={"source": "crm"})]
        )[0].token
    assert token is not None

    with service.client("backoffice") as backoffice:
        outcome = backoffice.detokenize([DetokenizeItem("email", token)], reveal=Reveal.FULL)[0]

    assert outcome.value == "meta@example.com"
    assert dict(outcome.metadata) == {"source": "crm"}


def test_metadata_on_vaultless_is_invalid(service: ServiceHarness) -> None:
    with service.client("gateway") as gateway:
        outcome = gateway.tokenize([TokenizeItem("iban", IBANS[0], metadata={"a": "b"})])[0]

    assert outcome.error is not None
    assert outcome.error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.error.message.startswith("metadata")


def test_detokenize_is_audited_without_values(service: ServiceHarness) -> None:
    tokens = _round_trip(service, "pan", PANS[:3])
    with service.client("support") as support:
        support.detokenize(
            [DetokenizeItem("pan", tokens[0], "ticket-7")],
            reveal=Reveal.MASKED,
            purpose="chargeback 42",
        )

    rows = _query(service, "SELECT * FROM tv_audit_log ORDER BY seq")
    masked = [r for r in rows if r["purpose"] == "chargeback 42"]
    assert masked and masked[-1]["caller"] == "spiffe://tokenvault.test/support"
    assert masked[-1]["operation"] == "detokenize"
    assert masked[-1]["reveal"] == "masked"
    assert masked[-1]["outcome"] == "ok"
    assert masked[-1]["token_digests"] == [token_digest("pan", tokens[0])]
    assert len(masked[-1]["fingerprint"]) == 64
    assert masked[-1]["peer"] == "127.0.0.1"
    text = " ".join(str(value) for row in rows for value in dict(row).values())
    for pan in PANS:
        assert pan not in text
    for token in tokens:
        assert token not in text


def test_denied_detokenize_is_audited(service: ServiceHarness) -> None:
    with service.client("support") as support, pytest.raises(PermissionDeniedError):
        support.detokenize(
            [DetokenizeItem("pan", "4111110000001111", f"denied-{n}") for n in range(3)],
            reveal=Reveal.FULL,
            purpose="denied-probe",
        )

    rows = _query(
        service,
        "SELECT outcome, status_code, item_count FROM tv_audit_log"
        " WHERE purpose = 'denied-probe'",
    )
    assert [(r["outcome"], r["status_code"], r["item_count"]) for r in rows] == [
        ("denied", "PERMISSION_DENIED", 3)
    ]


def test_vault_stores_no_plaintext(service: ServiceHarness) -> None:
    _round_trip(service, "pan", PANS)

    rows = _query(service, "SELECT token, ciphertext, metadata::text AS metadata FROM tv_tokens")
    blob = b"".join(
        bytes(r["ciphertext"]) + r["token"].encode() + r["metadata"].encode() for r in rows
    )
    for pan in PANS:
        assert pan.encode() not in blob


def test_bad_token_is_invalid(service: ServiceHarness) -> None:
    with service.client("backoffice") as backoffice:
        outcome = backoffice.detokenize(
            [DetokenizeItem("pan_fpe", "not-a-token")], reveal=Reveal.FULL
        )[0]

    assert outcome.error is not None
    assert outcome.error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.error.message.startswith("token")


def test_overlong_purpose_is_invalid(service: ServiceHarness) -> None:
    with service.client("backoffice") as backoffice, pytest.raises(InvalidArgumentError):
        backoffice.detokenize(
            [DetokenizeItem("pan", "4111110000001111")], reveal=Reveal.FULL, purpose="x" * 257
        )


def test_ciphertext_moved_to_another_row_fails(service: ServiceHarness) -> None:
    tokens = _round_trip(service, "email", ["first@example.com", "second@example.com"])
    _query(
        service,
        "UPDATE tv_tokens SET ciphertext = (SELECT ciphertext FROM tv_tokens"
        f" WHERE template = 'email' AND token = '{tokens[1]}')"
        f" WHERE template = 'email' AND token = '{tokens[0]}'",
    )

    with service.client("backoffice") as backoffice:
        outcome = backoffice.detokenize([DetokenizeItem("email", tokens[0])], reveal=Reveal.FULL)[0]

    assert outcome.error is not None
    assert outcome.error.code == grpc.StatusCode.DATA_LOSS
    assert "second@example.com" not in outcome.error.message


def test_second_server_cannot_take_a_used_port(service: ServiceHarness) -> None:
    import dataclasses

    from vault.errors import ConfigError
    from vault.server import start_server

    settings = dataclasses.replace(service.settings(), listen=service.endpoint)

    with pytest.raises(ConfigError, match="could not bind"):
        service.call(start_server(settings))


def test_batch_never_gives_two_values_one_token(service: ServiceHarness) -> None:
    # Every Luhn-valid 12-digit card with one BIN and last 4: their tokens come from a small
    # space, so draws inside one batch collide often.
    values = [f"501234{n:02d}9876" for n in range(100) if is_luhn_valid(f"501234{n:02d}9876")]
    with service.client("gateway") as gateway:
        outcomes = gateway.tokenize([TokenizeItem("pan", v, v) for v in values])
    issued = {o.reference: o.token for o in outcomes if o.token is not None}

    assert len(values) == 10
    assert len(set(issued.values())) == len(issued)
    with service.client("backoffice") as backoffice:
        revealed = backoffice.detokenize(
            [DetokenizeItem("pan", token, reference) for reference, token in issued.items()],
            reveal=Reveal.FULL,
        )
    assert [o.value for o in revealed] == [o.reference for o in revealed]


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("reference", "a\x00b"),
        ("reference", "card 4111 1111 1111 1111"),
        ("purpose", "ticket\nforged"),
        ("purpose", "refund for 4111111111111111"),
        ("purpose", "refund to HR1210010051863000160"),
        ("reference", "card 4111.1111.1111.1111"),
    ],
)
def test_free_text_rejects_controls_and_card_numbers(
    service: ServiceHarness, field: str, text: str
) -> None:
    reference, purpose = (text, "") if field == "reference" else ("", text)
    with service.client("backoffice") as backoffice:
        try:
            outcomes = backoffice.detokenize(
                [DetokenizeItem("pan", "4111110000001111", reference)],
                reveal=Reveal.FULL,
                purpose=purpose,
            )
        except InvalidArgumentError as error:
            message = error.details
        else:
            assert outcomes[0].error is not None
            message = outcomes[0].error.message

    assert message.startswith(field)
    assert "4111" not in message


def test_control_characters_in_metadata_fail_alone(service: ServiceHarness) -> None:
    with service.client("gateway") as gateway:
        outcomes = gateway.tokenize(
            [
                TokenizeItem("name", "Meta Nul", metadata={"k": "a\x00b"}),
                TokenizeItem("name", "Meta Fine", metadata={"k\n": "v"}),
                TokenizeItem("name", "Meta Card", metadata={"card": "4242424242424242"}),
                TokenizeItem("name", "Meta Good"),
            ]
        )

    assert [o.error.code if o.error else None for o in outcomes] == [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
        None,
    ]


def test_masked_reveal_hides_metadata(service: ServiceHarness) -> None:
    with service.client("gateway") as gateway:
        outcome = gateway.tokenize([TokenizeItem("email", "hid@example.com", metadata={"a": "b"})])
    token = outcome[0].token
    assert token is not None

    with service.client("support") as support:
        revealed = support.detokenize([DetokenizeItem("email", token)], reveal=Reveal.MASKED)[0]

    assert revealed.value == "h***@example.com"
    assert dict(revealed.metadata) == {}


def test_unknown_reveal_value_is_invalid(service: ServiceHarness) -> None:
    request = pb.DetokenizeRequest(
        items=[pb.DetokenizeItem(template="pan", token="4111110000001111")], reveal=7
    )

    with _raw_channel(service, "backoffice") as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.TokenizationStub(channel).Detokenize(request, timeout=10)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

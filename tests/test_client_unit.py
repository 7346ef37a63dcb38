"""Client library and CLI parts that need no server: input readers, chunking, errors, reprs."""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
from google.rpc import status_pb2
from tokenvault.v1 import tokenization_pb2 as pb
from tokenvault_client import (
    DeadlineExceededError,
    DetokenizeItem,
    DetokenizeOutcome,
    InvalidArgumentError,
    ItemError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    Reveal,
    TemplateList,
    TlsConfig,
    TokenizeItem,
    TokenizeOutcome,
    TokenvaultClient,
    TokenvaultClientError,
    UnauthenticatedError,
    UnavailableError,
    error_from_rpc,
)
from tokenvault_client._chunking import call_in_chunks, chunked
from tokenvault_client.errors import parse_retry_after

from vault.cli import client_commands as cli
from vault.cli.client_commands import CommandError, InputRecord

SECRET = "4111111111111111"


class FakeRpcError(grpc.RpcError):
    """Stand-in for the grpc.Call-like error that a failed unary call raises."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        super().__init__()
        self._code = code
        self._details = details
        self._trailing_metadata = tuple(trailing_metadata)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing_metadata


# Error mapping


@pytest.mark.parametrize(
    ("code", "expected_class"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
        (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.INTERNAL, TokenvaultClientError),
        (grpc.StatusCode.UNIMPLEMENTED, TokenvaultClientError),
    ],
)
def test_error_from_rpc_maps_code(
    code: grpc.StatusCode, expected_class: type[TokenvaultClientError]
) -> None:
    error = error_from_rpc(FakeRpcError(code, "something failed"))

    assert type(error) is expected_class
    assert error.code == code
    assert error.details == "something failed"
    assert str(error) == f"{code.name}: something failed"


def test_error_from_rpc_reads_retry_after() -> None:
    rpc_error = FakeRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit", [("retry-after", "2.5")]
    )

    error = error_from_rpc(rpc_error)

    assert isinstance(error, ResourceExhaustedError)
    assert error.retry_after == 2.5


def test_error_from_rpc_without_retry_after() -> None:
    error = error_from_rpc(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "batch too large"))

    assert isinstance(error, ResourceExhaustedError)
    assert error.retry_after is None


def test_error_from_rpc_reads_request_id() -> None:
    rpc_error = FakeRpcError(
        grpc.StatusCode.PERMISSION_DENIED, "missing scope", [("x-request-id", "abc123")]
    )

    error = error_from_rpc(rpc_error)

    assert error.request_id == "abc123"
    assert "abc123" in str(error)


def test_error_from_rpc_without_call_interface() -> None:
    error = error_from_rpc(grpc.RpcError())

    assert type(error) is TokenvaultClientError
    assert error.code == grpc.StatusCode.UNKNOWN
    assert error.details == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        ("0.25", 0.25),
        ("0", 0.0),
        (None, None),
        ("soon", None),
        ("-1", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_error_from_rpc_decodes_bytes_metadata() -> None:
    rpc_error = FakeRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", [("Retry-After", b"4")]
    )

    error = error_from_rpc(rpc_error)

    assert isinstance(error, ResourceExhaustedError)
    assert error.retry_after == 4.0


# Chunking


def test_chunked_keeps_order_and_sizes() -> None:
    chunks = [list(chunk) for chunk in chunked(list(range(7)), 3)]

    assert chunks == [[0, 1, 2], [3, 4, 5], [6]]


def test_chunked_rejects_zero_size() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(chunked([1, 2], 0))


def test_call_in_chunks_preserves_input_order() -> None:
    sent_sizes: list[int] = []

    def send(chunk: Sequence[int]) -> list[str]:
        sent_sizes.append(len(chunk))
        return [f"out-{item}" for item in chunk]

    def fail_item(item: int, error: TokenvaultClientError) -> str:
        raise AssertionError("no chunk should fail")

    outcomes = call_in_chunks(list(range(10)), 4, send, fail_item)

    assert outcomes == [f"out-{item}" for item in range(10)]
    assert sent_sizes == [4, 4, 2]


def test_rejected_chunk_gives_item_errors() -> None:
    def send(chunk: Sequence[int]) -> list[str]:
        if 2 in chunk:
            raise PermissionDeniedError(grpc.StatusCode.PERMISSION_DENIED, "missing scope")
        return [f"out-{item}" for item in chunk]

    def fail_item(item: int, error: TokenvaultClientError) -> str:
        return f"failed-{item}-{error.code.name}"

    outcomes = call_in_chunks([0, 1, 2, 3, 4], 2, send, fail_item)

    assert outcomes == [
        "out-0",
        "out-1",
        "failed-2-PERMISSION_DENIED",
        "failed-3-PERMISSION_DENIED",
        "out-4",
    ]


def test_call_in_chunks_raises_when_every_chunk_rejected() -> None:
    calls = 0

    def send(chunk: Sequence[int]) -> list[str]:
        nonlocal calls
        calls += 1
        raise NotFoundError(grpc.StatusCode.NOT_FOUND, f"template of chunk {calls} unknown")

    def fail_item(item: int, error: TokenvaultClientError) -> str:
        return "failed"

    with pytest.raises(NotFoundError, match="chunk 1"):
        call_in_chunks([0, 1, 2], 2, send, fail_item)
    assert calls == 2


def test_call_in_chunks_raises_other_errors_at_once() -> None:
    calls = 0

    def send(chunk: Sequence[int]) -> list[str]:
        nonlocal calls
        calls += 1
        raise UnavailableError(grpc.StatusCode.UNAVAILABLE, "connection refused")

    def fail_item(item: int, error: TokenvaultClientError) -> str:
        return "failed"

    with pytest.raises(UnavailableError):
        call_in_chunks([0, 1, 2, 3], 2, send, fail_item)
    assert calls == 1


# Models and reprs


def test_tokenize_item_repr_hides_value() -> None:
    item = TokenizeItem("pan", SECRET, reference="order-7", metadata={"note": SECRET})

    text = repr(item)

    assert SECRET not in text
    assert "pan" in text
    assert "order-7" in text


def test_detokenize_item_repr_hides_token() -> None:
    item = DetokenizeItem("pan", SECRET, reference="order-7")

    text = repr(item)

    assert SECRET not in text
    assert "order-7" in text


def test_outcome_reprs_hide_token_and_value() -> None:
    tokenized = TokenizeOutcome(reference="r1", template="pan", token=SECRET)
    detokenized = DetokenizeOutcome(
        reference="r2", template="pan", value=SECRET, metadata={"label": SECRET}
    )

    assert SECRET not in repr(tokenized)
    assert SECRET not in repr(detokenized)
    assert "r1" in repr(tokenized)
    assert "r2" in repr(detokenized)


def test_tls_config_repr_hides_key() -> None:
    tls = TlsConfig(b"ca-pem", b"cert-pem", b"secret-key-pem", server_name="localhost")

    assert "secret-key-pem" not in repr(tls)
    assert "localhost" in repr(tls)


def test_tls_config_rejects_empty_material() -> None:
    with pytest.raises(ValueError, match="client_key"):
        TlsConfig(b"ca", b"cert", b"")


def test_tls_config_from_files(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(b"ca")
    (tmp_path / "cert.pem").write_bytes(b"cert")
    (tmp_path / "key.pem").write_bytes(b"key")

    tls = TlsConfig.from_files(
        tmp_path / "ca.pem", str(tmp_path / "cert.pem"), tmp_path / "key.pem", "example"
    )

    assert tls == TlsConfig(b"ca", b"cert", b"key", "example")


def test_input_record_repr_hides_value() -> None:
    record = InputRecord(line=3, value=SECRET, template="pan", metadata={"k": SECRET})

    assert SECRET not in repr(record)


def test_tokenize_outcome_from_token_result() -> None:
    item = TokenizeItem("pan", SECRET, reference="r1")
    result = pb.TokenizeResult(reference="r1", token="4111110000001111")

    outcome = TokenizeOutcome.from_proto(item, result)

    assert outcome.ok
    assert outcome.token == "4111110000001111"
    assert outcome.error is None
    assert outcome.template == "pan"


def test_tokenize_outcome_from_error_result() -> None:
    item = TokenizeItem("pan", "12", reference="r1")
    result = pb.TokenizeResult(
        reference="r1", error=status_pb2.Status(code=3, message="value: too short")
    )

    outcome = TokenizeOutcome.from_proto(item, result)

    assert not outcome.ok
    assert outcome.token is None
    assert outcome.error == ItemError(grpc.StatusCode.INVALID_ARGUMENT, "value: too short")


def test_tokenize_outcome_without_output_or_error() -> None:
    outcome = TokenizeOutcome.from_proto(TokenizeItem("pan", SECRET), pb.TokenizeResult())

    assert outcome.error is not None
    assert outcome.error.code == grpc.StatusCode.UNKNOWN


def test_item_error_unknown_code_number() -> None:
    error = ItemError.from_status(status_pb2.Status(code=99, message="odd"))

    assert error.code == grpc.StatusCode.UNKNOWN


def test_detokenize_outcome_keeps_metadata() -> None:
    item = DetokenizeItem("email", "tok")
    result = pb.DetokenizeResult(reference="", value="a@example.com", metadata={"src": "crm"})

    outcome = DetokenizeOutcome.from_proto(item, result)

    assert outcome.value == "a@example.com"
    assert outcome.metadata == {"src": "crm"}


def test_reveal_to_proto() -> None:
    assert Reveal.FULL.to_proto() == pb.REVEAL_MODE_FULL
    assert Reveal.MASKED.to_proto() == pb.REVEAL_MODE_MASKED
    assert Reveal("masked") is Reveal.MASKED


def test_template_list_from_proto() -> None:
    response = pb.ListTemplatesResponse(
        templates=[
            pb.TemplateInfo(name="pan", type="pan", mode="vaultless", granted_scopes=["a", "b"])
        ],
        max_batch_items=500,
    )

    templates = TemplateList.from_proto(response)

    assert templates.max_batch_items == 500
    assert templates.templates[0].name == "pan"
    assert templates.templates[0].granted_scopes == ("a", "b")


def test_client_rejects_bad_settings() -> None:
    tls = TlsConfig(b"ca", b"cert", b"key")

    with pytest.raises(ValueError, match="timeout"):
        TokenvaultClient("127.0.0.1:1", tls, timeout=0)
    with pytest.raises(ValueError, match="max_batch_items"):
        TokenvaultClient("127.0.0.1:1", tls, max_batch_items=0)
    with pytest.raises(ValueError, match="target"):
        TokenvaultClient("", tls)


# Input readers


def test_records_from_args_numbers_positions() -> None:
    records = cli.records_from_args(["a", "b", "c"])

    assert [record.line for record in records] == [1, 2, 3]
    assert [record.value for record in records] == ["a", "b", "c"]
    assert all(record.template is None for record in records)
    assert [record.output_reference for record in records] == ["1", "2", "3"]


def test_records_from_lines_skips_blank_lines() -> None:
    stream = io.StringIO("4111 1111 1111 1111\r\n\n   \nalice@example.com\n")

    records = cli.records_from_lines(stream)

    assert [record.value for record in records] == ["4111 1111 1111 1111", "alice@example.com"]
    assert [record.line for record in records] == [1, 4]


def test_records_from_csv_default_column() -> None:
    stream = io.StringIO("reference,pan,template\nord-1,4111,pan\n,5500,\n")

    records = cli.records_from_csv(stream, column=None, source="in.csv")

    assert [record.value for record in records] == ["4111", "5500"]
    assert [record.template for record in records] == ["pan", None]
    assert [record.reference for record in records] == ["ord-1", None]
    assert [record.output_reference for record in records] == ["ord-1", "3"]


def test_records_from_csv_named_column() -> None:
    stream = io.StringIO("id,email,phone\n1,a@example.com,+4912345\n")

    records = cli.records_from_csv(stream, column="phone", source="in.csv")

    assert [record.value for record in records] == ["+4912345"]
    assert records[0].line == 2


def test_records_from_csv_unknown_column() -> None:
    stream = io.StringIO("id,email\n1,a@example.com\n")

    with pytest.raises(CommandError, match=r"no column 'phone' \(columns: id, email\)"):
        cli.records_from_csv(stream, column="phone", source="in.csv")


def test_records_from_csv_only_settings_columns() -> None:
    stream = io.StringIO("template,reference\npan,r1\n")

    with pytest.raises(CommandError, match="no value column"):
        cli.records_from_csv(stream, column=None, source="in.csv")


def test_records_from_csv_line_numbers_span_quoted_newlines() -> None:
    stream = io.StringIO('name,template\n"Ann\nLee",name\n\nBob,name\n')

    records = cli.records_from_csv(stream, column=None, source="in.csv")

    assert [record.value for record in records] == ["Ann\nLee", "Bob"]
    assert [record.line for record in records] == [2, 5]


def test_records_from_csv_strips_byte_order_mark() -> None:
    stream = io.StringIO("\ufeffvalue,template\n4111,pan\n")

    records = cli.records_from_csv(stream, column="value", source="-")

    assert records[0].value == "4111"


def test_records_from_csv_short_row_gives_empty_value() -> None:
    stream = io.StringIO("reference,value\nr1\n")

    records = cli.records_from_csv(stream, column=None, source="in.csv")

    assert records[0].value == ""
    assert records[0].reference == "r1"


def test_records_from_csv_empty_file() -> None:
    assert cli.records_from_csv(io.StringIO(""), column=None, source="in.csv") == []


def test_records_from_jsonl_fields() -> None:
    stream = io.StringIO(
        '{"value": "4111", "template": "pan", "reference": "r1", "metadata": {"src": "crm"}}\n'
        "\n"
        '{"value": "a@example.com", "reference": 7}\n'
    )

    records = cli.records_from_jsonl(stream, value_field="value", source="in.jsonl")

    assert [record.value for record in records] == ["4111", "a@example.com"]
    assert [record.template for record in records] == ["pan", None]
    assert [record.reference for record in records] == ["r1", "7"]
    assert [record.line for record in records] == [1, 3]
    assert records[0].metadata == {"src": "crm"}


def test_records_from_jsonl_reads_token_field() -> None:
    stream = io.StringIO('{"reference": "1", "template": "pan", "token": "tok", "value": "x"}\n')

    records = cli.records_from_jsonl(stream, value_field="token", source="in.jsonl")

    assert records[0].value == "tok"
    assert records[0].metadata is None


def test_records_from_jsonl_missing_field_hides_record() -> None:
    stream = io.StringIO('{"token": "t1"}\n{"value": "' + SECRET + '"}\n')

    with pytest.raises(CommandError, match="line 2: field 'token' is missing") as caught:
        cli.records_from_jsonl(stream, value_field="token", source="in.jsonl")
    assert SECRET not in str(caught.value)


def test_records_from_jsonl_invalid_json() -> None:
    stream = io.StringIO('{"value": "' + SECRET + '"\n')

    with pytest.raises(CommandError, match="in.jsonl line 1: invalid JSON") as caught:
        cli.records_from_jsonl(stream, value_field="value", source="in.jsonl")
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('["4111"]', "expected a JSON object"),
        ('{"value": 4111}', "'value' is not a string"),
        ('{"value": "4111", "template": 5}', "'template' must be a string"),
        ('{"value": "4111", "metadata": {"k": 1}}', "'metadata' must be an object of strings"),
    ],
)
def test_records_from_jsonl_rejects_bad_record(line: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        cli.records_from_jsonl(io.StringIO(line + "\n"), value_field="value", source="in.jsonl")


def _input_args(**overrides: object) -> argparse.Namespace:
    settings: dict[str, object] = {
        "values": [],
        "file": None,
        "format": None,
        "column": None,
        "template": None,
    }
    settings.update(overrides)
    return argparse.Namespace(**settings)


def test_read_input_from_arguments() -> None:
    records = cli.read_input(_input_args(values=["a", "b"]), io.StringIO(), value_field="value")

    assert [record.value for record in records] == ["a", "b"]


def test_read_input_from_stdin_lines() -> None:
    records = cli.read_input(_input_args(), io.StringIO("a\nb\n"), value_field="value")

    assert [record.value for record in records] == ["a", "b"]


def test_read_input_csv_file(tmp_path: Path) -> None:
    path = tmp_path / "cards.csv"
    path.write_text("\ufeffpan,reference\n4111,r1\n", encoding="utf-8")

    records = cli.read_input(_input_args(file=str(path)), io.StringIO(), value_field="value")

    assert records == [InputRecord(line=2, value="4111", reference="r1")]


def test_read_input_jsonl_file_by_suffix(tmp_path: Path) -> None:
    path = tmp_path / "tokens.ndjson"
    path.write_text('{"token": "tok", "template": "pan"}\n', encoding="utf-8")

    records = cli.read_input(_input_args(file=str(path)), io.StringIO(), value_field="token")

    assert records == [InputRecord(line=1, value="tok", template="pan")]


def test_read_input_dash_reads_stdin_as_csv() -> None:
    stdin = io.StringIO("value,template\n4111,pan\n")

    records = cli.read_input(_input_args(file="-"), stdin, value_field="value")

    assert records == [InputRecord(line=2, value="4111", template="pan")]


def test_read_input_format_overrides_guess() -> None:
    stdin = io.StringIO('{"value": "4111"}\n')

    records = cli.read_input(_input_args(file="-", format="jsonl"), stdin, value_field="value")

    assert records == [InputRecord(line=1, value="4111")]


def test_read_input_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"

    with pytest.raises(CommandError, match="file not found: .*nope.csv"):
        cli.read_input(_input_args(file=str(missing)), io.StringIO(), value_field="value")


def test_read_input_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"name\nJos\xe9\n")

    with pytest.raises(CommandError, match="not valid UTF-8"):
        cli.read_input(_input_args(file=str(path)), io.StringIO(), value_field="value")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"values": ["a"], "file": "x.csv"}, "not both"),
        ({"values": ["a"], "column": "pan"}, "--column applies only to CSV"),
        ({"column": "pan"}, "--column applies only to CSV"),
        ({"file": "x.jsonl", "column": "pan"}, "--column applies only to CSV"),
        ({"format": "csv"}, "--format applies only to --file"),
    ],
)
def test_read_input_rejects_conflicting_options(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        cli.read_input(_input_args(**overrides), io.StringIO(), value_field="value")


def test_check_templates_requires_template() -> None:
    records = [InputRecord(line=2, value="a", template="pan"), InputRecord(line=3, value="b")]

    with pytest.raises(CommandError, match="record 3 names no template"):
        cli.check_templates(records, None)
    cli.check_templates(records, "email")


# Output


def test_tokenize_output_shapes() -> None:
    record = InputRecord(line=4, value=SECRET)
    ok = TokenizeOutcome(reference="", template="pan", token="tok")
    failed = TokenizeOutcome(
        reference="",
        template="pan",
        error=ItemError(grpc.StatusCode.INVALID_ARGUMENT, "value: bad check digit"),
    )

    assert cli.tokenize_output(record, ok) == {"reference": "4", "template": "pan", "token": "tok"}
    assert cli.tokenize_output(record, failed) == {
        "reference": "4",
        "template": "pan",
        "error": {"code": "INVALID_ARGUMENT", "message": "value: bad check digit"},
    }


def test_detokenize_output_adds_metadata_when_present() -> None:
    record = InputRecord(line=1, value="tok", reference="r9")
    with_metadata = DetokenizeOutcome(
        reference="r9", template="email", value="a@example.com", metadata={"src": "crm"}
    )
    without_metadata = DetokenizeOutcome(reference="r9", template="email", value="a@example.com")

    assert cli.detokenize_output(record, with_metadata) == {
        "reference": "r9",
        "template": "email",
        "value": "a@example.com",
        "metadata": {"src": "crm"},
    }
    assert "metadata" not in cli.detokenize_output(record, without_metadata)


# Connection settings


def _connection_args(**overrides: object) -> argparse.Namespace:
    settings: dict[str, object] = {
        "target": None,
        "ca": None,
        "cert": None,
        "key": None,
        "server_name": None,
        "state": None,
        "caller": "gateway",
    }
    settings.update(overrides)
    return argparse.Namespace(**settings)


def _write_state(root: Path, callers: Sequence[str] = ("gateway",)) -> None:
    (root / "clients").mkdir(parents=True)
    (root / "endpoint").write_text("127.0.0.1:7443\n")
    (root / "ca.pem").write_bytes(b"state-ca")
    for caller in callers:
        (root / "clients" / f"{caller}.pem").write_bytes(f"{caller}-cert".encode())
        (root / "clients" / f"{caller}-key.pem").write_bytes(f"{caller}-key".encode())


def test_resolve_connection_from_state(tmp_path: Path) -> None:
    _write_state(tmp_path, callers=("gateway", "support"))

    target, tls = cli.resolve_connection(_connection_args(state=tmp_path, caller="support"))

    assert target == "127.0.0.1:7443"
    assert tls == TlsConfig(b"state-ca", b"support-cert", b"support-key")


def test_resolve_connection_uses_env_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_state(tmp_path)
    monkeypatch.setenv("TOKENVAULT_STATE_DIR", str(tmp_path))

    target, _ = cli.resolve_connection(_connection_args())

    assert target == "127.0.0.1:7443"


def test_resolve_connection_flags_win(tmp_path: Path) -> None:
    _write_state(tmp_path / "state")
    (tmp_path / "my-ca.pem").write_bytes(b"my-ca")
    (tmp_path / "me.pem").write_bytes(b"my-cert")
    (tmp_path / "me-key.pem").write_bytes(b"my-key")
    args = _connection_args(
        state=tmp_path / "state",
        target="vault.internal:443",
        ca=str(tmp_path / "my-ca.pem"),
        cert=str(tmp_path / "me.pem"),
        key=str(tmp_path / "me-key.pem"),
        server_name="vault.internal",
    )

    target, tls = cli.resolve_connection(args)

    assert target == "vault.internal:443"
    assert tls == TlsConfig(b"my-ca", b"my-cert", b"my-key", server_name="vault.internal")


def test_resolve_connection_missing_state_file(tmp_path: Path) -> None:
    _write_state(tmp_path)
    args = _connection_args(state=tmp_path, caller="custodian")

    with pytest.raises(CommandError) as caught:
        cli.resolve_connection(args)

    message = str(caught.value)
    assert str(tmp_path / "clients" / "custodian.pem") in message
    assert "tokenvault dev" in message


def test_resolve_connection_missing_endpoint(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="missing file .*endpoint.*tokenvault dev"):
        cli.resolve_connection(_connection_args(state=tmp_path))


def test_resolve_connection_missing_flag_file(tmp_path: Path) -> None:
    _write_state(tmp_path)
    args = _connection_args(state=tmp_path, ca=str(tmp_path / "other-ca.pem"))

    with pytest.raises(CommandError, match="--ca: file not found: .*other-ca.pem"):
        cli.resolve_connection(args)


def test_resolve_connection_cert_needs_key(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="--cert and --key"):
        cli.resolve_connection(_connection_args(cert=str(tmp_path / "me.pem")))


def test_resolve_connection_rejects_path_as_caller(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="invalid --as"):
        cli.resolve_connection(_connection_args(state=tmp_path, caller="../gateway"))


# Parsers


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenvault")
    subparsers = parser.add_subparsers(dest="command", required=True)
    cli.add_tokenize_parser(subparsers)
    cli.add_detokenize_parser(subparsers)
    return parser


def test_parsers_set_defaults() -> None:
    tokenize = _parser().parse_args(["tokenize", "--template", "pan", "4111"])
    detokenize = _parser().parse_args(["detokenize", "--reveal", "masked", "tok"])

    assert tokenize.func is cli.run_tokenize
    assert tokenize.caller == "gateway"
    assert tokenize.values == ["4111"]
    assert tokenize.timeout == cli.DEFAULT_TIMEOUT_SECONDS
    assert detokenize.func is cli.run_detokenize
    assert detokenize.caller == "backoffice"
    assert detokenize.reveal == "masked"
    assert detokenize.purpose == ""


def test_detokenize_parser_requires_reveal(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        _parser().parse_args(["detokenize", "tok"])

    assert caught.value.code == 2
    assert "--reveal" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--batch-size", "0"], ["--timeout", "-1"]])
def test_parser_rejects_non_positive_numbers(option: list[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["tokenize", *option, "4111"])


def test_tokenize_missing_state_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["tokenize", "--state", str(tmp_path), "--template", "pan", SECRET])

    exit_code = args.func(args)

    captured = capsys.readouterr()
    assert exit_code == 2
    assert captured.out == ""
    assert "tokenvault dev" in captured.err
    assert SECRET not in captured.err

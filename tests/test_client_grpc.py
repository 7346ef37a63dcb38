"""Client library and CLI against an in-process gRPC server with mutual TLS on 127.0.0.1.

The server is a small fake of the Tokenization service, not the real one: it checks the
channel set-up, chunking against an enforced batch limit, deadlines and error mapping.
"""

from __future__ import annotations

import argparse
import datetime
import io
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.rpc import status_pb2
from tokenvault.v1 import tokenization_pb2 as pb
from tokenvault.v1 import tokenization_pb2_grpc as pb_grpc
from tokenvault_client import (
    FALLBACK_MAX_BATCH_ITEMS,
    DeadlineExceededError,
    DetokenizeItem,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    Reveal,
    TlsConfig,
    TokenizeItem,
    TokenvaultClient,
    UnavailableError,
)

from vault.cli import client_commands as cli

BATCH_LIMIT = 3
KNOWN_TEMPLATES = ("pan", "email", "slow", "throttled")


# Certificates


@dataclass(frozen=True)
class Pki:
    ca_cert: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes
    # A client certificate from a CA the server does not trust.
    rogue_client_cert: bytes
    rogue_client_key: bytes


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    names: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca_cert, ca_key = _make_ca("test CA")
    server_cert, server_key = _make_leaf(
        ca_cert,
        ca_key,
        "tokenvault test server",
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
        ExtendedKeyUsageOID.SERVER_AUTH,
    )
    client_cert, client_key = _make_leaf(
        ca_cert,
        ca_key,
        "gateway",
        [x509.UniformResourceIdentifier("spiffe://tokenvault.dev/gateway")],
        ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    rogue_ca_cert, rogue_ca_key = _make_ca("rogue CA")
    rogue_cert, rogue_key = _make_leaf(
        rogue_ca_cert,
        rogue_ca_key,
        "gateway",
        [x509.UniformResourceIdentifier("spiffe://tokenvault.dev/gateway")],
        ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    return Pki(
        ca_cert=ca_cert.public_bytes(serialization.Encoding.PEM),
        server_cert=server_cert,
        server_key=server_key,
        client_cert=client_cert,
        client_key=client_key,
        rogue_client_cert=rogue_cert,
        rogue_client_key=rogue_key,
    )


# Fake service


@dataclass
class FakeTokenization(pb_grpc.TokenizationServicer):
    """Fake service that returns reversed values as tokens and follows the real batch rules.

    Template "slow" sleeps past short deadlines, "throttled" fails the whole call with
    RESOURCE_EXHAUSTED and a retry-after, and "bad" is a known template whose items fail.
    """

    batch_limit: int = BATCH_LIMIT
    deny_list_templates: bool = False
    batch_sizes: list[int] = field(default_factory=list)
    peer_names: list[bytes] = field(default_factory=list)
    release_slow_calls: threading.Event = field(default_factory=threading.Event)

    def _check_batch(self, count: int, context: grpc.ServicerContext) -> None:
        common_names = context.auth_context().get("x509_common_name", [])
        self.peer_names.extend(common_names)
        self.batch_sizes.append(count)
        if count == 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "items: must not be empty")
        if count > self.batch_limit:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"items: {count} items exceed the limit of {self.batch_limit}",
            )

    def _check_templates(self, templates: list[str], context: grpc.ServicerContext) -> None:
        if "slow" in templates:
            self.release_slow_calls.wait(timeout=2.0)
        if "throttled" in templates:
            context.set_trailing_metadata((("retry-after", "1.5"),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit reached")
        if all(name not in (*KNOWN_TEMPLATES, "bad") for name in templates):
            context.abort(grpc.StatusCode.NOT_FOUND, f"template: {templates[0]} is not defined")

    def Tokenize(  # noqa: N802
        self, request: pb.TokenizeRequest, context: grpc.ServicerContext
    ) -> pb.TokenizeResponse:
        self._check_batch(len(request.items), context)
        self._check_templates([item.template for item in request.items], context)
        results = []
        for item in request.items:
            if item.template == "bad":
                error = status_pb2.Status(code=3, message="value: check digit is wrong")
                results.append(pb.TokenizeResult(reference=item.reference, error=error))
            elif item.template not in KNOWN_TEMPLATES:
                error = status_pb2.Status(code=5, message=f"template: {item.template} unknown")
                results.append(pb.TokenizeResult(reference=item.reference, error=error))
            else:
                token = "tok-" + item.value[::-1]
                results.append(pb.TokenizeResult(reference=item.reference, token=token))
        return pb.TokenizeResponse(results=results)

    def Detokenize(  # noqa: N802
        self, request: pb.DetokenizeRequest, context: grpc.ServicerContext
    ) -> pb.DetokenizeResponse:
        self._check_batch(len(request.items), context)
        if request.reveal == pb.REVEAL_MODE_UNSPECIFIED:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "reveal: must be FULL or MASKED")
        if len(request.purpose) > 256:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "purpose: at most 256 characters")
        self._check_templates([item.template for item in request.items], context)
        results = []
        for item in request.items:
            value = item.token.removeprefix("tok-")[::-1]
            if request.reveal == pb.REVEAL_MODE_MASKED:
                value = "*" * (len(value) - 4) + value[-4:]
            results.append(
                pb.DetokenizeResult(
                    reference=item.reference,
                    value=value,
                    metadata={"purpose": request.purpose} if request.purpose else {},
                )
            )
        return pb.DetokenizeResponse(results=results)

    def ListTemplates(  # noqa: N802
        self, request: pb.ListTemplatesRequest, context: grpc.ServicerContext
    ) -> pb.ListTemplatesResponse:
        if self.deny_list_templates:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "missing scope templates:list")
        return pb.ListTemplatesResponse(
            templates=[
                pb.TemplateInfo(
                    name=name, type="generic", mode="vaultless", granted_scopes=[f"tokenize:{name}"]
                )
                for name in KNOWN_TEMPLATES
            ],
            max_batch_items=self.batch_limit,
        )


@dataclass
class RunningServer:
    target: str
    service: FakeTokenization


@pytest.fixture(scope="module")
def server(pki: Pki) -> Iterator[RunningServer]:
    service = FakeTokenization()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_TokenizationServicer_to_server(service, grpc_server)
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key, pki.server_cert)],
        root_certificates=pki.ca_cert,
        require_client_auth=True,
    )
    port = grpc_server.add_secure_port("127.0.0.1:0", credentials)
    grpc_server.start()
    try:
        yield RunningServer(target=f"127.0.0.1:{port}", service=service)
    finally:
        service.release_slow_calls.set()
        grpc_server.stop(grace=None)


@pytest.fixture
def fake(server: RunningServer) -> FakeTokenization:
    """The shared fake service, reset to its defaults for this test."""
    server.service.batch_limit = BATCH_LIMIT
    server.service.deny_list_templates = False
    server.service.batch_sizes.clear()
    server.service.peer_names.clear()
    return server.service


@pytest.fixture
def tls(pki: Pki) -> TlsConfig:
    return TlsConfig(pki.ca_cert, pki.client_cert, pki.client_key)


# Library


def test_tokenize_over_mutual_tls(
    server: RunningServer, fake: FakeTokenization, tls: TlsConfig
) -> None:
    with TokenvaultClient(server.target, tls, timeout=5) as client:
        outcomes = client.tokenize([TokenizeItem("pan", "4111111111111111", reference="r1")])

    assert len(outcomes) == 1
    assert outcomes[0].ok
    assert outcomes[0].token == "tok-1111111111111114"
    assert outcomes[0].reference == "r1"
    assert fake.peer_names == [b"gateway"] * len(fake.batch_sizes)


def test_server_name_override(server: RunningServer, fake: FakeTokenization, pki: Pki) -> None:
    tls = TlsConfig(pki.ca_cert, pki.client_cert, pki.client_key, server_name="localhost")

    with TokenvaultClient(server.target, tls, timeout=5) as client:
        templates = client.list_templates()

    assert templates.max_batch_items == BATCH_LIMIT
    assert [template.name for template in templates.templates] == list(KNOWN_TEMPLATES)


def test_wrong_server_name_is_unavailable(
    server: RunningServer, fake: FakeTokenization, pki: Pki
) -> None:
    tls = TlsConfig(pki.ca_cert, pki.client_cert, pki.client_key, server_name="other.example")

    with TokenvaultClient(server.target, tls, timeout=5) as client, pytest.raises(UnavailableError):
        client.list_templates()


def test_untrusted_client_certificate_rejected(
    server: RunningServer, fake: FakeTokenization, pki: Pki
) -> None:
    tls = TlsConfig(pki.ca_cert, pki.rogue_client_cert, pki.rogue_client_key)

    with TokenvaultClient(server.target, tls, timeout=5) as client, pytest.raises(UnavailableError):
        client.list_templates()
    assert fake.batch_sizes == []


def test_chunks_follow_server_limit(
    server: RunningServer, fake: FakeTokenization, tls: TlsConfig
) -> None:
    values = [f"{number:016d}" for number in range(10)]
    items = [TokenizeItem("pan", value, reference=f"r{i}") for i, value in enumerate(values)]

    with TokenvaultClient(server.target, tls, timeout=5) as client:
        outcomes = client.tokenize(items)
        client.tokenize(items[:4])

    assert [outcome.reference for outcome in outcomes] == [f"r{i}" for i in range(10)]
    assert [outcome.token for outcome in outcomes] == ["tok-" + value[::-1] for value in values]
    # ListTemplates ran once, so the second call reused the cached limit.
    assert fake.batch_sizes == [3, 3, 3, 1, 3, 1]


def test_explicit_batch_size(server: RunningServer, fake: FakeTokenization, tls: TlsConfig) -> None:
    items = [TokenizeItem("email", f"user{i}@example.com") for i in range(5)]

    with TokenvaultClient(server.target, tls, timeout=5, max_batch_items=2) as client:
        outcomes = client.tokenize(items)

    assert len(outcomes) == 5
    assert fake.batch_sizes == [2, 2, 1]


def test_denied_list_templates_falls_back(
    server: RunningServer, fake: FakeTokenization, tls: TlsConfig
) -> None:
    fake.deny_list_templates = True
    fake.batch_limit = FALLBACK_MAX_BATCH_ITEMS
    items = [TokenizeItem("pan", str(number)) for number in range(FALLBACK_MAX_BATCH_ITEMS + 1)]

    with TokenvaultClient(server.target, tls, timeout=5) as client:
        outcomes = client.tokenize(items)

    assert len(outcomes) == FALLBACK_MAX_BATCH_ITEMS + 1
    assert fake.batch_sizes == [FALLBACK_MAX_BATCH_ITEMS, 1]


def test_oversize_batch_is_resource_exhausted(
    server: RunningServer, fake: FakeTokenization, tls: TlsConfig
) -> None:
    items = [TokenizeItem("pan", str(number)) for number in range(4)]

    with TokenvaultClient(server.target, tls, timeout=5, max_batch_items=4) as client:
        with pytest.raises(ResourceExhaustedError, match="exceed the limit") as caught:
            client.tokenize(items)

    assert caught.value.retry_after is None


def test_retry_after_from_trailing_metadata(
    server: RunningServer, fake: FakeTokenization, tls: TlsConfig
) -> None:
    with TokenvaultClient(server.target, tls, timeout=5) as client:
        with pytest.raises(ResourceExhaustedError) as caught:
            client.tokenize([TokenizeItem("throttled", "x")])

    assert caught.value.retry_after == 1.5
    assert caught.value.details == "rate limit reached"


def test_deadline_exceeded(server: RunningServer, fake: FakeTokenization, tls: TlsConfig) -> None:
    started = time.monotonic()

    with TokenvaultClient(server.target, tls, timeout=5, max_batch_items=10) as client:
        with pytest.raises(DeadlineExceededError):
            client.tokenize([TokenizeItem("slow", "x")], timeout=0.3)

    assert time.monotonic() - started < 1.5


def test_item_errors_keep_order(
    server: RunningServer, fake: FakeTokenization, tls: TlsConfig
) -> None:
    items = [
        TokenizeItem("pan", "1234", reference="a"),
        TokenizeItem("bad", "5678", reference="b"),
        TokenizeItem("nope", "9012", reference="c"),
    ]

    with TokenvaultClient(server.target, tls, timeout=5) as client:
        outcomes = client.tokenize(items)

    assert [outcome.ok for outcome in outcomes] == [True, False, False]
    assert outcomes[1].error is not None
    assert outcomes[1].error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcomes[2].error is not None
    assert outcomes[2].error.code == grpc.StatusCode.NOT_FOUND
    assert outcomes[2].token is None


def test_rejected_chunk_becomes_item_errors(
    server: RunningServer, fake: FakeTokenization, tls: TlsConfig
) -> None:
    items = [TokenizeItem("pan", "1111"), TokenizeItem("nope", "2222")]

    with TokenvaultClient(server.target, tls, timeout=5, max_batch_items=1) as client:
        outcomes = client.tokenize(items)

    assert outcomes[0].ok
    assert outcomes[1].error is not None
    assert outcomes[1].error.code == grpc.StatusCode.NOT_FOUND
    assert "nope" in outcomes[1].error.message


def test_all_chunks_rejected_raises(
    server: RunningServer, fake: FakeTokenization, tls: TlsConfig
) -> None:
    items = [TokenizeItem("nope", "1111"), TokenizeItem("nada", "2222")]

    with TokenvaultClient(server.target, tls, timeout=5, max_batch_items=1) as client:
        with pytest.raises(NotFoundError, match="nope"):
            client.tokenize(items)

    assert fake.batch_sizes == [1, 1]


def test_detokenize_masked_with_metadata(
    server: RunningServer, fake: FakeTokenization, tls: TlsConfig
) -> None:
    items = [DetokenizeItem("pan", "tok-1111111111111114", reference="r1")]

    with TokenvaultClient(server.target, tls, timeout=5) as client:
        outcomes = client.detokenize(items, reveal=Reveal.MASKED, purpose="TICKET-1")

    assert outcomes[0].value == "************1111"
    assert outcomes[0].metadata == {"purpose": "TICKET-1"}


def test_empty_input_makes_no_call(
    server: RunningServer, fake: FakeTokenization, tls: TlsConfig
) -> None:
    with TokenvaultClient(server.target, tls, timeout=5) as client:
        assert client.tokenize([]) == []
        assert client.detokenize([], reveal=Reveal.FULL) == []

    assert fake.batch_sizes == []


def test_permission_denied_maps(
    server: RunningServer, fake: FakeTokenization, tls: TlsConfig
) -> None:
    fake.deny_list_templates = True

    with TokenvaultClient(server.target, tls, timeout=5) as client:
        with pytest.raises(PermissionDeniedError, match="templates:list"):
            client.list_templates()


def test_invalid_reveal_rejected_locally(tls: TlsConfig, server: RunningServer) -> None:
    with TokenvaultClient(server.target, tls, timeout=5) as client:
        with pytest.raises(ValueError):
            client.detokenize([DetokenizeItem("pan", "tok")], reveal="all")  # type: ignore[arg-type]


def test_invalid_argument_maps(
    server: RunningServer, fake: FakeTokenization, tls: TlsConfig
) -> None:
    items = [DetokenizeItem("pan", "tok-4321")]

    with TokenvaultClient(server.target, tls, timeout=5) as client:
        with pytest.raises(InvalidArgumentError, match="purpose"):
            client.detokenize(items, reveal=Reveal.FULL, purpose="x" * 300)


# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenvault")
    subparsers = parser.add_subparsers(dest="command", required=True)
    cli.add_tokenize_parser(subparsers)
    cli.add_detokenize_parser(subparsers)
    return parser


def _write_state(root: Path, target: str, pki: Pki, caller: str) -> None:
    (root / "clients").mkdir(parents=True)
    (root / "endpoint").write_text(target + "\n")
    (root / "ca.pem").write_bytes(pki.ca_cert)
    (root / "clients" / f"{caller}.pem").write_bytes(pki.client_cert)
    (root / "clients" / f"{caller}-key.pem").write_bytes(pki.client_key)


def _run_cli(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return int(args.func(args))


def test_cli_tokenize_from_state(
    server: RunningServer,
    fake: FakeTokenization,
    pki: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _write_state(tmp_path, server.target, pki, "gateway")

    exit_code = _run_cli(
        ["tokenize", "--state", str(tmp_path), "--template", "pan", "1234", "5678", "9012", "3456"]
    )

    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert exit_code == 0
    assert lines == [
        {"reference": "1", "template": "pan", "token": "tok-4321"},
        {"reference": "2", "template": "pan", "token": "tok-8765"},
        {"reference": "3", "template": "pan", "token": "tok-2109"},
        {"reference": "4", "template": "pan", "token": "tok-6543"},
    ]
    assert fake.batch_sizes == [3, 1]


def test_cli_tokenize_csv_with_item_errors(
    server: RunningServer,
    fake: FakeTokenization,
    pki: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _write_state(tmp_path / "state", server.target, pki, "gateway")
    csv_path = tmp_path / "input.csv"
    csv_path.write_text("reference,card,template\nord-1,1234,pan\n,5678,bad\n")

    exit_code = _run_cli(["tokenize", "--state", str(tmp_path / "state"), "--file", str(csv_path)])

    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert exit_code == 1
    assert lines[0] == {"reference": "ord-1", "template": "pan", "token": "tok-4321"}
    assert lines[1] == {
        "reference": "3",
        "template": "bad",
        "error": {"code": "INVALID_ARGUMENT", "message": "value: check digit is wrong"},
    }


def test_cli_detokenize_with_flags(
    server: RunningServer,
    fake: FakeTokenization,
    pki: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, content in [
        ("ca.pem", pki.ca_cert),
        ("me.pem", pki.client_cert),
        ("me-key.pem", pki.client_key),
    ]:
        (tmp_path / name).write_bytes(content)
    stdin = '{"reference": "x", "template": "pan", "token": "tok-4321"}\n'
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))

    exit_code = _run_cli(
        [
            "detokenize",
            "--reveal",
            "full",
            "--purpose",
            "audit check",
            "--target",
            server.target,
            "--ca",
            str(tmp_path / "ca.pem"),
            "--cert",
            str(tmp_path / "me.pem"),
            "--key",
            str(tmp_path / "me-key.pem"),
            "--server-name",
            "localhost",
            "--file",
            "-",
            "--format",
            "jsonl",
        ]
    )

    captured = capsys.readouterr()
    assert exit_code == 0
    assert json.loads(captured.out) == {
        "reference": "x",
        "template": "pan",
        "value": "1234",
        "metadata": {"purpose": "audit check"},
    }


def test_cli_whole_call_error_exits_2(
    server: RunningServer,
    fake: FakeTokenization,
    pki: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _write_state(tmp_path, server.target, pki, "gateway")

    exit_code = _run_cli(["tokenize", "--state", str(tmp_path), "--template", "throttled", "77"])

    captured = capsys.readouterr()
    assert exit_code == 2
    assert captured.out == ""
    assert "RESOURCE_EXHAUSTED: rate limit reached" in captured.err
    assert "retry after 1.5 s" in captured.err


def test_cli_unreachable_server_exits_2(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Bind and release a loopback port so that nothing listens on it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    _write_state(tmp_path, f"127.0.0.1:{closed_port}", pki, "gateway")

    exit_code = _run_cli(
        ["tokenize", "--state", str(tmp_path), "--batch-size", "5", "--template", "pan", "4111"]
    )

    captured = capsys.readouterr()
    assert exit_code == 2
    assert "UNAVAILABLE" in captured.err
    assert "tokenvault dev" in captured.err
    assert "4111" not in captured.err

"""AccessGate refusals with their gRPC status, and parsing of gRPC peer strings."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import grpc
import pytest

from vault.access.gate import AccessGate, parse_peer
from vault.access.policy_store import PolicyStore
from vault.errors import AccessRefused, Unauthenticated, Unavailable
from vault.identity import Caller
from vault.status import status_for

PINNED = "spiffe://bank.example/backoffice"
OPEN = "spiffe://bank.example/gateway"
UNLISTED = "spiffe://bank.example/unknown"
GOOD_FINGERPRINT = "ab" * 32
OTHER_FINGERPRINT = "cd" * 32
LOCAL_PEER = "ipv4:127.0.0.1:5555"

POLICY = f"""
[[callers]]
identity = "{PINNED}"
scopes = ["detokenize:*"]
fingerprints = ["{GOOD_FINGERPRINT}"]
source_cidrs = ["10.20.0.0/16", "127.0.0.1/32", "fd00::/8"]

[[callers]]
identity = "{OPEN}"
scopes = ["tokenize:*"]
"""


class FakeRevocations:
    def __init__(self, identities: set[str] | None = None, serials: set[int] | None = None):
        self.identities = identities or set()
        self.serials = serials or set()
        self.stale = False

    def is_identity_revoked(self, identity: str) -> bool:
        if self.stale:
            raise Unavailable("the revocations list could not be reloaded")
        return identity in self.identities

    def is_serial_revoked(self, serial: int) -> bool:
        return serial in self.serials


class FakeSuspensions:
    def __init__(self, reasons: dict[str, str] | None = None):
        self.reasons = reasons or {}

    def suspension_reason(self, identity: str) -> str | None:
        return self.reasons.get(identity)


def _caller(
    identity: str = PINNED, fingerprint: str = GOOD_FINGERPRINT, serial: int = 0x1001
) -> Caller:
    return Caller(identity=identity, fingerprint_sha256=fingerprint, serial_number=serial)


@pytest.fixture
def policy_store(tmp_path: Path) -> PolicyStore:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return PolicyStore(path, known_templates=["pan"])


def _gate(
    store: PolicyStore,
    revocations: FakeRevocations | None = None,
    suspensions: FakeSuspensions | None = None,
) -> AccessGate:
    return AccessGate(store, revocations or FakeRevocations(), suspensions or FakeSuspensions())


def _refusal(gate: AccessGate, caller: Caller, peer: str = LOCAL_PEER) -> Exception:
    with pytest.raises((AccessRefused, Unauthenticated, Unavailable)) as caught:
        gate.check(caller, peer)
    return caught.value


# -- allowed


@pytest.mark.parametrize(
    "peer",
    [
        LOCAL_PEER,
        "ipv4:10.20.255.1:40000",
        "ipv6:%5Bfd00::7%5D:40000",
        "ipv6:[fd12:3456::1]:40000",
        "ipv6:%5B::ffff:127.0.0.1%5D:40000",
    ],
)
def test_pinned_caller_from_allowed_source(policy_store: PolicyStore, peer: str) -> None:
    assert _gate(policy_store).check(_caller(), peer) is None


def test_unlisted_identity_passes_gate(policy_store: PolicyStore) -> None:
    # Scopes refuse it later; the gate has no pin or source rule for it.
    gate = _gate(policy_store)

    assert gate.check(_caller(UNLISTED, OTHER_FINGERPRINT), "unix:") is None


def test_caller_without_rules_passes_from_anywhere(policy_store: PolicyStore) -> None:
    gate = _gate(policy_store)

    assert gate.check(_caller(OPEN, OTHER_FINGERPRINT), "ipv4:192.0.2.7:1") is None


# -- refusals


def test_identity_revoked(policy_store: PolicyStore) -> None:
    gate = _gate(policy_store, FakeRevocations(identities={PINNED}))

    error = _refusal(gate, _caller())

    assert isinstance(error, AccessRefused)
    assert error.reason == "identity_revoked"
    assert status_for(error) == (grpc.StatusCode.PERMISSION_DENIED, "caller identity is revoked")


def test_serial_revoked(policy_store: PolicyStore) -> None:
    gate = _gate(policy_store, FakeRevocations(serials={0x1001}))

    error = _refusal(gate, _caller(serial=0x1001))

    assert isinstance(error, AccessRefused)
    assert error.reason == "serial_revoked"
    assert status_for(error) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "client certificate serial is revoked",
    )
    assert gate.check(_caller(serial=0x1002), LOCAL_PEER) is None


def test_fingerprint_not_pinned(policy_store: PolicyStore) -> None:
    gate = _gate(policy_store)

    error = _refusal(gate, _caller(fingerprint=OTHER_FINGERPRINT))

    assert isinstance(error, Unauthenticated)
    assert status_for(error) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "client certificate is not one pinned for this identity",
    )


@pytest.mark.parametrize(
    "peer",
    [
        "ipv4:10.21.0.1:5555",
        "ipv4:127.0.0.2:5555",
        "ipv6:%5B::1%5D:5555",
        "ipv6:%5B::ffff:10.21.0.1%5D:5555",
        "unix:/run/tokenvault.sock",
        "unix:",
        "",
    ],
)
def test_source_not_allowed(policy_store: PolicyStore, peer: str) -> None:
    gate = _gate(policy_store)

    error = _refusal(gate, _caller(), peer)

    assert isinstance(error, AccessRefused)
    assert error.reason == "source_not_allowed"
    assert status_for(error) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "source address is not allowed for this identity",
    )


def test_suspended(policy_store: PolicyStore) -> None:
    reason = "detokenized 5001 items within 3600 s"
    gate = _gate(policy_store, suspensions=FakeSuspensions({OPEN: reason}))

    error = _refusal(gate, _caller(OPEN, OTHER_FINGERPRINT))

    assert isinstance(error, AccessRefused)
    assert error.reason == "suspended"
    assert status_for(error) == (
        grpc.StatusCode.PERMISSION_DENIED,
        f"caller is suspended: {reason}",
    )


def test_revocation_checked_before_other_rules(policy_store: PolicyStore) -> None:
    gate = _gate(
        policy_store,
        FakeRevocations(identities={PINNED}),
        FakeSuspensions({PINNED: "too many items"}),
    )

    error = _refusal(gate, _caller(fingerprint=OTHER_FINGERPRINT), "unix:")

    assert str(error) == "caller identity is revoked"


def test_suspension_reason_hidden_from_wrong_certificate(policy_store: PolicyStore) -> None:
    gate = _gate(policy_store, suspensions=FakeSuspensions({PINNED: "too many items"}))

    error = _refusal(gate, _caller(fingerprint=OTHER_FINGERPRINT))

    assert isinstance(error, Unauthenticated)


def test_stale_revocations_refuse(policy_store: PolicyStore) -> None:
    revocations = FakeRevocations()
    revocations.stale = True

    error = _refusal(_gate(policy_store, revocations), _caller())

    assert status_for(error)[0] is grpc.StatusCode.UNAVAILABLE


def test_gate_follows_policy_reload(policy_store: PolicyStore) -> None:
    gate = _gate(policy_store)
    assert gate.check(_caller(), "ipv4:10.20.0.9:1") is None

    policy_store.path.write_text(POLICY.replace('"10.20.0.0/16", ', ""))
    assert policy_store.reload().applied

    error = _refusal(gate, _caller(), "ipv4:10.20.0.9:1")
    assert str(error) == "source address is not allowed for this identity"


# -- parse_peer


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:5555", "127.0.0.1"),
        ("ipv4:10.20.0.1:1", "10.20.0.1"),
        ("ipv6:[::1]:5555", "::1"),
        ("ipv6:%5B::1%5D:5555", "::1"),
        ("ipv6:%5b2001:db8::7%5d:443", "2001:db8::7"),
        ("ipv6:[::ffff:127.0.0.1]:5555", "127.0.0.1"),
        ("ipv6:%5Bfe80::1%25eth0%5D:5555", "fe80::1"),
        ("ipv6:[fe80::1%eth0]:5555", "fe80::1"),
    ],
)
def test_parse_peer_addresses(peer: str, address: str) -> None:
    assert parse_peer(peer) == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    "peer",
    [
        "unix:/run/tokenvault.sock",
        "unix:",
        "unix-abstract:tokenvault",
        "",
        "ipv4:",
        "ipv4:not-an-address:5555",
        "ipv4:::1:5555",
        "ipv6:::1:5555",
        "ipv6:[::1",
        "ipv6:[127.0.0.1]:5555",
        "ipv6:[zz::1]:5555",
        "dns:localhost:5555",
    ],
)
def test_parse_peer_without_address(peer: str) -> None:
    assert parse_peer(peer) is None
